"""The front-end's side of the queue: enqueue a request as an RQ job, follow its reply stream, cancel it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from brandbot import connections, keys
from brandbot.contract import GenerationRequest, ReplyEvent, parse_reply_event
from brandbot.errors import QueueUnavailable
from brandbot.settings import Settings

JOB_FUNCTION = "worker.job.generate_reply"
"""The RQ job every request runs; workers import it by this name."""

MAX_ATTEMPTS = 2
"""One try plus one retry: a worker crash mid-answer gets a second attempt on another worker."""

JOB_TIMEOUT_MARGIN_SECONDS = 30
"""RQ's own timeout sits above the engine's deadline, which ends generation cleanly first."""

STREAM_BLOCK_MS = 1000

ASYNC_POOL_CONNECTIONS = 4096
"""Redis connections one front-end process may open (each answer being relayed holds one)."""


@dataclass(frozen=True)
class Enqueued:
    request_id: str
    ahead: int  # requests waiting before this one on the same model queue


class RequestQueue:
    """Puts requests on a model's queue and reads their replies.

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
    ) -> None:
        self._retention = retention_seconds
        self._deadline = deadline_seconds
        self._sync = sync_client
        self._async = async_client

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestQueue:
        return cls(
            sync_client=connections.sync_client(
                settings, socket_timeout=5, socket_connect_timeout=2, health_check_interval=15
            ),
            # Every relayed answer holds a connection while it waits on its stream: redis-py's default
            # cap (100) would turn a busy minute into "too many connections" errors.
            async_client=connections.async_client(
                settings,
                max_connections=ASYNC_POOL_CONNECTIONS,
                socket_connect_timeout=2,
                health_check_interval=15,
            ),
            retention_seconds=settings.retention_seconds,
            deadline_seconds=settings.generation_deadline_seconds,
        )

    @property
    def redis(self) -> redis.asyncio.Redis:
        return self._async

    async def close(self) -> None:
        await self._async.aclose()
        self._sync.close()

    async def enqueue(self, request: GenerationRequest, *, model: str) -> Enqueued:
        try:
            return await asyncio.to_thread(self._enqueue_blocking, request, model)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise QueueUnavailable(str(error)) from error

    def _enqueue_blocking(self, request: GenerationRequest, model: str) -> Enqueued:
        queue = Queue(keys.model_queue(model), connection=self._sync, serializer=JSONSerializer)
        deadline = request.limits.deadline_seconds or self._deadline
        queue.enqueue(
            JOB_FUNCTION,
            request.model_dump(mode="json"),
            job_id=request.request_id,
            # RQ's default description is the repr of the arguments: the user's question.
            description=f"reply {request.request_id}",
            job_timeout=int(deadline) + JOB_TIMEOUT_MARGIN_SECONDS,
            ttl=self._retention,
            result_ttl=self._retention,
            failure_ttl=self._retention,
            retry=Retry(max=MAX_ATTEMPTS - 1),
            meta={"max_attempts": MAX_ATTEMPTS},
        )
        return Enqueued(request_id=request.request_id, ahead=max(queue.count - 1, 0))

    async def events(
        self, request_id: str, *, after: str = "0-0", block_ms: int = STREAM_BLOCK_MS
    ) -> AsyncIterator[tuple[str, ReplyEvent | None]]:
        """Yield `(stream id, event)` as the worker appends them; `(last id, None)` on each idle tick."""
        stream = keys.reply_stream(request_id)
        last_id = after
        while True:
            try:
                batches: Any = await self._async.xread({stream: last_id}, block=block_ms, count=100)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                raise QueueUnavailable(str(error)) from error
            if not batches:
                yield last_id, None
                continue
            for _name, entries in batches:
                for entry_id, fields in entries:
                    last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    yield last_id, parse_reply_event(fields[b"event"])

    async def cancel(self, request_id: str) -> None:
        await self._async.set(keys.cancel_flag(request_id), b"1", ex=self._retention)

    async def workers_alive(self, model: str) -> int:
        """Workers serving `model` whose heartbeat is fresh."""
        names: Any = await self._async.smembers(keys.WORKERS_SET)
        alive = 0
        for name in names:
            record: Any = await self._async.hget(keys.worker_heartbeat(keys.as_text(name)), "model")
            if record is not None and keys.as_text(record) == model:
                alive += 1
        return alive

    async def ping(self) -> bool:
        try:
            return bool(await self._async.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False
