"""Who may ask where, how often and how much: refusals are short, kind and seen only by the asker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import redis

from bots.access import AccessRules, RateLimit
from bots.slack import run_slack
from brandbot import messages
from brandbot.emulators.slack import SlackEmulator
from brandbot.settings import Settings
from tests.slack_fixtures import MODEL_QUEUE, answer_with, front_end_settings, scripted_worker, slack_running

ANSWER = "Allowed, so answered."


async def test_blocked_people_and_channels_are_refused_privately_and_nothing_is_queued(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    rules = AccessRules(block_users=["U6"], block_channels=["C6"])
    async with slack_running(slack, settings(), rules=rules) as bot:
        blocked_user = await bot.mention("C1", "U6", "hi")
        blocked_channel = await bot.mention("C6", "U1", "hi")
        await slack.wait_until(lambda: len(slack.ephemerals) == 2)

    assert {(e.recipient, e.channel, e.text) for e in slack.ephemerals} == {
        ("U6", "C1", messages.NOT_ALLOWED),
        ("U1", "C6", messages.NOT_ALLOWED),
    }
    assert not bot.bot_messages("C1", blocked_user.ts) and not bot.bot_messages("C6", blocked_channel.ts)
    assert redis_client.llen(MODEL_QUEUE) == 0 and not slack.calls_to("chat.postMessage")


async def test_allow_lists_admit_only_the_listed_people_and_channels(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    slack = slack_emulator
    base = settings()
    rules = AccessRules(allow_users=["U1"], allow_channels=["C1"])
    async with (
        slack_running(slack, base, rules=rules) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER)) as taken,
    ):
        await bot.mention("C1", "U2", "not on the list")
        await bot.mention("C2", "U1", "not here")
        allowed = await bot.mention("C1", "U1", "listed, in a listed channel")
        await bot.wait_for_answer("C1", allowed.ts)
        # The rules are read for every question: an admin's edit applies without a restart.
        bot.rules[0] = AccessRules(allow_users=["U1", "U2"], allow_channels=["C1"])
        now_allowed = await bot.mention("C1", "U2", "and now?")
        await bot.wait_for_answer("C1", now_allowed.ts)

    assert [r.user.id for r in taken] == ["U1", "U2"]
    assert sorted(e.recipient or "" for e in slack.ephemerals) == ["U1", "U2"]


async def test_direct_messages_can_be_switched_off(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    async with slack_running(slack, settings(), rules=AccessRules(direct_messages=False)):
        _question, envelope = await slack.send_user_message(
            channel="D1", user="U1", text="psst, a question", channel_type="im"
        )
        await slack.wait_for_ack(envelope)
        await slack.wait_until(lambda: bool(slack.ephemerals))

    [refusal] = slack.ephemerals
    assert (refusal.recipient, refusal.text) == ("U1", messages.SLACK_DIRECT_MESSAGES_OFF)
    assert redis_client.llen(MODEL_QUEUE) == 0


async def test_asking_too_fast_is_refused_politely_once_per_wait(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    rules = AccessRules(rate_limit=RateLimit(questions_per_minute=1, burst=2))
    async with slack_running(slack, settings(), rules=rules) as bot:
        for i in range(5):
            await bot.mention("C1", "U1", f"question {i}")
        await bot.mention("C1", "U2", "someone else is not limited by U1")
        await slack.wait_until(lambda: redis_client.llen(MODEL_QUEUE) == 3 and len(slack.ephemerals) == 1)
        await slack.wait_until(lambda: len(slack.calls_to("chat.postMessage")) == 3)

    [notice] = slack.ephemerals
    assert notice.recipient == "U1"
    assert notice.text.startswith("You're asking faster than I can keep up. Please wait ")


async def test_too_long_a_question_gets_a_notice_with_the_limit(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    async with slack_running(slack, settings(), rules=AccessRules(max_question_chars=40)) as bot:
        await bot.mention("C1", "U1", "x" * 41)
        await slack.wait_until(lambda: bool(slack.ephemerals))

    [notice] = slack.ephemerals
    assert notice.text == messages.TOO_LONG.format(length=41, limit=40)
    assert redis_client.llen(MODEL_QUEUE) == 0


async def test_the_slack_command_reads_access_rules_from_routing_yaml_and_follows_edits(
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    prompts_dir: Path,
    redis_client: redis.Redis,
) -> None:
    """`brandbot slack`'s own entry point: `slack.access` in routing.yaml, hot-reloaded without a restart."""
    slack = slack_emulator
    routing = prompts_dir / "routing.yaml"
    routing.write_text("default_persona: default\nslack:\n  access:\n    block_users: [U6]\n")
    serving = asyncio.create_task(run_slack(front_end_settings(slack, settings())))

    async def ask() -> str:
        """U6 asks; returns what happened: refused (privately) or queued."""
        refusals, queued = len(slack.ephemerals), redis_client.llen(MODEL_QUEUE)
        _question, envelope = await slack.send_user_message(
            channel="C1", user="U6", text=f"<@{slack.bot_user_id}> hi", event_type="app_mention"
        )
        await slack.wait_for_ack(envelope)
        await slack.wait_until(
            lambda: len(slack.ephemerals) > refusals or redis_client.llen(MODEL_QUEUE) > queued
        )
        return "queued" if redis_client.llen(MODEL_QUEUE) > queued else "refused"

    try:
        await slack.wait_for_client()
        assert await ask() == "refused"
        routing.write_text("default_persona: default\nslack:\n  access:\n    block_users: []\n")
        outcomes = [await ask()]
        while outcomes[-1] == "refused" and len(outcomes) < 20:  # until the watcher has reloaded the file
            await asyncio.sleep(0.5)
            outcomes.append(await ask())
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving

    assert outcomes[-1] == "queued"
    assert all(e.recipient == "U6" and e.text == messages.NOT_ALLOWED for e in slack.ephemerals)
