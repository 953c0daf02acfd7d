"""Exactly one answer per question: across gateway reconnects and replays, and a front-end restart."""

# ruff: noqa: F811 (test arguments are the imported fixtures, by pytest's design)

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis
from rq.job import Job

from bots.splitting import split_message
from brandbot import messages
from brandbot.contract import DeltaEvent, StartEvent
from brandbot.emulators.discord import DiscordEmulator, public
from brandbot.settings import Settings
from tests.conftest import WorkerProcess, length_note
from tests.core_fixtures import inflight_records
from tests.discord_fixtures import (  # noqa: F401 (fixtures by name)
    ALICE,
    GENERAL,
    GUILD_ID,
    RQ_QUEUE,
    RunningBot,
    ScriptedWorker,
    discord_bot,
    discord_bot_running,
    discord_emulator,
    done,
    done_events,
    is_in_progress,
    scripted_worker,
)


def texts_in(bot: RunningBot) -> list[str]:
    return [str(m["content"]) for m in bot.messages_in(GENERAL)]


def channel_texts(bot: RunningBot) -> list[str]:
    """The bot's own channel messages (not interaction responses)."""
    return [str(m["content"]) for m in bot.messages_in(GENERAL) if "interaction_metadata" not in m]


async def test_gateway_reconnects_and_replays_mid_answer_still_give_one_answer(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    emulator = discord_bot.emulator
    question = await discord_bot.mention("what changed in 2.4?")
    token = await discord_bot.ask("and in 2.5?")
    asked = [await scripted_worker.take(), await scripted_worker.take()]
    for request in asked:
        scripted_worker.send(request.request_id, StartEvent(), DeltaEvent(text="Half"))
    await emulator.wait_until(
        lambda: [m["content"] for m in discord_bot.messages_in(GENERAL)] == ["Half ▍"] * 2
    )

    await emulator.drop_connection()  # resumable: missed events are replayed on RESUME
    for request in asked:
        scripted_worker.send(
            request.request_id, DeltaEvent(text=" and the rest."), done("Half and the rest.")
        )
    await emulator.wait_until(lambda: emulator.resume_count == 1)
    await emulator.dispatch("MESSAGE_CREATE", public(question))  # the same events delivered again
    await emulator.drop_connection(resumable=False)  # a new session: Discord may deliver anew
    await emulator.wait_for_identify(count=2)
    await emulator.dispatch("MESSAGE_CREATE", public(question))

    await emulator.wait_until(lambda: texts_in(discord_bot) == ["Half and the rest."] * 2)
    await asyncio.sleep(0.3)  # time for a second answer to show up, were there one
    assert len(discord_bot.messages_in(GENERAL)) == 2 and redis_client.llen(RQ_QUEUE) == 0
    assert emulator.interaction_responses(token) == [{"type": 5}]


async def test_a_replayed_slash_command_is_answered_once(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    emulator = discord_bot.emulator
    sent = await emulator.send_interaction(
        guild_id=GUILD_ID, channel_id=GENERAL, user=ALICE, name="ask",
        options=[{"name": "prompt", "value": "once please"}],
    )  # fmt: skip
    await emulator.dispatch("INTERACTION_CREATE", sent)  # delivered twice
    scripted_worker.answer((await scripted_worker.take()).request_id, "Once.")

    assert (await discord_bot.final_original(sent["token"]))["content"] == "Once."
    assert emulator.interaction_responses(sent["token"]) == [{"type": 5}]
    assert redis_client.llen(RQ_QUEUE) == 0


async def test_restart_mid_answer_finishes_it_in_the_same_messages(
    discord_emulator: DiscordEmulator,
    settings: Callable[..., Settings],
    scripted_worker: ScriptedWorker,
    redis_client: redis.Redis,
) -> None:
    base = settings(worker_wait_seconds=30.0)
    long_text = "\n\n".join(f"Section {i}. " + "detail " * 50 for i in range(8))
    async with discord_bot_running(discord_emulator, base) as first:
        question = await first.mention("explain it all")
        token = await first.ask("and briefly?")
        # Which of the two reaches the queue first is up to the scheduler.
        taken = {
            request.turns[-1].content: request for request in [await scripted_worker.take() for _ in "ab"]
        }
        channel_answer, command_answer = taken["explain it all"], taken["and briefly?"]
        scripted_worker.send(channel_answer.request_id, StartEvent(), DeltaEvent(text=long_text))
        scripted_worker.send(command_answer.request_id, StartEvent(), DeltaEvent(text="Brief"))
        shown = await discord_emulator.wait_until(
            lambda: len(first.messages_in(GENERAL)) == 3 and first.messages_in(GENERAL)
        )
    # The first front-end stopped mid-answer; its records stay, its leases are released.
    assert inflight_records(redis_client, "discord") == 2
    scripted_worker.send(channel_answer.request_id, DeltaEvent(text="\n\nThe end."))
    scripted_worker.send(channel_answer.request_id, done(long_text + "\n\nThe end."))
    scripted_worker.send(command_answer.request_id, DeltaEvent(text="ly: yes."), done("Briefly: yes."))

    async with discord_bot_running(discord_emulator, base) as second:
        expected = split_message(long_text + "\n\nThe end.", 2000)
        # A limit for a hung relay, not a speed requirement: the resumed edits are paced per channel.
        await discord_emulator.wait_until(lambda: channel_texts(second) == expected, timeout=60)
        assert (await second.final_original(token))["content"] == "Briefly: yes."
        await discord_emulator.wait_until(lambda: inflight_records(redis_client, "discord") == 0, timeout=60)

    now = second.messages_in(GENERAL)
    assert [m["id"] for m in now] == [m["id"] for m in shown]  # the same messages, no new ones
    # The answer still replies to its question (the command's answer may have been posted before it).
    replies = [m for m in now if (m.get("message_reference") or {}).get("message_id") == question["id"]]
    assert [m["content"] for m in replies] == [expected[0]]


async def test_a_front_end_stopped_while_posting_a_part_records_it_and_the_next_one_adopts_it(
    discord_emulator: DiscordEmulator,
    settings: Callable[..., Settings],
    scripted_worker: ScriptedWorker,
    redis_client: redis.Redis,
) -> None:
    base = settings(worker_wait_seconds=30.0)
    long_text = "\n\n".join(f"Section {i}. " + "detail " * 50 for i in range(8))
    async with discord_bot_running(discord_emulator, base) as first:
        await first.mention("explain it all")
        answer = await scripted_worker.take()
        await discord_emulator.wait_until(lambda: first.messages_in(GENERAL))
        # The second part lands in the channel at once, but Discord's answer (its id) comes late:
        # the front-end is told to stop while it waits for it.
        discord_emulator.answer_slowly("POST", rf"/channels/{GENERAL}/messages", 2.0)
        scripted_worker.send(answer.request_id, StartEvent(), DeltaEvent(text=long_text))
        await discord_emulator.wait_until(lambda: len(first.messages_in(GENERAL)) == 2)
    posted = [m["id"] for m in first.messages_in(GENERAL)]
    scripted_worker.send(answer.request_id, done(long_text))

    async with discord_bot_running(discord_emulator, base) as second:
        expected = split_message(long_text.strip(), 2000)  # an answer is shown stripped
        await discord_emulator.wait_until(lambda: channel_texts(second) == expected, timeout=60)
        await discord_emulator.wait_until(lambda: inflight_records(redis_client, "discord") == 0, timeout=60)
    assert [m["id"] for m in second.messages_in(GENERAL)] == posted  # no part posted twice


async def test_restart_before_a_worker_took_the_question_still_answers_it(
    discord_emulator: DiscordEmulator,
    settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    base = settings(worker_wait_seconds=30.0)
    async with discord_bot_running(discord_emulator, base) as first:
        await first.mention("anyone home?")
        # The record is written when the question is taken in, before its placeholder shows.
        await discord_emulator.wait_until(
            lambda: inflight_records(redis_client, "discord") == 1 and first.messages_in(GENERAL)
        )
        [placeholder] = first.messages_in(GENERAL)
        assert placeholder["content"] == messages.THINKING

    start_worker()
    async with discord_bot_running(discord_emulator, base) as second:
        [(_, answer)] = (await discord_emulator.wait_until(lambda: done_events(redis_client), 60)).items()
        await discord_emulator.wait_until(
            lambda: (
                [m["content"] for m in second.messages_in(GENERAL)]
                == [(answer.text.strip() or "…") + length_note(answer)]
            ),
            30,
        )
        await discord_emulator.wait_until(lambda: inflight_records(redis_client, "discord") == 0)
    [final] = second.messages_in(GENERAL)
    assert final["id"] == placeholder["id"] and not is_in_progress(final["content"])


async def test_an_answer_lost_from_redis_during_a_restart_says_so(
    discord_emulator: DiscordEmulator,
    settings: Callable[..., Settings],
    scripted_worker: ScriptedWorker,
    redis_client: redis.Redis,
) -> None:
    async with discord_bot_running(discord_emulator, settings(worker_wait_seconds=30.0)) as first:
        await first.mention("remember me?")
        request = await scripted_worker.take()
        [placeholder] = await discord_emulator.wait_until(lambda: first.messages_in(GENERAL))
    redis_client.delete(Job.key_for(request.request_id))  # expired, or Redis lost its data meanwhile

    async with discord_bot_running(discord_emulator, settings()) as second:
        await discord_emulator.wait_until(lambda: texts_in(second) == [messages.GENERATION_FAILED])
        await discord_emulator.wait_until(lambda: inflight_records(redis_client, "discord") == 0)
    assert second.messages_in(GENERAL)[0]["id"] == placeholder["id"]
