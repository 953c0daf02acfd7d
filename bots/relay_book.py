"""Answers this front-end is relaying, recorded so that another (or a restarted) process finishes them.

Each answer has an in-flight record (`bots.inflight.InflightRequests`: where it is shown, never its text)
and a short lease that its relaying process keeps renewing. A record whose lease lapsed belongs to a
process that stopped; any front-end of the same platform sharing the Redis claims it and renders the reply
stream again from the top into the same messages. A clean shutdown releases its leases, so a restart
resumes at once. Both platforms use this one book.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio

from bots.inflight import InflightRequests
from brandbot import keys
from brandbot.errors import QueueUnavailable
from brandbot.logs import get_logger

LEASE_SECONDS = 20
"""A relaying process renews its leases well within this; a crashed one's answers resume after it."""

HOUSEKEEPING_SECONDS = LEASE_SECONDS / 4
"""How often leases are renewed and answers of stopped processes are looked for."""

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, QueueUnavailable)

log = get_logger(__name__)

# Renew or release a lease only while this process still holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RelayBook:
    """In-flight records plus the leases that say which process is relaying each one."""

    def __init__(self, connection: redis.asyncio.Redis, *, platform: str, retention_seconds: int) -> None:
        self._redis = connection
        self._platform = platform
        self._records = InflightRequests(connection, platform=platform, retention_seconds=retention_seconds)
        self._owner = uuid.uuid4().hex  # this process
        self._renew = connection.register_script(_RENEW)
        self._release = connection.register_script(_RELEASE)
        self.held: set[str] = set()

    async def claim(self, request_id: str) -> bool:
        """Take the lease of an answer; False if a live process holds it."""
        taken = await self._redis.set(
            keys.relay_lease(self._platform, request_id), self._owner, nx=True, ex=LEASE_SECONDS
        )
        if taken:
            self.held.add(request_id)
        return bool(taken)

    async def record(self, request_id: str, state: dict[str, Any]) -> None:
        await self._records.save(request_id, state)

    async def finish(self, request_id: str) -> None:
        """The answer is complete (or abandoned for good): forget it."""
        await self._records.remove(request_id)
        await self.release(request_id)

    async def release(self, request_id: str) -> None:
        """Stop relaying but keep the record, so another process picks the answer up."""
        self.held.discard(request_id)
        await self._release(keys=[keys.relay_lease(self._platform, request_id)], args=[self._owner])

    async def renew(self) -> None:
        for request_id in list(self.held):
            await self._renew(
                keys=[keys.relay_lease(self._platform, request_id)], args=[self._owner, LEASE_SECONDS]
            )

    async def keep_relaying(self, resume_orphans: Callable[[], Awaitable[object]]) -> None:
        """Forever: keep this process's leases and take over the answers of processes that stopped."""
        while True:
            try:
                await self.renew()
                await resume_orphans()
            except REDIS_ERRORS:
                log.warning("redis unreachable, in-flight answers not checked")
            await asyncio.sleep(HOUSEKEEPING_SECONDS)

    async def orphans(self) -> list[tuple[str, dict[str, Any]]]:
        """Records no live process is relaying, each now claimed by this one."""
        claimed = []
        for request_id, state in (await self._records.all()).items():
            if request_id not in self.held and await self.claim(request_id):
                claimed.append((request_id, state))
        return claimed
