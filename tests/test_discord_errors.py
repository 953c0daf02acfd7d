"""Every failure ends in a message the asker can read — and Discord's own errors are handled, not crashes."""

# ruff: noqa: F811 (test arguments are the imported fixtures, by pytest's design)

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from brandbot import keys, messages
from brandbot.contract import DeltaEvent, FinishReason, StartEvent
from brandbot.emulators.discord import ApiError, DiscordEmulator
from brandbot.settings import Settings
from tests.conftest import WorkerProcess
from tests.core_fixtures import inflight_records
from tests.discord_fixtures import (  # noqa: F401 (fixtures by name)
    GENERAL,
    RQ_QUEUE,
    RunningBot,
    ScriptedWorker,
    discord_bot,
    discord_bot_running,
    discord_emulator,
    is_in_progress,
    scripted_worker,
)

ORIGINAL = r"/webhooks/\d+/[^/]+/messages/@original"
CHANNEL_MESSAGES = rf"/channels/{GENERAL}/messages"


async def final_channel_text(bot: RunningBot) -> str:
    """The bot's latest channel message (not a command's response) once it is finished."""

    def finished() -> str | None:
        shown = [m for m in bot.messages_in(GENERAL) if "interaction_metadata" not in m]
        return str(shown[-1]["content"]) if shown and not is_in_progress(str(shown[-1]["content"])) else None

    return str(await bot.emulator.wait_until(finished, 40))


@pytest.mark.parametrize("discord_bot", [{"redis_url": "redis://127.0.0.1:1/0"}], indirect=True)
async def test_unreachable_queue_is_told_to_the_asker(discord_bot: RunningBot) -> None:
    assert await discord_bot.ephemeral_reply(await discord_bot.ask("hello?")) == messages.QUEUE_UNREACHABLE
    await discord_bot.mention("hello?")
    assert await final_channel_text(discord_bot) == messages.QUEUE_UNREACHABLE


@pytest.mark.parametrize("discord_bot", [{"worker_wait_seconds": 0.3}], indirect=True)
async def test_no_worker_for_the_model_is_told_and_the_request_withdrawn(
    discord_bot: RunningBot, redis_client: redis.Redis
) -> None:
    token = await discord_bot.ask("is anyone running the model?")
    await discord_bot.mention("is anyone running the model?")

    assert (await discord_bot.final_original(token))["content"] == messages.NO_WORKER
    assert await final_channel_text(discord_bot) == messages.NO_WORKER
    assert len(list(redis_client.scan_iter(match=keys.cancel_flag("*")))) == 2


async def test_generation_error_from_the_worker_is_shown(
    discord_emulator: DiscordEmulator,
    settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    prompts_dir: Path,
    tmp_path: Path,
) -> None:
    """Config drift: the front-end routes to a persona the worker does not know; the worker says so."""
    front_prompts = tmp_path / "front-prompts"
    (front_prompts / "personas").mkdir(parents=True)
    persona = (prompts_dir / "personas" / "default.yaml").read_text()
    (front_prompts / "personas" / "newvoice.yaml").write_text(persona)
    (front_prompts / "routing.yaml").write_text("default_persona: newvoice\n")
    start_worker()
    async with discord_bot_running(discord_emulator, settings(prompts_dir=front_prompts)) as bot:
        token = await bot.ask("hi")
        assert (await bot.final_original(token, timeout=30))["content"] == messages.PERSONA_UNAVAILABLE


async def test_failed_and_cut_short_answers_say_so(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    failed = await discord_bot.ask("break please")
    scripted_worker.fail((await scripted_worker.take()).request_id, messages.GENERATION_FAILED)
    slow = await discord_bot.ask("take your time")
    request = await scripted_worker.take()
    scripted_worker.answer(request.request_id, "The first half", finish=FinishReason.DEADLINE)

    assert (await discord_bot.final_original(failed))["content"] == messages.GENERATION_FAILED
    cut = (await discord_bot.final_original(slow))["content"]
    assert cut == f"The first half\n\n{messages.CUT_SHORT}"


async def test_discord_rate_limit_on_an_edit_is_waited_out(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    emulator = discord_bot.emulator
    limited = {"message": "You are being rate limited.", "retry_after": 0.3, "global": False}
    emulator.fail_next("PATCH", ORIGINAL, status=429, body=limited)
    token = await discord_bot.ask("hello")
    scripted_worker.answer((await scripted_worker.take()).request_id, "Hello after the wait.")

    assert (await discord_bot.final_original(token))["content"] == "Hello after the wait."
    first, second, *_ = emulator.requests_to("PATCH", ORIGINAL)
    assert second.json == first.json  # the same edit, sent again after retry-after


async def test_a_rejected_message_body_is_sent_again_in_a_safe_form(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    emulator = discord_bot.emulator
    too_long = ApiError.form("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.").body
    emulator.fail_next("POST", CHANNEL_MESSAGES, status=400, body=too_long)
    emulator.fail_next("PATCH", ORIGINAL, status=400, body=too_long)

    question = await discord_bot.mention("hello")
    scripted_worker.answer((await scripted_worker.take()).request_id, "Hello in the channel.")
    token = await discord_bot.ask("hello")
    scripted_worker.answer((await scripted_worker.take()).request_id, "Hello in the command.")

    assert await final_channel_text(discord_bot) == "Hello in the channel."
    assert (await discord_bot.final_original(token))["content"] == "Hello in the command."
    rejected, resent = emulator.requests_to("POST", CHANNEL_MESSAGES)
    assert rejected.json["message_reference"]["message_id"] == int(question["id"])
    assert "message_reference" not in resent.json  # the safe form drops the reply reference


async def test_a_deleted_answer_stops_its_generation(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    emulator = discord_bot.emulator
    await discord_bot.mention("write a lot")
    request = await scripted_worker.take()
    [placeholder] = await emulator.wait_until(lambda: discord_bot.messages_in(GENERAL))
    emulator.messages.pop(int(placeholder["id"]))  # a moderator deletes the bot's message

    scripted_worker.send(request.request_id, StartEvent(), DeltaEvent(text="Words"))

    await emulator.wait_until(lambda: redis_client.exists(keys.cancel_flag(request.request_id)))
    await emulator.wait_until(lambda: not inflight_records(redis_client, "discord"))
    assert discord_bot.messages_in(GENERAL) == [] and redis_client.llen(RQ_QUEUE) == 0


async def test_a_broken_command_still_answers_the_user(
    discord_bot: RunningBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(discord_bot.bot.conversations, "verdict", broken)

    assert await discord_bot.ephemeral_reply(await discord_bot.ask("hi")) == messages.DISCORD_COMMAND_FAILED
