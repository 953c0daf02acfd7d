"""Helpers for tests of the conversation core (`bots.conversation`): what it keeps in Redis."""

from __future__ import annotations

import redis

from brandbot import keys


def inflight_records(client: redis.Redis, platform: str) -> int:
    """How many answers of `platform` have an in-flight record (one key each)."""
    return sum(1 for _ in client.scan_iter(match=keys.inflight_record(platform, "*")))
