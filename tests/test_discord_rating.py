"""👍/👎 under Discord answers: on finished answers only, one vote per person, stored for the export.

The real discord.py bot against the emulator; the scripted worker answers and, as the real worker does
for requests that ask for it, keeps the answer for rating (`FeedbackRecorder`).
"""

# ruff: noqa: F811 (test arguments are the imported fixtures, by pytest's design)

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from bots.discord.rating import CUSTOM_ID_PREFIX
from brandbot import keys, messages
from brandbot.contract import DeltaEvent, GenerationRequest, StartEvent
from brandbot.emulators.discord import DiscordEmulator
from brandbot.feedback import FeedbackRecorder, FeedbackStore, RatingFilter
from brandbot.settings import Settings
from tests.conftest import WorkerProcess
from tests.discord_fixtures import (  # noqa: F401 (fixtures by name)
    ALICE,
    BOB,
    CAROL,
    GENERAL,
    MUTED_ROLE,
    OPEN_RULES,
    RunningBot,
    ScriptedWorker,
    discord_bot,
    discord_bot_running,
    discord_emulator,
    done,
    is_in_progress,
    scripted_worker,
)

JSON = dict[str, Any]
EPHEMERAL = 1 << 6


def good(request_id: str) -> str:
    return f"{CUSTOM_ID_PREFIX}good:{request_id}"


def bad(request_id: str) -> str:
    return f"{CUSTOM_ID_PREFIX}bad:{request_id}"


def button_ids(message: JSON) -> list[str]:
    return [str(c["custom_id"]) for row in message["components"] for c in row["components"]]


def keep_like_the_worker(client: redis.Redis, request: GenerationRequest, answer: str) -> None:
    """What the real worker does with a request that has `keep_for_rating` (see worker/service.py)."""
    assert request.keep_for_rating
    FeedbackRecorder(client, retention_seconds=600).record_answer(
        request.request_id,
        persona=request.persona,
        system_prompt="You are Brandbot.",
        turns=[{"role": turn.role.value, "content": turn.content} for turn in request.turns],
        answer=answer,
        platform=request.target.platform.value,
    )


async def click(bot: RunningBot, message: JSON, custom_id: str, user: JSON) -> JSON:
    """Click and return the bot's answer to the click (the interaction callback's body)."""
    sent = await bot.emulator.click(message, custom_id, user=user, member_roles=bot.roles_of(user))
    [response] = await bot.emulator.wait_until(lambda: bot.emulator.interaction_responses(sent["token"]))
    return dict(response)


def told_privately(response: JSON) -> str:
    assert response["type"] == 4 and response["data"]["flags"] & EPHEMERAL, response
    return str(response["data"]["content"])


async def finished_channel_answer(bot: RunningBot, count: int = 1) -> list[JSON]:
    def done() -> list[JSON] | None:
        shown = bot.messages_in(GENERAL)
        finished = len(shown) == count and not any(is_in_progress(m["content"]) for m in shown)
        return shown if finished else None

    return list(await bot.emulator.wait_until(done, 30))


