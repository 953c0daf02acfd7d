"""One reader per process for every reply stream it follows: a few `XREAD`s over many streams at once.

Each answer being relayed registers a `Follower`; the reader hands it the entries of its stream, in
order and once each. Instead of one Redis connection blocked per answer, a few lanes (one connection
each) read all registered streams, so one process follows thousands of answers with a handful of
connections.

The reader also keeps two promises a single XREAD cannot:
- it rides out a Redis outage (a restart, a failover's `READONLY`, `OOM`) for `ride_out_seconds`,
  retrying with backoff and resuming every stream from the last entry it delivered; only then are
  the followers told Redis is unreachable;
- every `JOB_CHECK_SECONDS` it looks at the RQ job of each watched answer, for all of a lane's answers
  in one pipeline: when RQ gave up on the job (failed with no retries left, stopped, cancelled) or the
  job and its stream are gone (Redis restarted without persistence, eviction, expiry), the follower is
  told, after any entries still in the stream.

```python
streams = ReplyStreams(redis.asyncio.Redis())
async with streams.follow("req-1", watch_job=True) as follower:
    arrived = await follower.next(timeout=1.0)  # (stream id, event), or None on an idle second
await streams.close()
```
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
from pydantic import ValidationError
from rq.job import Job, JobStatus

from brandbot import keys
from brandbot.connections import REDIS_OUTAGE
from brandbot.contract import DoneEvent, ErrorEvent, ReplyEvent, StartEvent, parse_reply_event
from brandbot.errors import BrandbotError, QueueUnavailable
from brandbot.logs import get_logger

log = get_logger(__name__)

LANES = 4
"""Reader tasks per process; each holds one Redis connection while it blocks on its streams."""

BLOCK_MS = 250
"""How long one XREAD waits for news; a newly followed stream joins its lane's next read."""

ENTRIES_PER_STREAM = 20
"""At most this many entries of one stream per XREAD (a long answer is read in a few rounds)."""

JOB_CHECK_SECONDS = 3.0
"""How often the RQ jobs of followed answers are looked at (one pipelined HGET + EXISTS each)."""

RIDE_OUT_SECONDS = 30.0
"""How long the reader keeps retrying an unreachable Redis before its followers are told."""

RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0
"""Backoff between reads while Redis is unreachable: doubling from the first to the max."""


GIVEN_UP_STATUSES = frozenset({JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED, JobStatus.FINISHED})
"""Job states after which no worker will write to the stream again (a retry is QUEUED/SCHEDULED)."""


class ReplyLost(BrandbotError):
    """No worker will ever finish this answer: RQ gave up on its job, or the job and stream are gone."""

    def __init__(self, request_id: str, reason: str) -> None:
        super().__init__(f"reply {request_id} lost: {reason}")
        self.request_id = request_id
        self.reason = reason


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """Stream ids compare as (milliseconds, sequence), not as text."""
    millis, _, sequence = stream_id.partition("-")
    return int(millis), int(sequence or 0)


@dataclass(eq=False)
class Follower:
    """One answer's view of the reader: its stream's events in order, or the reason they stopped."""

    request_id: str
    last_id: str
    watch_job: bool
    stream: str = ""
    _inbox: asyncio.Queue[tuple[str, ReplyEvent] | BaseException] = field(default_factory=asyncio.Queue)
    _ended: bool = False
    _answered: bool = False

    def __post_init__(self) -> None:
        self.stream = keys.reply_stream(self.request_id)

    async def next(self, timeout: float) -> tuple[str, ReplyEvent] | None:  # noqa: ASYNC109 - the idle tick
        """The next `(stream id, event)`, or None after `timeout` seconds without one.

        Raises `QueueUnavailable` once Redis stayed unreachable past the ride-out window, and `ReplyLost`
        once no worker will write to the stream again (after every entry it holds was returned).
        """
        try:
            item = await asyncio.wait_for(self._inbox.get(), timeout)
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def deliver(self, entry_id: str, event: ReplyEvent) -> None:
        if self._ended or stream_id_key(entry_id) <= stream_id_key(self.last_id):
            return  # a second read of the same entry (after a retry, or by the job check's drain)
        self.last_id = entry_id
        if isinstance(event, StartEvent | DoneEvent | ErrorEvent):  # a new attempt clears the last one's end
            self._answered = not isinstance(event, StartEvent)
        self._inbox.put_nowait((entry_id, event))

    def end(self, error: BaseException) -> None:
        if not self._ended:
            self._ended = True
            self._inbox.put_nowait(error)

    def finish(self) -> None:
        """Nothing more will come, and its last event already says how the answer ended."""
        self._ended = True

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def answered(self) -> bool:
        """A `done` or `error` was delivered: the consumer has the answer's end."""
        return self._answered


