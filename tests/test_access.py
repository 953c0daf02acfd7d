"""Allow/block lists and the per-user token bucket shared through Redis."""

from __future__ import annotations

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
