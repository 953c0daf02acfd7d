"""Who may ask, how often and how much — and model output that can never ping anyone."""

# ruff: noqa: F811 (test arguments are the imported fixtures, by pytest's design)

from __future__ import annotations

import re
from typing import Any

import pytest
import redis

from bots.access import AccessRules, RateLimit
from brandbot import messages
from tests.discord_fixtures import (  # noqa: F401 (fixtures by name)
    ALICE,
    BOB,
    CAROL,
    GENERAL,
    GUILD_ID,
    MEMBER_ROLE,
    MUTED_ROLE,
    OPEN_RULES,
    RANDOM,
    RQ_QUEUE,
    THREAD,
    RunningBot,
    ScriptedWorker,
    discord_bot,
    discord_emulator,
    pings_nobody,
    scripted_worker,
)

JSON = dict[str, Any]

# (rules, where Alice asks, who may still ask there): Alice is a member, Bob is muted, Carol a member.
REFUSALS = {
    "blocked user": (AccessRules(block_users=[ALICE["id"]]), GENERAL, BOB),
    "not an allowed user": (AccessRules(allow_users=[BOB["id"]]), GENERAL, BOB),
    "blocked channel": (AccessRules(block_channels=[str(GENERAL)]), GENERAL, None),
    "thread of a blocked channel": (AccessRules(block_channels=[str(GENERAL)]), THREAD, None),
    "blocked thread": (AccessRules(block_channels=[str(THREAD)]), THREAD, None),
    "not an allowed channel": (AccessRules(allow_channels=[str(RANDOM)]), GENERAL, None),
    "blocked server": (AccessRules(block_guilds=[str(GUILD_ID)]), GENERAL, None),
    "not an allowed server": (AccessRules(allow_guilds=["1234"]), GENERAL, None),
    "blocked role": (AccessRules(block_roles=[str(MEMBER_ROLE)]), GENERAL, BOB),
    "no allowed role": (AccessRules(allow_roles=[str(MUTED_ROLE)]), GENERAL, BOB),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_refused_askers_are_told_and_nothing_is_queued(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis, case: str
) -> None:
    rules, channel_id, allowed = REFUSALS[case]
    discord_bot.rules = rules.model_copy(update={"rate_limit": OPEN_RULES.rate_limit})

    token = await discord_bot.ask("may I?", channel_id=channel_id)
    assert await discord_bot.ephemeral_reply(token) == messages.NOT_ALLOWED
    await discord_bot.mention("may I?", channel_id=channel_id)
    [refusal] = await discord_bot.emulator.wait_until(lambda: discord_bot.messages_in(channel_id))
    assert refusal["content"] == messages.NOT_ALLOWED and pings_nobody(refusal)
    assert redis_client.llen(RQ_QUEUE) == 0

    if allowed is not None:  # the same rules let someone else ask
        await discord_bot.ask("may I?", user=allowed, channel_id=channel_id)
        assert (await scripted_worker.take()).user.id == allowed["id"]


async def test_asking_too_fast_is_refused_with_the_wait_and_told_only_once(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    discord_bot.rules = AccessRules(rate_limit=RateLimit(questions_per_minute=1, burst=2))
    wait = re.compile(r"Please wait (5\d|60) seconds and try again\.$")  # a token a minute, burst used

    for _ in range(2):
        await discord_bot.ask("quick one")
        await scripted_worker.take()
    limited = await discord_bot.ephemeral_reply(await discord_bot.ask("one more"))
    assert limited.startswith("You're asking faster") and wait.search(limited)

    for _ in range(2):
        await discord_bot.mention("quick one", user=BOB)
        await scripted_worker.take()
    await discord_bot.mention("one more", user=BOB)
    await discord_bot.mention("and another", user=BOB)
    notices = await discord_bot.emulator.wait_until(
        lambda: [m for m in discord_bot.messages_in(GENERAL) if wait.search(str(m["content"]))]
    )
    assert len(notices) == 1  # a flood of mentions gets one notice, not a flood back
    assert redis_client.llen(RQ_QUEUE) == 0
    assert redis_client.exists(f"brandbot:ratelimit:discord:{ALICE['id']}")  # shared by every front-end


async def test_too_long_questions_are_refused_with_the_limit(
    discord_bot: RunningBot, redis_client: redis.Redis
) -> None:
    discord_bot.rules = OPEN_RULES.model_copy(update={"max_question_chars": 20})
    question = "please explain " * 3

    refused = await discord_bot.ephemeral_reply(await discord_bot.ask(question))
    await discord_bot.mention(question)
    [reply] = await discord_bot.emulator.wait_until(lambda: discord_bot.messages_in(GENERAL))

    expected = messages.TOO_LONG.format(length=len(question.strip()), limit=20)
    assert refused == expected and reply["content"] == expected
    assert redis_client.llen(RQ_QUEUE) == 0


async def test_model_output_never_pings_anyone(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    emulator = discord_bot.emulator
    crowd = f"@everyone @here <@{CAROL['id']}> <@&{MEMBER_ROLE}> look! "
    answer = crowd + "\n\n".join("paragraph " * 40 for _ in range(8)) + "\n\n" + crowd
    token = await discord_bot.ask("ping everyone")
    scripted_worker.answer((await scripted_worker.take()).request_id, answer)
    await discord_bot.mention("ping everyone")
    scripted_worker.answer((await scripted_worker.take()).request_id, answer)

    def all_shown() -> list[JSON] | None:
        shown = [m for m in discord_bot.messages_in(GENERAL) if str(m["content"]).endswith("look!")]
        return discord_bot.messages_in(GENERAL) if len(shown) == 2 else None

    sent = await emulator.wait_until(all_shown)
    assert len(sent) == 4 and len(emulator.followups(token)) == 1  # both answers took two messages
    assert all(pings_nobody(message) for message in sent)
    writes = [
        r
        for r in emulator.requests
        if r.method in ("POST", "PATCH") and re.search(r"/messages|/webhooks/", r.path) and r.json
    ]
    assert writes and all(r.json["allowed_mentions"]["parse"] == [] for r in writes)