@dataclass(eq=False)
class _Lane:
    """One reader task and the followers it reads for."""

    followers: set[Follower] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class ReplyStreams:
    """Follows many reply streams through a few connections; see the module docstring."""

    def __init__(
        self,
        connection: redis.asyncio.Redis,
        *,
        lanes: int = LANES,
        block_ms: int = BLOCK_MS,
        job_check_seconds: float = JOB_CHECK_SECONDS,
        ride_out_seconds: float = RIDE_OUT_SECONDS,
    ) -> None:
        self._redis = connection
        self._lanes = [_Lane() for _ in range(lanes)]
        self._block_ms = block_ms
        self._job_check_seconds = job_check_seconds
        self._ride_out = ride_out_seconds

    @property
    def following(self) -> int:
        return sum(len(lane.followers) for lane in self._lanes)

    @contextlib.asynccontextmanager
    async def follow(
        self, request_id: str, *, after: str = "0-0", watch_job: bool = False
    ) -> AsyncIterator[Follower]:
        """Follow `request_id`'s stream from after `after` until the block ends."""
        follower = Follower(request_id=request_id, last_id=after, watch_job=watch_job)
        lane = min(self._lanes, key=lambda candidate: len(candidate.followers))
        lane.followers.add(follower)
        if lane.task is None or lane.task.done():
            lane.task = asyncio.create_task(self._read(lane), name="brandbot-reply-streams")
        lane.wake.set()
        try:
            yield follower
        finally:
            lane.followers.discard(follower)

    async def close(self) -> None:
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
                lane.task = None

    # ------------------------------------------------------------------ the reader
    async def _read(self, lane: _Lane) -> None:
        try:
            await self._read_forever(lane)
        except Exception as error:
            # A bug, not an outage: its followers must not wait for entries that will never come.
            # The next answer followed in this lane starts a new reader.
            log.exception("reply stream reader failed", following=len(lane.followers))
            for follower in list(lane.followers):
                follower.end(error)

    async def _read_forever(self, lane: _Lane) -> None:
        outage_since: float | None = None
        backoff = RETRY_FIRST_SECONDS
        next_job_check = time.monotonic() + self._job_check_seconds
        while True:
            if not lane.followers:
                lane.wake.clear()
                await lane.wake.wait()
                continue
            try:
                await self._read_once(list(lane.followers))
                if time.monotonic() >= next_job_check:
                    await self._check_jobs([f for f in lane.followers if f.watch_job and not f.ended])
                    next_job_check = time.monotonic() + self._job_check_seconds
            except REDIS_OUTAGE as error:
                now = time.monotonic()
                if outage_since is None:
                    outage_since = now
                    log.warning(
                        "redis unreachable, reply streams paused",
                        following=len(lane.followers),
                        error_type=type(error).__name__,
                    )
                elif now - outage_since > self._ride_out:
                    log.error("redis unreachable too long, answers abandoned", following=len(lane.followers))
                    for follower in list(lane.followers):
                        follower.end(QueueUnavailable(f"redis unreachable for {self._ride_out:.0f} s"))
                    lane.followers.clear()
                    outage_since = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX_SECONDS)
                continue
            except redis.ResponseError:
                # One key that is not a stream fails the whole XREAD: drop its follower, keep the rest.
                if not await self._drop_unreadable(list(lane.followers)):
                    raise
                continue
            if outage_since is not None:
                log.info("redis reachable again, reply streams resumed", following=len(lane.followers))
                outage_since, backoff = None, RETRY_FIRST_SECONDS

    async def _read_once(self, followers: list[Follower]) -> None:
        """One XREAD over every stream of the lane, resuming each after the last entry delivered."""
        positions: dict[Any, Any] = {}
        by_stream: dict[str, list[Follower]] = {}
        for follower in followers:
            if follower.ended:
                continue
            by_stream.setdefault(follower.stream, []).append(follower)
            current = positions.get(follower.stream)
            if current is None or stream_id_key(follower.last_id) < stream_id_key(current):
                positions[follower.stream] = follower.last_id
        if not positions:
            await asyncio.sleep(self._block_ms / 1000)
            return
        batches: Any = await self._redis.xread(positions, block=self._block_ms, count=ENTRIES_PER_STREAM)
        self._dispatch(batches, by_stream)

    def _dispatch(self, batches: Any, by_stream: dict[str, list[Follower]]) -> None:
        for name, entries in batches or []:
            stream = keys.as_text(name)
            for raw_id, fields in entries:
                entry_id = keys.as_text(raw_id)
                event = _parse(stream, entry_id, fields)
                if event is None:
                    continue
                for follower in by_stream.get(stream, []):
                    follower.deliver(entry_id, event)

    async def _drop_unreadable(self, followers: list[Follower]) -> bool:
        """End the followers whose stream key holds something else; False if there was none."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for follower in followers:
                pipe.type(follower.stream)
            types: list[Any] = await pipe.execute()
        dropped = False
        for follower, kind in zip(followers, types, strict=True):
            if keys.as_text(kind) not in ("stream", "none") and not follower.ended:
                log.warning("reply stream key is not a stream", request_id=follower.request_id)
                follower.end(ReplyLost(follower.request_id, "its reply stream key holds another type"))
                dropped = True
        return dropped

    async def _check_jobs(self, followers: list[Follower]) -> None:
        """Tell each follower whose job no worker will run again (after draining its stream)."""
        if not followers:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for follower in followers:
                pipe.hget(Job.key_for(follower.request_id), "status")
                pipe.exists(follower.stream)
            replies: list[Any] = await pipe.execute()
        for index, follower in enumerate(followers):
            status, stream_exists = replies[2 * index], replies[2 * index + 1]
            reason = _given_up(None if status is None else keys.as_text(status), bool(stream_exists))
            if reason is None:
                continue
            # The stream may still hold entries written before RQ gave up (a `done`, an `error`).
            rest: Any = await self._redis.xread({follower.stream: follower.last_id})
            self._dispatch(rest, {follower.stream: [follower]})
            if follower.answered:  # the job ended between the last read and this check: nothing is lost
                follower.finish()
                continue
            log.warning("reply lost", request_id=follower.request_id, reason=reason)
            follower.end(ReplyLost(follower.request_id, reason))


def _given_up(status: str | None, stream_exists: bool) -> str | None:
    """Why no worker will write to the stream again, or None while one still may."""
    if status is None:
        return None if stream_exists else "job and stream are gone"
    if status in GIVEN_UP_STATUSES:
        return f"job {status}"
    return None


def _parse(stream: str, entry_id: str, fields: Any) -> ReplyEvent | None:
    """An entry as the contract's event; one that is not is skipped (a worker of another version)."""
    try:
        return parse_reply_event(fields[b"event"])
    except (KeyError, TypeError, ValidationError):
        log.warning("unreadable reply event skipped", stream=stream, entry_id=entry_id)
        return None
