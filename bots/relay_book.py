"""Answers this front-end is relaying, recorded so that another (or a restarted) process finishes them.

Each answer has an in-flight record (`bots.inflight.InflightRequests`: where it is shown, never its text)
and a short lease that its relaying process keeps renewing. A record whose lease lapsed belongs to a
process that stopped; any front-end of the same platform sharing the Redis claims it and renders the reply
stream again from the top into the same messages. A clean shutdown releases its leases, so a restart
resumes at once.

The lease is also a fence: a renewal that finds the lease gone or taken by another process (this one
stalled past `LEASE_SECONDS`) drops the answer from `held`, and `holds()` turns False, so the relay stops
before it writes into a chat another process now owns.

A question is marked seen and recorded in one step (`take`): a crash can leave neither a question that is
seen but has no record (no retry would revive it, "Thinking…" forever) nor a record without its lease.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio

from bots.inflight import InflightRequests
from bots.script_batch import ScriptBatcher
from brandbot import keys
from brandbot.errors import QueueUnavailable
from brandbot.logs import get_logger
from brandbot.streams import REDIS_OUTAGE

LEASE_SECONDS = 20
"""A relaying process renews its leases well within this; a crashed one's answers resume after it."""

HOUSEKEEPING_SECONDS = LEASE_SECONDS / 4
"""How often leases are renewed and answers of stopped processes are looked for."""

SEEN_SECONDS = 3600
"""An event or message id is remembered this long: Slack retries for minutes and replays after reconnects."""

REDIS_ERRORS = (*REDIS_OUTAGE, QueueUnavailable)

log = get_logger(__name__)

# Renew a lease while this process still holds it. A lease that lapsed (this process was too busy to
# renew it in time) and that no other process took is taken back while the answer's record is still there:
# nobody else relays it. KEYS: lease, record. ARGV: owner, lease ttl.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if not holder and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""
# Claim an answer no live process relays: its lease, only while its record is there (a record removed
# because its answer finished must not be claimed and relayed again). KEYS: lease, record. ARGV: owner,
# lease ttl. Returns the record as it is now, or nil.
_CLAIM = """
local record = redis.call('GET', KEYS[2])
if not record then return false end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return record end
return false
"""
# Release a lease only while this process still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: the seen markers, then lease, record, index. ARGV: seen ttl, owner, lease ttl, record (JSON, or ""
# to only mark seen), retention, request id, the record's expiry time. 0 if any marker was set before.
_TAKE = """
local seen = #KEYS - 3
for i = 1, seen do
  local taker = redis.call('GET', KEYS[i])
  if taker and taker ~= ARGV[6] then return 0 end
end
for i = 1, seen do redis.call('SET', KEYS[i], ARGV[6], 'EX', ARGV[1]) end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[seen + 1], ARGV[2], 'EX', ARGV[3])
  redis.call('SET', KEYS[seen + 2], ARGV[4], 'EX', ARGV[5])
  redis.call('ZADD', KEYS[seen + 3], ARGV[7], ARGV[6])
  redis.call('EXPIRE', KEYS[seen + 3], ARGV[5])
end
return 1
"""