async def test_an_ask_answer_shows_rating_buttons_and_each_persons_click_is_one_vote(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    token = await discord_bot.ask("what is brandbot?")
    request = await scripted_worker.take()
    keep_like_the_worker(redis_client, request, "A helpful answer.")
    scripted_worker.answer(request.request_id, "A helpful answer.")
    answer = await discord_bot.final_original(token)  # the buttons come with the final text, in one edit

    assert answer["content"] == "A helpful answer."
    assert button_ids(answer) == [good(request.request_id), bad(request.request_id)]
    replies = [
        await click(discord_bot, answer, good(request.request_id), ALICE),
        await click(discord_bot, answer, bad(request.request_id), BOB),
        await click(discord_bot, answer, good(request.request_id), BOB),  # changed their mind: one vote each
    ]

    assert [told_privately(reply) for reply in replies] == [messages.FEEDBACK_THANKS] * 3
    votes = redis_client.hgetall(keys.feedback(request.request_id))
    assert {name: value for name, value in votes.items() if name.startswith(b"vote:")} == {
        b"vote:" + ALICE["id"].encode(): b"1",
        b"vote:" + BOB["id"].encode(): b"1",
    }
    exported = io.StringIO()
    connection = redis.asyncio.Redis.from_url(discord_bot.settings.redis_url)
    try:
        store = FeedbackStore(connection, retention_seconds=600)
        assert await store.export(exported, rating=RatingFilter.GOOD) == 1
    finally:
        await connection.aclose()
    [line] = [json.loads(text) for text in exported.getvalue().splitlines()]
    assert line["rating"] == 1
    assert line["messages"][-2:] == [
        {"role": "user", "content": "what is brandbot?"},
        {"role": "assistant", "content": "A helpful answer."},
    ]


async def test_a_channel_answer_carries_the_buttons_on_its_last_message_and_they_store_votes(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    await discord_bot.mention("explain it at length")
    request = await scripted_worker.take()
    long_answer = "\n\n".join(f"Paragraph {i}: " + "words " * 60 for i in range(7))
    assert 2000 < len(long_answer) < 3800  # two messages
    keep_like_the_worker(redis_client, request, long_answer)
    scripted_worker.answer(request.request_id, long_answer)
    first, last = await finished_channel_answer(discord_bot, count=2)

    assert first["components"] == []  # under the answer, not in the middle of it
    assert button_ids(last) == [good(request.request_id), bad(request.request_id)]
    reply = await click(discord_bot, last, bad(request.request_id), CAROL)
    assert told_privately(reply) == messages.FEEDBACK_THANKS
    assert redis_client.hget(keys.feedback(request.request_id), "vote:" + CAROL["id"]) == b"-1"


async def test_an_error_notice_has_no_rating_buttons(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    token = await discord_bot.ask("this one fails")
    scripted_worker.fail((await scripted_worker.take()).request_id, "The model failed.")
    await discord_bot.mention("this one fails too")
    scripted_worker.fail((await scripted_worker.take()).request_id, "The model failed.")

    assert (await discord_bot.final_original(token))["components"] == []
    notices = await finished_channel_answer(discord_bot, count=2)  # the command's response is one of them
    assert [(m["content"], m["components"]) for m in notices] == [("The model failed.", [])] * 2


async def test_a_forged_rating_button_is_refused_quietly_and_stores_nothing(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    await discord_bot.mention("rate me")
    request = await scripted_worker.take()
    keep_like_the_worker(redis_client, request, "Rated.")
    scripted_worker.answer(request.request_id, "Rated.")
    [answer] = await finished_channel_answer(discord_bot)
    forged = [
        good("../" + request.request_id),  # not a request id: would name another key
        good("x" * 65),  # longer than any request id
        good(request.request_id + "\n"),  # a request id and then some
        f"{CUSTOM_ID_PREFIX}great:{request.request_id}",  # not a vote
        f"{CUSTOM_ID_PREFIX}good",  # no request id at all
    ]
    # Drawn on the message as if the bot had put them there (Discord only sends clicks on shown buttons).
    answer["components"] = [
        {"type": 1, "components": [{"type": 2, "style": 2, "label": "x", "custom_id": custom_id}]}
        for custom_id in forged
    ]

    replies = [await click(discord_bot, answer, custom_id, ALICE) for custom_id in forged]

    assert [reply["type"] for reply in replies] == [6] * len(forged)  # acknowledged, nothing said
    kept = keys.feedback(request.request_id)
    assert list(redis_client.scan_iter(match=keys.feedback("*"))) == [kept.encode()]  # no key was named
    assert not [name for name in redis_client.hkeys(kept) if name.startswith(b"vote:")]


async def test_buttons_keep_working_after_the_front_end_restarts(
    discord_emulator: DiscordEmulator,
    settings: Callable[..., Settings],
    scripted_worker: ScriptedWorker,
    redis_client: redis.Redis,
) -> None:
    base = settings()
    async with discord_bot_running(discord_emulator, base) as first:
        await first.mention("remember me")
        request = await scripted_worker.take()
        keep_like_the_worker(redis_client, request, "Remembered.")
        scripted_worker.answer(request.request_id, "Remembered.")
        [answer] = await finished_channel_answer(first)

    async with discord_bot_running(discord_emulator, base) as second:
        reply = await click(second, answer, good(request.request_id), BOB)

    assert told_privately(reply) == messages.FEEDBACK_THANKS
    assert redis_client.hget(keys.feedback(request.request_id), "vote:" + BOB["id"]) == b"1"


async def test_with_feedback_off_there_are_no_buttons_and_the_worker_keeps_no_copy(
    discord_emulator: DiscordEmulator,
    settings: Callable[..., Settings],
    worker_process: WorkerProcess,
    redis_client: redis.Redis,
) -> None:
    async with discord_bot_running(discord_emulator, settings(feedback_enabled=False)) as bot:
        token = await bot.ask("hello there")
        await bot.mention("and hello here")
        await bot.final_original(token, timeout=60)
        answers = await finished_channel_answer(bot, count=2)  # the command's response and the reply
        replies = list(redis_client.scan_iter(match=keys.reply_stream("*")))

    assert len(replies) == 2  # the real worker answered both
    assert all(answer["content"] and answer["components"] == [] for answer in answers)
    assert list(redis_client.scan_iter(match=keys.feedback("*"))) == []


async def test_a_real_workers_answer_is_kept_for_rating_and_a_click_reaches_the_export(
    discord_bot: RunningBot, worker_process: WorkerProcess, redis_client: redis.Redis
) -> None:
    token = await discord_bot.ask("hello there")
    answer = await discord_bot.final_original(token, timeout=60)
    [custom_id, _bad] = button_ids(answer)
    request_id = custom_id.removeprefix(CUSTOM_ID_PREFIX + "good:")
    assert redis_client.ttl(keys.feedback(request_id)) > 0  # the worker kept it, for the retention only

    assert told_privately(await click(discord_bot, answer, custom_id, ALICE)) == messages.FEEDBACK_THANKS
    connection = redis.asyncio.Redis.from_url(discord_bot.settings.redis_url)
    try:
        rated = [record async for record, _score in FeedbackStore(connection, retention_seconds=600).rated()]
    finally:
        await connection.aclose()
    # (The tiny model's random text is shown cleaned up for the chat; the record keeps the raw answer.)
    assert [(record.request_id, record.platform, bool(record.answer)) for record in rated] == [
        (request_id, "discord", True)
    ]


async def test_a_private_answer_carries_the_buttons_only_its_asker_sees(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    token = await discord_bot.ask("just for me", private=True)
    request = await scripted_worker.take()
    keep_like_the_worker(redis_client, request, "Only you see this.")
    scripted_worker.answer(request.request_id, "Only you see this.")
    answer = await discord_bot.final_original(token)

    assert answer["flags"] & EPHEMERAL and discord_bot.messages_in(GENERAL) == []
    assert button_ids(answer) == [good(request.request_id), bad(request.request_id)]
    assert told_privately(await click(discord_bot, answer, good(request.request_id), ALICE)) == (
        messages.FEEDBACK_THANKS
    )
    assert redis_client.hget(keys.feedback(request.request_id), "vote:" + ALICE["id"]) == b"1"


async def test_an_answer_moved_out_of_its_dying_interaction_keeps_its_buttons(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    emulator = discord_bot.emulator
    token = await discord_bot.ask("a slow one")
    request = await scripted_worker.take()
    scripted_worker.send(request.request_id, StartEvent(), DeltaEvent(text="Part one."))

    def part_one_shown() -> bool:
        return str((emulator.original_message(token) or {}).get("content", "")).startswith("Part one.")

    await emulator.wait_until(part_one_shown)

    discord_bot.clock_offset = 15 * 60  # the command's token would die any moment now
    scripted_worker.send(request.request_id, done("Part one. Part two."))

    def moved() -> JSON | None:
        channel = [m for m in discord_bot.messages_in(GENERAL) if "interaction_metadata" not in m]
        return channel[-1] if channel and channel[-1]["content"] == "Part one. Part two." else None

    answer = await emulator.wait_until(moved)
    assert button_ids(answer) == [good(request.request_id), bad(request.request_id)]
    assert (emulator.original_message(token) or {})["components"] == []  # the note saying where it went


async def test_someone_not_allowed_to_ask_cannot_rate_either(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    await discord_bot.mention("rate me")
    request = await scripted_worker.take()
    keep_like_the_worker(redis_client, request, "Rated.")
    scripted_worker.answer(request.request_id, "Rated.")
    [answer] = await finished_channel_answer(discord_bot)
    discord_bot.rules = OPEN_RULES.model_copy(update={"block_roles": [str(MUTED_ROLE)]})  # Bob is muted

    reply = await click(discord_bot, answer, bad(request.request_id), BOB)

    assert reply["type"] == 6  # acknowledged, nothing said
    assert redis_client.hget(keys.feedback(request.request_id), "vote:" + BOB["id"]) is None
