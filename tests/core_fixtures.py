"""Helpers for tests of the conversation core (`bots.conversation`): what it keeps in Redis."""

from __future__ import annotations

import json
import re
from typing import Any

import redis

from bots.relay import STREAMING_CURSOR
from brandbot import keys


def inflight_records(client: redis.Redis, platform: str) -> int:
    """How many answers of `platform` have an in-flight record (one key each)."""
    return sum(1 for _ in client.scan_iter(match=keys.inflight_record(platform, "*")))


def recorded_sinks(client: redis.Redis, platform: str) -> list[dict[str, Any]]:
    """Where each in-flight answer of `platform` is shown, as its record says (what a restart adopts)."""
    found = [client.get(key) for key in client.scan_iter(match=keys.inflight_record(platform, "*"))]
    return [json.loads(value)["sink"] for value in found if value is not None]


CLOSING_FENCE = re.compile(r"\n`{3,}\Z")


def shows_cursor(text: str) -> bool:
    """An answer still being written: its cursor ends the text, or the fence a split part closes after it."""
    return CLOSING_FENCE.sub("", text).endswith(STREAMING_CURSOR)
