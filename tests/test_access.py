"""Allow/block lists and the per-user token bucket shared through Redis."""

from __future__ import annotations

from dataclasses import replace

import pytest
import redis.asyncio

from bots.access import AccessRules, Asker, RateLimit, RateLimiter, Refusal, check_access, is_admin
from tests.conftest import TEST_REDIS_URL


def test_empty_rules_allow_everyone() -> None:
    assert check_access(AccessRules(), Asker(user_id="U1", channel_id="C1")) is None


def test_block_lists_win_over_allow_lists() -> None:
    rules = AccessRules(allow_users=["U1"], block_users=["U1"])
    assert check_access(rules, Asker(user_id="U1", channel_id="C1")) is Refusal.USER


def test_allow_lists_keep_everyone_else_out() -> None:
    rules = AccessRules(allow_channels=["C1"], allow_guilds=["G1"], allow_roles=["R1"])
    assert check_access(rules, Asker(user_id="U", channel_id="C2")) is Refusal.CHANNEL
    assert check_access(rules, Asker(user_id="U", channel_id="C1", guild_id="G2")) is Refusal.GUILD
    assert (
        check_access(rules, Asker(user_id="U", channel_id="C1", guild_id="G1", role_ids=("R2",)))
        is Refusal.ROLE
    )
    assert check_access(rules, Asker(user_id="U", channel_id="C1", guild_id="G1", role_ids=("R1",))) is None


def test_blocked_role_and_direct_messages_switch() -> None:
    rules = AccessRules(block_roles=["R9"], direct_messages=False)
    assert (
        check_access(rules, Asker(user_id="U", channel_id="C", guild_id="G", role_ids=("R9",)))
        is Refusal.ROLE
    )
    assert (
        check_access(rules, Asker(user_id="U", channel_id="D1", is_direct_message=True))
        is Refusal.DIRECT_MESSAGES
    )


# ---------------------------------------------------------------- direct messages, workspaces, outsiders
DM = Asker(user_id="U", channel_id="D1", is_direct_message=True)


@pytest.mark.parametrize(
    "rules",
    [
        AccessRules(allow_roles=["R1"]),
        AccessRules(block_roles=["R9"]),
        AccessRules(allow_guilds=["G1"]),
        AccessRules(block_guilds=["G9"]),
        AccessRules(allow_channels=["C1"]),
    ],
    ids=["allow_roles", "block_roles", "allow_guilds", "block_guilds", "allow_channels"],
)
def test_a_dm_cannot_prove_a_role_server_or_channel_so_it_is_refused_while_such_rules_exist(
    rules: AccessRules,
) -> None:
    assert check_access(rules, DM) is Refusal.DIRECT_MESSAGES
    # The admin may still choose to answer DMs: then only the rules about people apply there.
    answered = rules.model_copy(update={"direct_messages": True})
    assert check_access(answered, DM) is None


def test_dms_are_answered_by_default_only_while_nothing_limits_places() -> None:
    assert check_access(AccessRules(), DM) is None
    assert check_access(AccessRules(block_channels=["C9"], block_users=["U9"]), DM) is None
    assert check_access(AccessRules(direct_messages=False), DM) is Refusal.DIRECT_MESSAGES


def test_rules_about_people_hold_in_dms_too() -> None:
    everyone_dms = AccessRules(direct_messages=True, block_users=["U"])
    assert check_access(everyone_dms, DM) is Refusal.USER
    assert check_access(AccessRules(direct_messages=True, allow_users=["U2"]), DM) is Refusal.USER


def test_slack_workspaces_are_allowed_or_blocked_in_channels_and_dms() -> None:
    rules = AccessRules(allow_teams=["T1"])
    for where in (Asker(user_id="U", channel_id="C1"), DM):
        assert check_access(rules, replace(where, team_id="T1")) is None
        assert check_access(rules, replace(where, team_id="T2")) is Refusal.TEAM
        assert check_access(rules, where) is Refusal.TEAM  # a workspace Slack did not name proves nothing
        assert check_access(AccessRules(block_teams=["T2"]), replace(where, team_id="T2")) is Refusal.TEAM


def test_external_people_are_refused_unless_allowed_and_then_team_rules_still_apply() -> None:
    outsider = Asker(user_id="U", channel_id="C1", team_id="TPARTNER", is_external=True)
    assert check_access(AccessRules(), outsider) is Refusal.EXTERNAL
    assert check_access(AccessRules(), replace(outsider, channel_id="D1", is_direct_message=True)) is (
        Refusal.EXTERNAL
    )
    assert check_access(AccessRules(allow_external_users=True), outsider) is None
    partners_only = AccessRules(allow_external_users=True, allow_teams=["THOME", "TPARTNER"])
    assert check_access(partners_only, outsider) is None
    assert check_access(partners_only, replace(outsider, team_id="TOTHER")) is Refusal.TEAM


def test_admins_are_named_explicitly() -> None:
    rules = AccessRules(admins=["U1"])
    assert is_admin(rules, "U1") and not is_admin(rules, "U2")


async def test_token_bucket_allows_a_burst_then_asks_to_wait(redis_client: object) -> None:
    connection = redis.asyncio.Redis.from_url(TEST_REDIS_URL)
    limiter = RateLimiter(connection)
    limit = RateLimit(questions_per_minute=6, burst=3)
    waits = [await limiter.acquire("slack", "U1", limit) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0 < waits[3] <= 10.0
    assert await limiter.acquire("slack", "U2", limit) == 0.0, "buckets are per user"
    await connection.aclose()


async def test_bucket_is_shared_by_every_front_end(redis_client: object) -> None:
    first, second = (redis.asyncio.Redis.from_url(TEST_REDIS_URL) for _ in range(2))
    limit = RateLimit(questions_per_minute=1, burst=1)
    assert await RateLimiter(first).acquire("discord", "U1", limit) == 0.0
    assert await RateLimiter(second).acquire("discord", "U1", limit) > 0.0
    await first.aclose()
    await second.aclose()