class RelayBook:
    """In-flight records plus the leases that say which process is relaying each one."""

    def __init__(
        self,
        connection: redis.asyncio.Redis,
        *,
        platform: str,
        retention_seconds: int,
        scripts: ScriptBatcher | None = None,
    ) -> None:
        self._redis = connection
        self._scripts = scripts or ScriptBatcher(connection)  # intake's take, batched across a burst
        self._platform = platform
        self._records = InflightRequests(
            connection, platform=platform, retention_seconds=retention_seconds, scripts=self._scripts
        )
        self._owner = uuid.uuid4().hex  # this process
        self._renew = connection.register_script(_RENEW)
        self._claim = connection.register_script(_CLAIM)
        self._release = connection.register_script(_RELEASE)
        self._take = connection.register_script(_TAKE)
        self.held: set[str] = set()

    def _lease(self, request_id: str) -> str:
        return keys.relay_lease(self._platform, request_id)

    async def first_sight(self, event_ids: tuple[str, ...], request_id: str) -> bool:
        """Mark a question's ids seen; False if any was seen before (a retry, replay or twin).

        Seen by `request_id` means this intake: trying again after a lost reply still counts as the first.
        """
        return await self._mark(event_ids, request_id=request_id, state=None)

    async def take(self, event_ids: tuple[str, ...], request_id: str, state: dict[str, Any]) -> bool:
        """Mark a question seen, record its answer and lease it, all at once; False if seen before
        (by another intake than this `request_id`'s: repeating a try whose reply was lost is safe)."""
        return await self._mark(event_ids, request_id=request_id, state=state)

    async def _mark(
        self, event_ids: tuple[str, ...], *, request_id: str, state: dict[str, Any] | None
    ) -> bool:
        seen = [keys.seen_event(self._platform, event_id) for event_id in event_ids]
        record = "" if state is None else self._records.encode(state)
        retention = self._records.retention_seconds
        taken = await self._scripts.call(
            self._take,
            keys=[*seen, self._lease(request_id), self._records.key(request_id), self._records.index],
            args=[
                SEEN_SECONDS,
                self._owner,
                LEASE_SECONDS,
                record,
                retention,
                request_id,
                time.time() + retention,
            ],
        )
        if taken and state is not None:
            self.held.add(request_id)
        return bool(taken)

    async def claim(self, request_id: str) -> dict[str, Any] | None:
        """Take the lease of an answer and return its record as it is now; None if a live process holds
        it or it finished (its record is gone)."""
        record = await self._claim(
            keys=[self._lease(request_id), self._records.key(request_id)], args=[self._owner, LEASE_SECONDS]
        )
        if record is None:
            return None
        self.held.add(request_id)
        return self._records.decode(record)

    def holds(self, request_id: str) -> bool:
        """Whether this process still relays the answer (False once a renewal found its lease lost)."""
        return request_id in self.held

    async def record(self, request_id: str, state: dict[str, Any]) -> None:
        if request_id in self.held:  # a process that lost the lease must not overwrite the new owner's record
            await self._records.save(request_id, state)

    async def finish(self, request_id: str) -> None:
        """The answer is complete (or abandoned for good): forget it."""
        if request_id in self.held:
            await self._records.remove(request_id)
        await self.release(request_id)

    async def forget(self, request_id: str) -> None:
        """A question taken in but not to be answered after all (rate limit, outage): no record, no lease.

        Also when `take` may or may not have run (a timeout): the id is new, so no other process has it.
        """
        await self._records.remove(request_id)
        await self.release(request_id)

    async def release(self, request_id: str) -> None:
        """Stop relaying but keep the record, so another process picks the answer up."""
        self.held.discard(request_id)
        await self._release(keys=[self._lease(request_id)], args=[self._owner])

    async def renew(self) -> list[str]:
        """Renew every lease this process holds; returns the answers whose lease was lost (fenced off).

        One round trip for them all: a thousand answers renewed one by one on a busy event loop took
        longer than a lease lives, and the leases at the end of the list lapsed.
        """
        lost = []
        held = list(self.held)
        async with self._redis.pipeline(transaction=False) as pipeline:
            for request_id in held:
                await self._renew(
                    keys=[self._lease(request_id), self._records.key(request_id)],
                    args=[self._owner, LEASE_SECONDS],
                    client=pipeline,
                )
            results = await pipeline.execute()
        for request_id, renewed in zip(held, results, strict=True):
            if not renewed and request_id in self.held:
                self.held.discard(request_id)
                lost.append(request_id)
                log.warning("relay lease lost, another process relays the answer", request_id=request_id)
        return lost

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
        for request_id in await self._records.all():
            # The list is a snapshot: by the time one is claimed it may have finished, or changed.
            if request_id not in self.held and (state := await self.claim(request_id)) is not None:
                claimed.append((request_id, state))
        return claimed
