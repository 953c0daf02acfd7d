"""How an answer appears: paced edits, the 2,000-character split, the 15-minute token, retries, the queue."""

# ruff: noqa: F811 (test arguments are the imported fixtures, by pytest's design)

from __future__ import annotations

import asyncio
import itertools

import pytest
import redis

from bots.splitting import FENCE
from brandbot import keys, messages
from brandbot.contract import DeltaEvent, StartEvent
from tests.discord_fixtures import (  # noqa: F401 (fixtures by name)
    ALICE,
    BOB,
    GENERAL,
    RQ_QUEUE,
    RunningBot,
    ScriptedWorker,
    discord_bot,
    discord_emulator,
    done,
    is_in_progress,
    pings_nobody,
    scripted_worker,
)

FIFTEEN_MINUTES = 15 * 60
CODE = "\n".join(f"    result_{i} = compute(value_{i}, factor={i})  # step {i}" for i in range(90))
FENCED_ANSWER = f"Here is the script:\n\n```python\ndef main():\n{CODE}\n```\n\nRun it with `python main.py`."


def open_fences(text: str) -> int:
    return sum(1 for line in text.splitlines() if FENCE.match(line)) % 2


async def test_long_answer_continues_in_follow_ups_split_outside_code_fences(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    assert len(FENCED_ANSWER) > 4000
    token = await discord_bot.ask("write me the script")
    scripted_worker.answer((await scripted_worker.take()).request_id, FENCED_ANSWER)
    emulator = discord_bot.emulator

    def finished() -> list[str] | None:
        original, follow_ups = emulator.original_message(token), emulator.followups(token)
        texts = [str(m["content"]) for m in [original or {"content": "…"}, *follow_ups]]
        return texts if len(texts) == 3 and not is_in_progress(texts[-1]) else None

    parts = await emulator.wait_until(finished)
    assert all(len(part) <= 2000 for part in parts)
    assert all(open_fences(part) == 0 for part in parts)  # every part renders on its own
    assert parts[1].startswith("```python\n") and parts[0].endswith("```")  # the fence closed and reopened
    original_lines = set(FENCED_ANSWER.splitlines())
    assert all(line in original_lines for part in parts for line in part.splitlines())  # no line cut
    rejoined = "\n".join(parts).replace("```\n```python\n", "")
    assert rejoined.split() == FENCED_ANSWER.split()
    assert all(not f["flags"] & 64 and pings_nobody(f) for f in emulator.followups(token))


@pytest.mark.parametrize("discord_bot", [{"edit_interval_seconds": 0.4}], indirect=True)
async def test_many_small_pieces_become_few_paced_edits_per_channel(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    tokens = [await discord_bot.ask("first"), await discord_bot.ask("second", user=BOB)]
    requests = [await scripted_worker.take(), await scripted_worker.take()]
    for request in requests:
        scripted_worker.send(request.request_id, StartEvent())

    for word in range(40):  # two answers growing at once in one channel, a word every 30 ms
        for request in requests:
            scripted_worker.send(request.request_id, DeltaEvent(text=f"w{word} "))
        await asyncio.sleep(0.03)
    for request in requests:
        scripted_worker.send(request.request_id, done(" ".join(f"w{w}" for w in range(40))))
    for token in tokens:
        assert (await discord_bot.final_original(token))["content"].endswith("w38 w39")

    edits = discord_bot.emulator.requests_to("PATCH", r"/webhooks/\d+/[^/]+/messages/@original")
    assert len(edits) < 40  # coalesced: far fewer edits than the 80 pieces
    # One channel, one pace for both answers: edits arrive about 0.4 s apart (half of it allows for the
    # test's own event loop delivering a request late).
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(edits)]
    assert min(gaps) >= 0.2


async def test_answer_running_near_fifteen_minutes_continues_as_a_channel_message(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    emulator = discord_bot.emulator
    token = await discord_bot.ask("a slow one")
    request = await scripted_worker.take()
    scripted_worker.send(request.request_id, StartEvent(), DeltaEvent(text="Part one."))
    await emulator.wait_until(
        lambda: (emulator.original_message(token) or {}).get("content") == "Part one. ▍"
    )

    discord_bot.clock_offset = FIFTEEN_MINUTES  # the token would die any moment now
    scripted_worker.send(request.request_id, DeltaEvent(text=" Part two."), done("Part one. Part two."))

    def moved() -> list[dict[str, object]] | None:
        channel = [m for m in discord_bot.messages_in(GENERAL) if "interaction_metadata" not in m]
        return channel if channel and channel[-1]["content"] == "Part one. Part two." else None

    [answer] = await emulator.wait_until(moved)
    original = emulator.original_message(token)
    assert original is not None and original["content"] == messages.DISCORD_MOVED_BELOW
    assert pings_nobody(answer) and pings_nobody(original)
    assert not emulator.followups(token)


async def test_private_answer_near_fifteen_minutes_continues_in_a_direct_message(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    emulator = discord_bot.emulator
    token = await discord_bot.ask("a slow private one", private=True)
    request = await scripted_worker.take()
    scripted_worker.send(request.request_id, StartEvent(), DeltaEvent(text="Secret part."))
    await emulator.wait_until(lambda: (emulator.original_message(token) or {}).get("content"))

    discord_bot.clock_offset = FIFTEEN_MINUTES
    scripted_worker.send(request.request_id, done("Secret part. The rest."))

    [dm_request] = await emulator.wait_until(lambda: emulator.requests_to("POST", "/users/@me/channels"))
    dm_channel = next(c for c in emulator.channels.values() if c["type"] == 1)
    [answer] = await emulator.wait_until(
        lambda: [
            m for m in emulator.messages_in(int(dm_channel["id"])) if m["content"] == "Secret part. The rest."
        ]
    )
    assert str(dm_request.json["recipient_id"]) == ALICE["id"]
    assert (emulator.original_message(token) or {})["content"] == messages.DISCORD_MOVED_TO_DM
    assert emulator.messages_in(GENERAL) == [] and pings_nobody(answer)


async def test_private_answer_that_cannot_move_to_a_dm_says_so_and_stops(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    emulator = discord_bot.emulator
    closed_dms = {"code": 50007, "message": "Cannot send messages to this user"}
    emulator.fail_next("POST", "/users/@me/channels", status=403, body=closed_dms)
    token = await discord_bot.ask("a slow private one", private=True)
    request = await scripted_worker.take()
    scripted_worker.send(request.request_id, StartEvent(), DeltaEvent(text="Secret part."))
    await emulator.wait_until(lambda: (emulator.original_message(token) or {}).get("content"))

    discord_bot.clock_offset = FIFTEEN_MINUTES
    scripted_worker.send(request.request_id, DeltaEvent(text=" More."))

    await emulator.wait_until(
        lambda: (emulator.original_message(token) or {}).get("content") == messages.DISCORD_MOVE_FAILED
    )
    await emulator.wait_until(lambda: redis_client.exists(keys.cancel_flag(request.request_id)))
    assert emulator.messages_in(GENERAL) == []


async def test_a_retried_attempt_starts_the_message_over(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    question = await discord_bot.mention("long answer please")
    request = await scripted_worker.take()
    scripted_worker.send(request.request_id, StartEvent(), DeltaEvent(text="First try. " * 250))
    await discord_bot.emulator.wait_until(lambda: len(discord_bot.messages_in(GENERAL)) == 2)

    scripted_worker.send(request.request_id, StartEvent(attempt=2), DeltaEvent(attempt=2, text="Second"))
    scripted_worker.send(request.request_id, done("Second try, complete.", attempt=2))

    [answer] = await discord_bot.emulator.wait_until(
        lambda: [m for m in discord_bot.messages_in(GENERAL) if m["content"] == "Second try, complete."]
    )
    assert discord_bot.messages_in(GENERAL) == [answer]  # the first try's extra part is gone
    shown = [version["content"] for version in answer["edit_history"]]
    assert messages.RESTARTING in shown and shown.index(messages.RESTARTING) > 0
    assert answer["message_reference"]["message_id"] == question["id"]


@pytest.mark.parametrize("discord_bot", [{"worker_wait_seconds": 30.0}], indirect=True)
async def test_queue_position_is_shown_while_others_are_ahead(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    redis_client.rpush(RQ_QUEUE, "someone-else-1", "someone-else-2", "someone-else-3")
    token = await discord_bot.ask("am I in line?")
    waiting = await discord_bot.emulator.wait_until(
        lambda: (discord_bot.emulator.original_message(token) or {}).get("content")
    )
    assert waiting == messages.queue_position(3) == "Thinking… (3 requests ahead of you)"

    redis_client.lrem(RQ_QUEUE, 0, "someone-else-1")
    redis_client.lrem(RQ_QUEUE, 0, "someone-else-2")
    redis_client.lrem(RQ_QUEUE, 0, "someone-else-3")
    scripted_worker.answer((await scripted_worker.take()).request_id, "Your turn came.")
    assert (await discord_bot.final_original(token))["content"] == "Your turn came."
