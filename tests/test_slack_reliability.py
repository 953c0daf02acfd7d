"""Exactly one answer per question: Slack's retries and replays are dropped, and a front-end restarted
mid-answer finishes the same message instead of starting another."""

from __future__ import annotations

from collections.abc import Callable

import redis

from brandbot.emulators.slack import SlackEmulator
from brandbot.settings import Settings
from tests.core_fixtures import inflight_records
from tests.slack_fixtures import answer_with, is_final_answer, scripted_worker, slack_running, visible

ANSWER = "One answer, and only one."


def mention_event(slack: SlackEmulator, ts: str) -> dict[str, object]:
    slack.add_user_message(channel="C1", user="U1", text=f"<@{slack.bot_user_id}> hello", ts=ts)
    return {
        "type": "app_mention",
        "channel": "C1",
        "user": "U1",
        "text": f"<@{slack.bot_user_id}> hello",
        "ts": ts,
    }


async def test_slack_retry_and_a_twin_delivery_of_a_question_are_answered_once(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    slack = slack_emulator
    base = settings()
    event = {**mention_event(slack, "1700000100.000100"), "client_msg_id": "c0ffee"}
    async with (
        slack_running(slack, base) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER)) as taken,
    ):
        await slack.wait_for_ack(await slack.send_event(event, event_id="Ev100"))
        # Slack did not see the ack in time: the same event again, marked as a retry.
        await slack.wait_for_ack(
            await slack.send_event(event, event_id="Ev100", retry_attempt=1, retry_reason="timeout")
        )
        # The same message once more under another event id (e.g. a second subscription).
        await slack.wait_for_ack(await slack.send_event(event, event_id="Ev101"))
        answer = await bot.wait_for_answer("C1", "1700000100.000100")

    assert len(taken) == 1 and visible(answer) == ANSWER
    assert len(slack.calls_to("chat.postMessage")) == 1


async def test_replay_after_a_reconnect_is_answered_once(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    slack = slack_emulator
    base = settings()
    event = mention_event(slack, "1700000200.000100")
    async with (
        slack_running(slack, base) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER)) as taken,
    ):
        await slack.wait_for_ack(await slack.send_event(event, event_id="Ev200"))
        await bot.wait_for_answer("C1", "1700000200.000100")
        await slack.drop_connections(abort=True)
        await slack.wait_until(
            lambda: slack.connections_total >= 2, timeout=20, what="the client to reconnect"
        )
        await slack.wait_for_client()
        await slack.wait_for_ack(await slack.send_event(event, event_id="Ev200"))  # Slack replays it
        fresh = await bot.mention("C2", "U1", "a new question after the reconnect")
        await bot.wait_for_answer("C2", fresh.ts)
        [answer] = bot.bot_messages("C1", "1700000200.000100")

    assert len(taken) == 2 and is_final_answer(answer)


async def test_front_end_restarted_mid_answer_finishes_the_same_message(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    base = settings()
    text = " ".join(f"part{i}" for i in range(60))
    async with scripted_worker(base.redis_url, answer_with(text, chunk=12), step_seconds=0.1):
        async with slack_running(slack, base) as first:
            question = await first.mention("C1", "U1", "tell me a long story")
            await slack.wait_until(
                lambda: bool(slack.calls_to("chat.appendStream")), what="streaming to begin"
            )
        # The first front-end stopped (a deploy) while the worker kept writing the answer.
        streamed_before = [m for m in first.bot_messages("C1", question.ts) if m.streaming]
        async with slack_running(slack, base) as second:
            answer = await second.wait_for_answer("C1", question.ts)

    assert [answer.ts] == [m.ts for m in streamed_before]  # the same message, finished
    assert visible(answer) == text and is_final_answer(answer)
    assert len(slack.calls_to("chat.startStream")) == 1
    assert not inflight_records(redis_client, "slack")
