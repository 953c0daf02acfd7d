"""The conversation core through both real front-ends: malformed events, lease fencing between two
front-ends, nothing left behind once answers finish, answers lost from Redis during a restart."""

# ruff: noqa: F811 (test arguments are the imported fixtures, by pytest's design)

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis
from rq.job import Job

from brandbot import keys, messages
from brandbot.emulators.discord import public
from brandbot.emulators.slack import SlackEmulator
from brandbot.settings import Settings
from tests.core_fixtures import inflight_records
from tests.discord_fixtures import (  # noqa: F401 (fixtures by name)
    ALICE,
    GENERAL,
    GUILD_ID,
    RunningBot,
    ScriptedWorker,
    discord_bot,
    discord_emulator,
    scripted_worker,
)
from tests.slack_fixtures import RunningSlack, answer_with, is_final_answer, slack_running, visible
from tests.slack_fixtures import scripted_worker as slack_worker

SECRET = "SECRET-QUESTION-TEXT"


# ---------------------------------------------------------------------- malformed platform events
async def test_malformed_slack_events_are_dropped_with_one_line_each(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    slack = slack_emulator
    base = settings()
    bot_mention = f"<@{slack.bot_user_id}> {SECRET}"
    malformed: list[dict[str, Any]] = [
        {"type": "app_mention", "channel": "C1", "text": bot_mention, "ts": "1700000001.000001"},  # no user
        {"type": "app_mention", "user": "U1", "text": bot_mention, "ts": "1700000001.000002"},  # no channel
        {"type": "app_mention", "user": "U1", "channel": "C1", "text": 42, "ts": "1700000001.000003"},
        {"type": "app_mention", "user": ["U1"], "channel": "C1", "text": bot_mention,
         "ts": "1700000001.000004"},
        {"type": "message", "channel_type": "im", "user": "U1", "channel": {"id": "D1"}, "text": SECRET,
         "ts": "1700000001.000005"},
        {"type": "message", "user": "U1", "channel": "C1", "text": SECRET, "ts": "1700000001.000006",
         "thread_ts": 1700000001.0},
    ]  # fmt: skip
    async with slack_running(slack, base) as bot, slack_worker(base.redis_url, answer_with("Fine.")):
        for number, event in enumerate(malformed):
            await slack.wait_for_ack(await slack.send_event(event, event_id=f"EvBad{number}"))
        await slack.wait_for_ack(await slack.send_event({"type": "mystery_event", "text": SECRET}))
        fresh = await bot.mention("C2", "U1", "still there?")  # the front-end still answers
        answer = await bot.wait_for_answer("C2", fresh.ts)

    output = capsys.readouterr().out
    assert visible(answer) == "Fine."
    assert output.count("malformed slack event dropped") == len(malformed)
    assert output.count("slack event not handled, dropped") == 1
    assert SECRET not in output and "Traceback" not in output
    assert [c.params["channel"] for c in slack.calls_to("chat.postMessage")] == ["C2"]


async def test_malformed_discord_events_are_dropped_with_one_line_each(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator = discord_bot.emulator
    question = await discord_bot.mention("first, a good one")
    scripted_worker.answer((await scripted_worker.take()).request_id, "Good.")
    await emulator.wait_until(lambda: [m["content"] for m in discord_bot.messages_in(GENERAL)] == ["Good."])
    good = public(question)
    without_author = {k: v for k, v in good.items() if k != "author"} | {"id": "111", "content": SECRET}
    without_channel = {k: v for k, v in good.items() if k != "channel_id"} | {"id": "112", "content": SECRET}
    mistyped = good | {"id": "113", "content": 12345}
    for data in (without_author, without_channel, mistyped):
        await emulator.dispatch("MESSAGE_CREATE", data)
    await emulator.dispatch("MYSTERY_EVENT", {"text": SECRET})
    await discord_bot.mention("still there?")  # the gateway connection survived
    scripted_worker.answer((await scripted_worker.take()).request_id, "Yes.")
    await emulator.wait_until(
        lambda: [m["content"] for m in discord_bot.messages_in(GENERAL)] == ["Good.", "Yes."]
    )

    output = capsys.readouterr().out
    assert output.count("malformed discord event dropped") == 3
    assert SECRET not in output and "Traceback" not in output


# ---------------------------------------------------------------------- leases: fencing
async def take_over(
    first: RunningSlack, second: RunningSlack, redis_client: redis.Redis
) -> tuple[RunningSlack, RunningSlack, str]:
    """Of two front-ends that both got a question, the one relaying it stalls past its lease (simulated:
    the lease lapses), the other takes the answer over, and the first's next renewal finds it fenced off.
    Returns (the first owner, the one that took over, the answer's request id)."""
    owner, other = (first, second) if first.app.conversations.book.held else (second, first)
    [request_id] = owner.app.conversations.book.held
    redis_client.delete(keys.relay_lease("slack", request_id))
    assert await other.app.conversations.resume_orphans() == 1
    assert await owner.app.conversations.book.renew() == [request_id]  # the renewal finds it lost
    return owner, other, request_id


async def test_a_stalled_front_end_whose_lease_was_taken_over_stops_relaying(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    base = settings()
    text = " ".join(f"word{i}" for i in range(80))
    async with (
        slack_running(slack, base) as first,
        slack_running(slack, base) as second,
        slack_worker(base.redis_url, answer_with(text, chunk=8), step_seconds=0.1),
    ):
        question = await first.mention("C1", "U1", "a long story please")  # both front-ends get the event
        await slack.wait_until(lambda: bool(slack.calls_to("chat.appendStream")), what="streaming to begin")
        # The owner stalls past its lease; the other takes the answer over.
        owner, other, request_id = await take_over(first, second, redis_client)
        assert not owner.app.conversations.book.holds(request_id)
        answer = await other.wait_for_answer("C1", question.ts, timeout=60)

    assert visible(answer) == text and is_final_answer(answer)
    assert len(slack.calls_to("chat.startStream")) == 1  # no second answer, no duplicate follow-up
    assert not slack.calls_to("chat.delete") or all(
        c.params["ts"] != answer.ts for c in slack.calls_to("chat.delete")
    )
    assert inflight_records(redis_client, "slack") == 0


async def test_a_stream_started_just_before_its_front_end_died_is_closed_by_the_one_that_resumes(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    """Found by the soak (front-end-kill at 1,000 questions, 3 in a run): Slack made the stream, the process
    died before it recorded it, and the resumed answer streamed into a new message below a message that
    stayed "writing" forever."""
    slack = slack_emulator
    base = settings()
    text = " ".join(f"word{i}" for i in range(40))
    slack.answer_held["chat.startStream"] = asyncio.Event()  # the stream is made; its answer never arrives
    async with (
        slack_running(slack, base) as first,
        slack_running(slack, base) as second,
        slack_worker(base.redis_url, answer_with(text, chunk=8), step_seconds=0.05),
    ):
        question = await first.mention("C1", "U1", "a story please")  # both front-ends get the event
        await slack.wait_until(lambda: bool(slack.calls_to("chat.startStream")), what="a stream to start")
        # The owner is gone as far as anyone can tell; the other resumes the answer.
        _owner, other, _request_id = await take_over(first, second, redis_client)
        slack.answer_held.pop("chat.startStream").set()
        answer = await other.wait_for_answer("C1", question.ts, timeout=60)
        await slack.wait_until(lambda: other.app.conversations.busy == 0, what="the resumed answer to end")

    bot_messages = [m for m in slack.messages_in("C1", question.ts) if m.user == slack.bot_user_id]
    assert [visible(m) for m in bot_messages] == [text] and is_final_answer(answer)
    assert not any(m.streaming for m in bot_messages)
    assert len(slack.calls_to("chat.startStream")) == 2  # the lost one, closed and deleted, and the answer


# ---------------------------------------------------------------------- nothing grows without bound
async def test_finished_answers_leave_no_lease_task_or_record_behind(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    base = settings()
    async with slack_running(slack, base) as bot, slack_worker(base.redis_url, answer_with("Done.")):
        asked = [await bot.mention(f"C{n}", f"U{n}", f"question {n}") for n in range(6)]
        for n, question in enumerate(asked):
            await bot.wait_for_answer(f"C{n}", question.ts)
        conversations = bot.app.conversations
        await slack.wait_until(lambda: conversations.busy == 0, what="every answer task to end")
        assert conversations.book.held == set()
    assert inflight_records(redis_client, "slack") == 0
    assert redis_client.zcard(keys.inflight_index("slack")) == 0
    assert not list(redis_client.scan_iter(match=keys.relay_lease("slack", "*")))


# ---------------------------------------------------------------------- resume: a lost job
async def test_a_slack_answer_lost_from_redis_during_a_restart_says_so(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    base = settings(worker_wait_seconds=30.0)
    async with slack_running(slack, base) as first:
        question = await first.mention("C1", "U1", "remember me?")
        await slack.wait_until(lambda: inflight_records(redis_client, "slack") == 1, what="the record")
        await slack.wait_until(lambda: bool(redis_client.llen("rq:queue:" + keys.model_queue("default"))))
    [job_id] = [
        keys.as_text(j) for j in redis_client.lrange("rq:queue:" + keys.model_queue("default"), 0, -1)
    ]
    redis_client.delete(Job.key_for(job_id))  # expired, or Redis lost its data meanwhile

    async with slack_running(slack, base) as second:
        await slack.wait_until(
            lambda: (
                [visible(m) for m in second.bot_messages("C1", question.ts)] == [messages.GENERATION_FAILED]
            ),
            timeout=30,
            what="the error in the placeholder",
        )
        await slack.wait_until(lambda: inflight_records(redis_client, "slack") == 0, what="the record to go")
