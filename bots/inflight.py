"""Requests a front-end is relaying, recorded in Redis so a restarted front-end finishes them.

A record holds only where the reply is shown (ids), never conversation text; it expires with the
retention period. On start, a front-end re-reads each recorded request's reply stream from the top and
renders it into the same messages, so the user sees one answer, finished.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio

from brandbot import keys


class InflightRequests:
    def __init__(self, connection: redis.asyncio.Redis, *, platform: str, retention_seconds: int) -> None:
        self._redis = connection
        self._key = keys.inflight(platform)
        self._retention = retention_seconds

    async def save(self, request_id: str, state: dict[str, Any]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key, request_id, json.dumps(state))
            pipe.expire(self._key, self._retention)
            await pipe.execute()

    async def remove(self, request_id: str) -> None:
        await self._redis.hdel(self._key, request_id)

    async def all(self) -> dict[str, dict[str, Any]]:
        raw: Any = await self._redis.hgetall(self._key)
        return {keys.as_text(request_id): json.loads(state) for request_id, state in raw.items()}
