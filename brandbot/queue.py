"""The front-end's side of the queue: enqueue a request as an RQ job, follow its reply stream, cancel it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import redis
import redis.asyncio
from rq import Queue, Retry
from rq.job import Job
from rq.queue import EnqueueData
from rq.utils import utcparse

from brandbot import connections, keys
from brandbot.contract import GenerationRequest, ReplyEvent
from brandbot.enqueue_batch import EnqueueBatcher, Enqueued
from brandbot.errors import QueueUnavailable
from brandbot.settings import Settings
from brandbot.streams import REDIS_OUTAGE, RIDE_OUT_SECONDS, Follower, ReplyStreams

JOB_FUNCTION = "worker.job.generate_reply"
"""The RQ job every request runs; workers import it by this name."""

MAX_ATTEMPTS = 2
"""One try plus one retry: a worker crash mid-answer gets a second attempt on another worker."""

JOB_TIMEOUT_MARGIN_SECONDS = 30
"""RQ's own timeout sits above the engine's deadline, which ends generation cleanly first."""

STREAM_BLOCK_MS = 1000
"""`events()` yields an idle tick after this long without news (the reader itself blocks `BLOCK_MS`)."""

ASYNC_POOL_CONNECTIONS = 12
"""Redis connections the front-end's async client may open: the stream reader's lanes plus commands.
Answers being relayed no longer hold one each (`brandbot.streams`); a command waits for a free one."""

SYNC_POOL_CONNECTIONS = 4
"""Connections of the blocking client RQ needs for enqueueing (one batch at a time, in a thread)."""

POOL_WAIT_SECONDS = 10.0
"""How long a command waits for a free pooled connection before it counts as Redis being unavailable."""

SOCKET_TIMEOUT_SECONDS = 10.0
"""A read with no reply this long means a silent partition; above the reader's XREAD block time."""

CLIENT_NAME = "brandbot-front-end"
"""Shown by `CLIENT LIST`, so an operator (and the benchmark) can count a front-end's connections."""


@contextlib.contextmanager
def unavailable_on_outage() -> Iterator[None]:
    """Redis unreachable, out of memory or read-only (after a failover): `QueueUnavailable`.

    Only the error's type travels on: redis-py's messages quote the failed command, job payload included.
    """
    try:
        yield
    except REDIS_OUTAGE as error:
        raise QueueUnavailable(f"redis unavailable ({type(error).__name__})") from None


