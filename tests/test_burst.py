"""A burst of questions: its work is done in order of urgency across all of them (`bots.burst`) —
acknowledgements, then queueing, then placeholders — and it is queued with the names already known."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from bots.burst import QUIET_TURNS, BurstOrder
from bots.slack.events import from_mention
from brandbot.emulators.slack import SlackEmulator
from brandbot.settings import Settings
from tests.slack_fixtures import answer_with, scripted_worker, slack_running, visible

BURST = 24
"""Questions of the burst in the Slack test: more than `bots.burst.BURST_QUESTIONS`."""

ANSWER_EDITS = ("chat.update", "chat.startStream", "chat.appendStream", "chat.stopStream")


# ---------------------------------------------------------------------- the order, rule by rule
async def test_intake_waits_until_questions_stop_arriving() -> None:
    order = BurstOrder(ack_first_seconds=60)
    arrived: list[int] = []

    async def arrive_one_per_turn() -> None:
        for number in range(10):
            order.arrive()
            arrived.append(number)
            await asyncio.sleep(0)

    order.arrive()
    arriving = asyncio.create_task(arrive_one_per_turn())
    async with asyncio.timeout(10):
        await order.arrivals_settled()
    assert len(arrived) == 10  # not started while any was still arriving
    await arriving


async def test_a_lone_question_waits_only_a_few_idle_turns() -> None:
    order = BurstOrder(ack_first_seconds=60)
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counting = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    order.arrive()
    async with asyncio.timeout(10):
        await order.arrivals_settled()
    counting.cancel()
    assert turns <= QUIET_TURNS + 5  # not held for `ack_first_seconds`


async def test_intake_starts_anyway_when_questions_never_stop_arriving() -> None:
    order = BurstOrder(ack_first_seconds=0.05)

    async def arrive_forever() -> None:
        while True:
            order.arrive()
            await asyncio.sleep(0)

    arriving = asyncio.create_task(arrive_forever())
    try:
        async with asyncio.timeout(10):  # a failure, not a hang, if the bound did not hold
            await order.arrivals_settled()
    finally:
        arriving.cancel()


async def test_a_placeholder_waits_until_the_rest_of_its_burst_is_queued() -> None:
    order = BurstOrder(queue_first_seconds=60, burst_questions=2)
    first, second, third = order.arrive(), order.arrive(), order.arrive()
    shown = asyncio.create_task(order.queued_first())
    await asyncio.sleep(0.01)
    first.queued()
    first.queued()  # twice counts once
    await asyncio.sleep(0.01)
    assert not shown.done()  # two are still being queued
    second.shown()  # shown: queued too
    async with asyncio.timeout(10):
        await shown  # one left: its own placeholder may go up beside its enqueue
    assert order.pending == 1 and not order.in_burst
    third.queued()


async def test_answers_wait_until_the_rest_of_their_bursts_placeholders_are_up() -> None:
    order = BurstOrder(show_first_seconds=60, burst_questions=1)
    first, second, third = order.arrive(), order.arrive(), order.arrive()
    first.shown()
    relayed = asyncio.create_task(order.shown_first())
    await asyncio.sleep(0.01)
    assert not relayed.done()  # two placeholders are still to go up
    second.shown()
    async with asyncio.timeout(10):
        await relayed
    third.shown()
    assert order.pending == 0


async def test_a_few_questions_at_once_each_go_their_own_pace() -> None:
    """Not a burst: a question waiting for a slow name look-up or thread read holds back no other's
    placeholder or answer."""
    order = BurstOrder(queue_first_seconds=60, show_first_seconds=60, burst_questions=3)
    order.arrive(), order.arrive(), order.arrive()
    async with asyncio.timeout(10):
        await order.queued_first()
        await order.shown_first()
    assert order.pending == 3 and not order.in_burst


async def test_a_placeholder_goes_up_anyway_when_queueing_stalls() -> None:
    order = BurstOrder(queue_first_seconds=0.05, burst_questions=2)
    order.arrive(), order.arrive(), order.arrive()
    async with asyncio.timeout(10):
        await order.queued_first()
    assert order.pending == 3


# ---------------------------------------------------------------------- through the real Slack front-end
async def test_a_burst_is_queued_before_its_placeholders_and_with_the_names_already_known(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    slack, base = slack_emulator, settings()
    for number in range(BURST):
        slack.add_user(f"UB{number:02d}", f"Person {number}")
    queued_at: list[float] = []
    async with (
        slack_running(slack, base, on_enqueued=lambda _: queued_at.append(time.monotonic())) as bot,
        scripted_worker(base.redis_url, answer_with("Noted.")) as taken,
    ):
        bot.app.adapter.bot_user_id = slack.bot_user_id
        questions = []
        # As bolt hands over the events of one read from the socket: all in one turn of the event loop.
        for number in range(BURST):
            channel, user = f"CB{number % 4}", f"UB{number:02d}"
            text = f"<@{slack.bot_user_id}> question {number}"
            message = slack.add_user_message(channel=channel, user=user, text=text)
            event = {"type": "app_mention", "channel": channel, "user": user, "text": text, "ts": message.ts}
            asked = from_mention(
                event, {"event_id": f"EvB{number}", "team_id": slack.team_id}, slack.bot_user_id
            )
            assert asked is not None
            bot.app.conversations.receive(*bot.app.adapter.question(asked, received_at=time.perf_counter()))
            questions.append((channel, message.ts))
        for channel, ts in questions:
            assert visible(await bot.wait_for_answer(channel, ts)) == "Noted."
        burst_requests = list(taken)
        answer_edits = [c.at for m in ANSWER_EDITS for c in slack.calls_to(m)]

        # Afterwards, a question on its own: its asker's name is looked up and waited for.
        later = await bot.mention("CB0", "UB00", "and one more")
        assert visible(await bot.wait_for_answer("CB0", later.ts)) == "Noted."

    placeholders = [c.at for c in slack.calls_to("chat.postMessage") if c.params.get("thread_ts") in
                    {ts for _, ts in questions}]  # fmt: skip
    assert len(queued_at) == BURST + 1 and len(placeholders) >= BURST
    assert max(queued_at[:BURST]) <= min(placeholders)  # every question queued before any placeholder
    assert answer_edits and max(placeholders) <= min(answer_edits)  # every placeholder before any answer
    assert sorted(r.user.id for r in burst_requests) == [f"UB{n:02d}" for n in range(BURST)]
    assert all(r.user.display_name == "" and r.channel_name == "" for r in burst_requests)
    assert taken[-1].user.display_name == "Person 0"
    assert [c.params["user"] for c in slack.calls_to("users.info")] == ["UB00"]


@pytest.mark.parametrize("burst", [False, True])
async def test_a_retry_in_the_same_burst_does_not_count_against_the_askers_rate_limit(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], burst: bool
) -> None:
    """The intake takes a question and charges its asker's rate limit in one pipeline; only the delivery
    that took it is charged, so a Slack retry arriving beside the original costs the asker nothing."""
    from bots.access import AccessRules, RateLimit

    slack, base = slack_emulator, settings()
    rules = AccessRules(rate_limit=RateLimit(questions_per_minute=1, burst=2))
    async with (
        slack_running(slack, base, rules=rules) as bot,
        scripted_worker(base.redis_url, answer_with("Fine.")),
    ):
        first = slack.add_user_message(channel="C1", user="U1", text=f"<@{slack.bot_user_id}> one")
        event = {"type": "app_mention", "channel": "C1", "user": "U1", "text": first.text, "ts": first.ts}
        deliveries = [slack.send_event(event, event_id="EvR1")]
        deliveries.append(slack.send_event(event, event_id="EvR1", retry_attempt=1, retry_reason="timeout"))
        if burst:
            envelopes = await asyncio.gather(*deliveries)
        else:
            envelopes = [await deliveries[0]]
            await bot.wait_for_answer("C1", first.ts)
            envelopes.append(await deliveries[1])
        for envelope in envelopes:
            await slack.wait_for_ack(envelope)
        await bot.wait_for_answer("C1", first.ts)
        second = await bot.mention("C1", "U1", "two")
        assert visible(await bot.wait_for_answer("C1", second.ts)) == "Fine."  # the second of a burst of 2
        third = await bot.mention("C1", "U1", "three")
        await slack.wait_until(lambda: slack.calls_to("chat.postEphemeral"), timeout=30)

    assert not bot.bot_messages("C1", third.ts)  # the third is over the limit: told privately
    assert len(bot.bot_messages("C1", first.ts)) == 1  # the retry was not answered again


# ---------------------------------------------------------------------- the collector
def test_a_started_front_end_freezes_its_startup_heap_and_collects_young_objects_less_often() -> None:
    """`brandbot slack`, `brandbot discord` and `brandbot worker` call it once started (a full collection
    walked the whole heap in the middle of a burst); a process of its own, so this test's collector is left
    as it is."""
    code = (
        "import gc; from brandbot.heap import freeze_startup_heap, YOUNG_COLLECTION_THRESHOLD as young; "
        "before = gc.get_freeze_count(); freeze_startup_heap(); "
        "print(before, gc.get_freeze_count(), gc.get_threshold()[0] == young > 700)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, frozen, raised = output.split()
    assert int(before) == 0 and int(frozen) > 1_000 and raised == "True"
