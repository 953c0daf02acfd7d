"""A DM cannot prove a server role: while roles gate the bot, DMs are refused unless the admin opts in."""

# ruff: noqa: F811 (test arguments are the imported fixtures, by pytest's design)

from __future__ import annotations

import redis

from brandbot import messages
from tests.discord_fixtures import (  # noqa: F401 (fixtures by name)
    ALICE,
    BOB,
    GENERAL,
    MEMBER_ROLE,
    OPEN_RULES,
    RQ_QUEUE,
    RunningBot,
    ScriptedWorker,
    add_dm,
    discord_bot,
    discord_emulator,
    pings_nobody,
    scripted_worker,
)


async def test_a_dm_is_refused_while_allow_roles_gates_the_server(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    emulator = discord_bot.emulator
    members_only = OPEN_RULES.model_copy(update={"allow_roles": [str(MEMBER_ROLE)]})
    discord_bot.rules = members_only
    bobs_dm = add_dm(emulator, BOB)  # Bob is muted: no member role

    await emulator.send_message(channel_id=bobs_dm, author=BOB, content="can you help me anyway?")
    [refusal] = await emulator.wait_until(lambda: discord_bot.messages_in(bobs_dm))
    assert refusal["content"] == messages.NOT_ALLOWED and pings_nobody(refusal)
    assert redis_client.llen(RQ_QUEUE) == 0

    # In the server, the role is checked and a member is answered as before.
    await discord_bot.mention("can you help me?", user=ALICE, channel_id=GENERAL)
    assert (await scripted_worker.take()).user.id == ALICE["id"]

    # An admin who wants DMs answered anyway says so; then only the rules about people apply there.
    discord_bot.rules = members_only.model_copy(update={"direct_messages": True})
    await emulator.send_message(channel_id=bobs_dm, author=BOB, content="and now?")
    assert (await scripted_worker.take()).user.id == BOB["id"]


async def test_a_dm_from_a_blocked_person_is_refused_even_where_dms_are_on(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    emulator = discord_bot.emulator
    discord_bot.rules = OPEN_RULES.model_copy(update={"direct_messages": True, "block_users": [BOB["id"]]})
    bobs_dm = add_dm(emulator, BOB)
    await emulator.send_message(channel_id=bobs_dm, author=BOB, content="hello?")
    [refusal] = await emulator.wait_until(lambda: discord_bot.messages_in(bobs_dm))
    assert refusal["content"] == messages.NOT_ALLOWED
    assert redis_client.llen(RQ_QUEUE) == 0