class RequestQueue:
    """Puts requests on a model's queue and reads their replies.

    Replies of every answer the process relays come through one reader (`brandbot.streams`), and all
    its Redis traffic through two bounded pools: at most `ASYNC_POOL_CONNECTIONS` +
    `SYNC_POOL_CONNECTIONS` connections, whatever the load.

    ```python
    queue = RequestQueue.from_settings(settings)
    enqueued = await queue.enqueue(request, model="default")
    async for event_id, event in queue.events(enqueued.request_id):
        ...
    ```
    """

    def __init__(
        self,
        *,
        sync_client: redis.Redis,
        async_client: redis.asyncio.Redis,
        retention_seconds: int,
        deadline_seconds: float,
        ride_out_seconds: float = RIDE_OUT_SECONDS,
    ) -> None:
        self._retention = retention_seconds
        self._deadline = deadline_seconds
        self._sync = sync_client
        self._async = async_client
        self._streams = ReplyStreams(self._async, ride_out_seconds=ride_out_seconds)
        self._batcher = EnqueueBatcher(self._sync, self._async, make_job=self.job_data)

    @classmethod
    def from_settings(cls, settings: Settings, *, ride_out_seconds: float = RIDE_OUT_SECONDS) -> RequestQueue:
        pool: dict[str, Any] = {
            "pool_wait_seconds": POOL_WAIT_SECONDS,
            "socket_timeout": SOCKET_TIMEOUT_SECONDS,
            "socket_connect_timeout": 2,
            "health_check_interval": 15,
            "client_name": CLIENT_NAME,
        }
        return cls(
            sync_client=connections.sync_client(settings, max_connections=SYNC_POOL_CONNECTIONS, **pool),
            async_client=connections.async_client(settings, max_connections=ASYNC_POOL_CONNECTIONS, **pool),
            retention_seconds=settings.retention_seconds,
            deadline_seconds=settings.generation_deadline_seconds,
            ride_out_seconds=ride_out_seconds,
        )

    @property
    def redis(self) -> redis.asyncio.Redis:
        return self._async

    @property
    def following(self) -> int:
        """Reply streams this process follows right now (answers being relayed)."""
        return self._streams.following

    @property
    def deadline_seconds(self) -> float:
        """The workers' generation deadline (a request may carry a shorter one)."""
        return self._deadline

    async def close(self) -> None:
        await self._batcher.close()
        await self._streams.close()
        await self._async.aclose()
        self._sync.close()
        self._sync.connection_pool.disconnect()

    async def enqueue(self, request: GenerationRequest, *, model: str) -> Enqueued:
        """Queue the request with others taken in at the same moment (`brandbot.enqueue_batch`)."""
        return await self._batcher.enqueue(request, model=model)

    def job_data(self, request: GenerationRequest) -> EnqueueData:
        """The request's RQ job: its id is the request's, and its description never the question."""
        deadline = request.limits.deadline_seconds or self._deadline
        return Queue.prepare_data(
            JOB_FUNCTION,
            [request.model_dump(mode="json")],
            job_id=request.request_id,
            # RQ's default description is the repr of the arguments: the user's question.
            description=f"reply {request.request_id}",
            timeout=int(deadline) + JOB_TIMEOUT_MARGIN_SECONDS,
            ttl=self._retention,
            result_ttl=self._retention,
            failure_ttl=self._retention,
            retry=Retry(max=MAX_ATTEMPTS - 1),
            meta={"max_attempts": MAX_ATTEMPTS},
        )

    def follow(
        self, request_id: str, *, after: str = "0-0", watch_job: bool = True
    ) -> contextlib.AbstractAsyncContextManager[Follower]:
        """Follow a reply stream through the process's one reader (`brandbot.streams.ReplyStreams`)."""
        return self._streams.follow(request_id, after=after, watch_job=watch_job)

    async def events(
        self,
        request_id: str,
        *,
        after: str = "0-0",
        block_ms: int = STREAM_BLOCK_MS,
        watch_job: bool = False,
    ) -> AsyncIterator[tuple[str, ReplyEvent | None]]:
        """Yield `(stream id, event)` as the worker appends them; `(last id, None)` on each idle tick.

        Raises `QueueUnavailable` once Redis stayed unreachable past the ride-out window, and
        `brandbot.streams.ReplyLost` when the stream's key holds something else or, with `watch_job`,
        once RQ gave up on the job or it vanished.
        """
        last_id = after
        async with self._streams.follow(request_id, after=after, watch_job=watch_job) as follower:
            while True:
                arrived = await follower.next(timeout=block_ms / 1000)
                if arrived is None:
                    yield last_id, None
                    continue
                last_id, event = arrived
                yield last_id, event

    async def job_status(self, request_id: str) -> str | None:
        """RQ's status of the request's job (`queued`, `started`, `failed`, …); None if it is gone."""
        with unavailable_on_outage():
            status: Any = await self._async.hget(Job.key_for(request_id), "status")
        return None if status is None else keys.as_text(status)

    async def cancel(self, request_id: str) -> None:
        with unavailable_on_outage():
            await self._async.set(keys.cancel_flag(request_id), b"1", ex=self._retention)

    async def workers_alive(self, model: str) -> int:
        """Workers serving `model` whose heartbeat is fresh and that have a live job slot.

        A worker whose slots all died still heartbeats while its supervisor restarts them: it answers
        nothing meanwhile, so it does not count (a record without `live_slots` is from an older worker).
        """
        with unavailable_on_outage():
            names: Any = await self._async.smembers(keys.WORKERS_SET)
            if not names:
                return 0
            async with self._async.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hmget(keys.worker_heartbeat(keys.as_text(name)), "model", "live_slots")
                records: list[Any] = await pipe.execute()
        return sum(
            1
            for served, live in records
            if served is not None and keys.as_text(served) == model and (live is None or int(live) > 0)
        )

    async def ping(self) -> bool:
        try:
            return bool(await self._async.ping())
        except REDIS_OUTAGE:
            return False


def oldest_wait_seconds(connection: redis.Redis, queue_name: str) -> float | None:
    """How long the request at the head of `queue_name` has waited (None: the queue is empty).

    Reads one field of one job hash (`enqueued_at`), never the payload; raises `NoPermissionError` for a
    Redis user that may not read job hashes (the `status` user).
    """
    head: Any = connection.lindex(Queue.redis_queue_namespace_prefix + queue_name, 0)
    if head is None:
        return None
    enqueued: Any = connection.hget(Job.key_for(keys.as_text(head)), "enqueued_at")
    if enqueued is None:
        return None
    try:
        since = utcparse(keys.as_text(enqueued))
    except ValueError:
        return None
    return round(max((datetime.now(UTC) - since).total_seconds(), 0.0), 1)
