"""Bad input and broken parts on the spine's path: each gets a short answer in the thread, never silence."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from brandbot import keys, messages
from brandbot.emulators.slack import SlackEmulator
from brandbot.settings import Settings
from tests.conftest import PrivateRedis, SlackBot, WorkerProcess, slack_bot_running, wait_for_worker
from tests.slack_fixtures import is_final_answer, visible

QUEUE = keys.model_queue("default")


async def mention(bot: SlackBot, text: str, **event: object) -> str:
    slack = bot.emulator
    message, envelope = await slack.send_user_message(
        channel="C1", user=str(event.pop("user", "U1")), text=text, event_type="app_mention"
    )
    await slack.wait_for_ack(envelope)
    return message.ts


async def test_empty_mention_gets_a_hint_and_no_model_call(
    slack_bot: SlackBot, redis_client: redis.Redis
) -> None:
    thread = await mention(slack_bot, f"<@{slack_bot.emulator.bot_user_id}>   ")
    await slack_bot.emulator.wait_until(lambda: bool(slack_bot.bot_messages("C1", thread)))
    [hint] = slack_bot.bot_messages("C1", thread)
    assert hint.markdown_text == messages.EMPTY_MENTION
    assert redis_client.llen(f"rq:queue:{QUEUE}") == 0
    assert not list(redis_client.scan_iter(match=keys.reply_stream("*")))


async def test_bot_messages_and_own_messages_never_trigger(
    slack_bot: SlackBot, redis_client: redis.Redis
) -> None:
    slack = slack_bot.emulator
    base = {
        "type": "app_mention",
        "channel": "C1",
        "text": f"<@{slack.bot_user_id}> hi",
        "team": slack.team_id,
    }
    for extra in ({"user": "U9", "bot_id": "B_OTHER", "ts": "1.1"}, {"user": slack.bot_user_id, "ts": "1.2"}):
        await slack.wait_for_ack(await slack.send_event({**base, **extra}))
    # A real question afterwards is answered, so the two above were seen and deliberately ignored.
    thread = await mention(slack_bot, f"<@{slack.bot_user_id}>")
    await slack.wait_until(lambda: bool(slack_bot.bot_messages("C1", thread)))
    assert [c.params.get("thread_ts") for c in slack.calls_to("chat.postMessage")] == [thread]


async def test_slack_retry_of_the_same_event_is_not_answered_twice(
    slack_bot: SlackBot, redis_client: redis.Redis
) -> None:
    slack = slack_bot.emulator
    event = {
        "type": "app_mention",
        "channel": "C1",
        "user": "U1",
        "text": f"<@{slack.bot_user_id}>",
        "ts": "5.5",
    }
    await slack.wait_for_ack(await slack.send_event(event, event_id="Ev1"))
    await slack.wait_for_ack(
        await slack.send_event(event, event_id="Ev1", retry_attempt=1, retry_reason="timeout")
    )
    await slack.wait_until(lambda: bool(slack_bot.bot_messages("C1", "5.5")))
    await asyncio.sleep(0.5)
    assert len(slack_bot.bot_messages("C1", "5.5")) == 1


@pytest.mark.parametrize("slack_bot", [{"redis_url": "redis://127.0.0.1:1/0"}], indirect=True)
async def test_unreachable_redis_gets_a_short_reply(slack_bot: SlackBot) -> None:
    thread = await mention(slack_bot, f"<@{slack_bot.emulator.bot_user_id}> hello")
    await slack_bot.emulator.wait_until(lambda: bool(slack_bot.bot_messages("C1", thread)), timeout=40)
    [reply] = slack_bot.bot_messages("C1", thread)
    assert reply.markdown_text == messages.QUEUE_UNREACHABLE


async def test_front_end_survives_redis_outage_and_recovers(
    private_redis: PrivateRedis,
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """The front-end and a worker share a Redis this test stops and starts again."""
    async with slack_bot_running(slack_emulator, settings(redis_url=private_redis.url)) as bot:
        private_redis.stop()
        first = await mention(bot, f"<@{bot.emulator.bot_user_id}> are you there?")
        await bot.emulator.wait_until(lambda: bool(bot.bot_messages("C1", first)), timeout=40)
        assert [m.markdown_text for m in bot.bot_messages("C1", first)] == [messages.QUEUE_UNREACHABLE]

        private_redis.start()
        worker = start_worker(redis_url=private_redis.url, wait=False)
        wait_for_worker(redis.Redis.from_url(private_redis.url), worker.process, worker.log_path)
        second = await mention(bot, f"<@{bot.emulator.bot_user_id}> and now?")

        def answered() -> bool:
            replies = bot.bot_messages("C1", second)
            return len(replies) == 1 and is_final_answer(replies[0])

        await bot.emulator.wait_until(answered, timeout=60)


async def test_worker_error_reaches_the_user_as_a_short_message(
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    prompts_dir: Path,
    tmp_path: Path,
) -> None:
    """Config drift: the front-end routes to a persona the worker's prompt files do not have."""
    front_prompts = tmp_path / "front-prompts"
    (front_prompts / "personas").mkdir(parents=True)
    persona = (prompts_dir / "personas" / "default.yaml").read_text()
    (front_prompts / "personas" / "newvoice.yaml").write_text(persona)
    (front_prompts / "routing.yaml").write_text("default_persona: newvoice\n")
    start_worker()
    async with slack_bot_running(slack_emulator, settings(prompts_dir=front_prompts)) as bot:
        thread = await mention(bot, f"<@{bot.emulator.bot_user_id}> hi")

        def finished() -> bool:
            texts = [visible(m) for m in bot.bot_messages("C1", thread)]
            return texts == [messages.PERSONA_UNAVAILABLE]

        await bot.emulator.wait_until(finished, timeout=30)
