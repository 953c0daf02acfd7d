"""Who may ask where, and how often: allow/block lists, admins, and a per-user token bucket in Redis.

The rules are admin configuration (`slack.access` / `discord.access` in `prompts/routing.yaml`, modelled in
`brandbot.promptfiles.access`); both platforms share this logic. Block lists win over allow lists; an empty
allow list allows everyone. A direct message cannot prove a channel, server or role, so it is refused
while rules about those exist, unless `direct_messages: true` says the admin wants DMs answered anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

import redis.asyncio

from bots.script_batch import ScriptBatcher
from brandbot import keys
from brandbot.promptfiles.access import AccessRules, RateLimit

__all__ = ["AccessRules", "Asker", "RateLimit", "RateLimiter", "Refusal", "check_access", "is_admin"]


class Refusal(StrEnum):
    USER = "user"
    TEAM = "team"
    EXTERNAL = "external"
    CHANNEL = "channel"
    GUILD = "guild"
    ROLE = "role"
    DIRECT_MESSAGES = "direct_messages"


@dataclass(frozen=True)
class Asker:
    """Who asks, and where, as the platform event shows it."""

    user_id: str
    channel_id: str
    guild_id: str | None = None
    role_ids: tuple[str, ...] = ()
    is_direct_message: bool = False
    team_id: str | None = None
    """Slack: the asker's own workspace (`user_team`), which differs from the app's for external people."""
    is_external: bool = False
    """Slack: the asker belongs to another workspace than the app's (Slack Connect)."""


def _listed(value: str | None, allow: list[str], block: list[str]) -> bool:
    """Not blocked, and allowed; an unknown value (None) passes only where nothing is allow-listed."""
    if value is not None and value in block:
        return False
    return not allow or value in allow


def check_access(rules: AccessRules, asker: Asker) -> Refusal | None:
    """None when the asker may ask here; otherwise what refused them (for logs, not for the user).

    Who the person is (user, workspace, external) is checked everywhere. A DM then passes or fails as a
    whole (`AccessRules.answers_direct_messages`): it has no channel, server or role to check."""
    if not _listed(asker.user_id, rules.allow_users, rules.block_users):
        return Refusal.USER
    if asker.is_external and not rules.allow_external_users:
        return Refusal.EXTERNAL
    if not _listed(asker.team_id, rules.allow_teams, rules.block_teams):
        return Refusal.TEAM
    if asker.is_direct_message:
        return None if rules.answers_direct_messages else Refusal.DIRECT_MESSAGES
    if not _listed(asker.channel_id, rules.allow_channels, rules.block_channels):
        return Refusal.CHANNEL
    if asker.guild_id is not None and not _listed(asker.guild_id, rules.allow_guilds, rules.block_guilds):
        return Refusal.GUILD
    if any(role in rules.block_roles for role in asker.role_ids):
        return Refusal.ROLE
    if rules.allow_roles and asker.guild_id is not None and not set(asker.role_ids) & set(rules.allow_roles):
        return Refusal.ROLE
    return None


def is_admin(rules: AccessRules, user_id: str) -> bool:
    return user_id in rules.admins


# Token bucket in one round trip, atomic across every front-end replica sharing this Redis. KEYS: the
# bucket, then optionally a guard key; ARGV: rate, burst, now, then the guard's value. Not charged (allowed)
# when the guard key holds another value.
_TOKEN_BUCKET = """
if #KEYS > 1 and redis.call('GET', KEYS[2]) ~= ARGV[4] then return {1, '0'} end
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or ARGV[2])
local updated = tonumber(redis.call('HGET', KEYS[1], 'updated') or ARGV[3])
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'updated', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(wait)}
"""


class RateLimiter:
    """Per-user token bucket shared by all front-ends through Redis."""

    def __init__(self, connection: redis.asyncio.Redis, *, scripts: ScriptBatcher | None = None) -> None:
        self._script = connection.register_script(_TOKEN_BUCKET)
        self._scripts = scripts or ScriptBatcher(connection)  # one pipeline for a burst's questions

    async def acquire(
        self, platform: str, user_id: str, limit: RateLimit, *, charge_if: tuple[str, str] | None = None
    ) -> float:
        """0 when the user may ask now; otherwise the seconds until they may.

        With `charge_if=(key, value)` the question is charged only if `key` holds `value` when the script
        runs: sent in the same pipeline right after the intake's take, a retry another intake took is not
        charged.
        """
        rate = limit.questions_per_minute / 60
        bucket = f"{keys.KEY_PREFIX}:ratelimit:{platform}:{user_id}"
        guard_keys, guard_args = ([charge_if[0]], [charge_if[1]]) if charge_if else ([], [])
        allowed, wait = await self._scripts.call(
            self._script, keys=[bucket, *guard_keys], args=[rate, limit.burst, time.time(), *guard_args]
        )
        return 0.0 if int(allowed) else float(wait)
