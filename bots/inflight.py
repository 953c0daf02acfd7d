"""Requests a front-end is relaying, recorded in Redis so a restarted front-end finishes them.

Each record is a key of its own (`keys.inflight_record`) holding only where the reply is shown (ids, and
a Discord interaction's token), never conversation text, and it expires with the retention period. An
index (`keys.inflight_index`, scored by each record's expiry) lists them without a SCAN; members whose
record expired are pruned when the index is read.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio

from bots.script_batch import ScriptBatcher
from brandbot import keys
from brandbot.logs import get_logger

log = get_logger(__name__)

# Write a record and list it in the index, at once. KEYS: record, index. ARGV: the record (JSON), retention,
# the record's expiry time, request id.
_SAVE = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


class InflightRequests:
    def __init__(
        self,
        connection: redis.asyncio.Redis,
        *,
        platform: str,
        retention_seconds: int,
        scripts: ScriptBatcher | None = None,
    ) -> None:
        self._redis = connection
        self._platform = platform
        self._index = keys.inflight_index(platform)
        self._retention = retention_seconds
        self._save = connection.register_script(_SAVE)
        # A burst's placeholders change hundreds of records at once: their saves share pipelines.
        self._scripts = scripts or ScriptBatcher(connection)

    def key(self, request_id: str) -> str:
        return keys.inflight_record(self._platform, request_id)

    def encode(self, state: dict[str, Any]) -> str:
        return json.dumps(state)

    @property
    def index(self) -> str:
        return self._index

    @property
    def retention_seconds(self) -> int:
        return self._retention

    async def save(self, request_id: str, state: dict[str, Any]) -> None:
        await self._scripts.call(
            self._save,
            keys=[self.key(request_id), self._index],
            args=[self.encode(state), self._retention, time.time() + self._retention, request_id],
        )

    async def remove(self, request_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.key(request_id))
            pipe.zrem(self._index, request_id)
            await pipe.execute()

    async def all(self) -> dict[str, dict[str, Any]]:
        """Every live record, by request id; an unreadable one comes back empty (the caller drops it)."""
        await self._redis.zremrangebyscore(self._index, "-inf", time.time())
        request_ids = [keys.as_text(member) for member in await self._redis.zrange(self._index, 0, -1)]
        if not request_ids:
            return {}
        raw: list[Any] = await self._redis.mget([self.key(request_id) for request_id in request_ids])
        records: dict[str, dict[str, Any]] = {}
        for request_id, value in zip(request_ids, raw, strict=True):
            if value is None:
                await self._redis.zrem(self._index, request_id)  # expired or finished meanwhile
                continue
            records[request_id] = self.decode(value)
        return records

    @staticmethod
    def decode(value: str | bytes) -> dict[str, Any]:
        """A record's state; an unreadable one comes back empty (the caller drops it)."""
        try:
            state = json.loads(value)
        except ValueError:
            return {}
        return state if isinstance(state, dict) else {}
