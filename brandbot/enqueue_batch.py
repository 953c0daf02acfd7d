"""Group commit for the front-end's enqueues: questions taken in while one write is under way go to Redis
together, in one transaction, as ordinary RQ jobs (`Queue.enqueue_many`).

A burst of mentions then costs a few round trips instead of one (plus RQ's own look-ups) per question.
Writes run one after another, so questions reach each queue in the order they were taken in; each learns
its place in the queue from that same transaction.

RQ writes through a synchronous client; a thread doing that in a busy front-end waits for the GIL while
the event loop runs, and a burst's writes took hundreds of milliseconds. So RQ writes its commands into a
pipeline that is never sent (recording them costs no I/O), and the event loop sends them itself, on the
asyncio client: the same commands, the same job format.

```python
batcher = EnqueueBatcher(sync_client, async_client, make_job=job_data)
enqueued = await batcher.enqueue(request, model="default")   # waits for its batch's write
await batcher.close()
```
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
from rq import Queue
from rq.job import Job
from rq.queue import EnqueueData
from rq.serializers import JSONSerializer

from brandbot import keys
from brandbot.contract import GenerationRequest
from brandbot.errors import QueueUnavailable
from brandbot.streams import REDIS_OUTAGE

GATHER_SECONDS = 0.002
"""After a question arrives to an idle writer, how long to wait for others before writing (questions
arriving while a write is under way gather by themselves, and go out as soon as it is done)."""

MAX_BATCH = 256
"""Questions per write at most (one MULTI/EXEC); more wait for the next write."""

RIDE_OUT_SECONDS = 10.0
"""A write is tried again while Redis is unavailable this long (a restart, a failover), then given up."""

RETRY_SECONDS = 0.5

JobData = Callable[[GenerationRequest], EnqueueData]
"""Makes the RQ job of one request (`Queue.prepare_data` with the job's id, timeouts, retries, TTLs)."""


@dataclass(frozen=True)
class Enqueued:
    request_id: str
    ahead: int  # requests waiting before this one on the same model queue


@dataclass
class _Waiting:
    request: GenerationRequest
    model: str
    future: asyncio.Future[Enqueued]


class EnqueueBatcher:
    """Writes the questions of a burst to their model queues in as few transactions as it can."""

    def __init__(
        self,
        connection: redis.Redis,
        async_connection: redis.asyncio.Redis,
        *,
        make_job: JobData,
        gather_seconds: float = GATHER_SECONDS,
        max_batch: int = MAX_BATCH,
        ride_out_seconds: float = RIDE_OUT_SECONDS,
    ) -> None:
        self._redis = connection  # RQ's: it asks the server's version once per queue, and records commands
        self._async = async_connection  # sends them
        self._ride_out = ride_out_seconds
        self._make_job = make_job
        self._gather = gather_seconds
        self._max_batch = max_batch
        self._queues: dict[str, Queue] = {}  # one per model: RQ asks the server's version once per Queue
        self._waiting: list[_Waiting] = []
        self._arrived = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    async def enqueue(self, request: GenerationRequest, *, model: str) -> Enqueued:
        """Queue `request` with the next write; `QueueUnavailable` when Redis cannot take it."""
        if self._closed:
            raise QueueUnavailable("the queue is closed")
        future: asyncio.Future[Enqueued] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(request, model, future))
        self._arrived.set()
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_forever(), name="brandbot-enqueue")
        return await future

    async def close(self) -> None:
        """Write what is waiting, then stop."""
        self._closed = True
        self._arrived.set()
        if self._writer is not None:
            await self._writer

    async def _write_forever(self) -> None:
        was_idle = True
        while self._waiting or not self._closed:
            if not self._waiting:
                await self._arrived.wait()
                self._arrived.clear()
                was_idle = True
                continue
            if was_idle and len(self._waiting) < self._max_batch and not self._closed:
                # Let the rest of a burst join the first write; later ones take what gathered meanwhile.
                await asyncio.sleep(self._gather)
            was_idle = False
            batch = self._next_batch()
            try:
                placed = await self._write_riding_out([(w.request, w.model) for w in batch])
            except REDIS_OUTAGE as error:
                self._fail(batch, QueueUnavailable(f"redis unavailable ({type(error).__name__})"))
            except Exception as error:  # a bug must reach the asker's intake, not end the writer
                self._fail(batch, error)
            else:
                for waiting, enqueued in zip(batch, placed, strict=True):
                    if not waiting.future.done():
                        waiting.future.set_result(enqueued)

    def _next_batch(self) -> list[_Waiting]:
        """The oldest questions, up to `max_batch`, none twice (RQ's `enqueue_many` refuses a repeated id)."""
        batch: list[_Waiting] = []
        seen: set[str] = set()
        for waiting in self._waiting:
            if len(batch) == self._max_batch:
                break
            if waiting.request.request_id in seen:
                break  # it waits for the next write, behind its twin
            seen.add(waiting.request.request_id)
            batch.append(waiting)
        del self._waiting[: len(batch)]
        return batch

    @staticmethod
    def _fail(batch: list[_Waiting], error: BaseException) -> None:
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_exception(error)

    async def _queue(self, model: str) -> Queue:
        queue = self._queues.get(model)
        if queue is None:
            queue = Queue(keys.model_queue(model), connection=self._redis, serializer=JSONSerializer)
            await asyncio.to_thread(queue.get_redis_server_version)  # RQ's one look-up, off the event loop
            self._queues[model] = queue
        return queue

    async def _write_riding_out(self, batch: list[tuple[GenerationRequest, str]]) -> list[Enqueued]:
        """`_write`, tried again through a short outage. The transaction is all or nothing, so a write whose
        reply was lost is told by its first job's key: then it went through and is not written twice."""
        give_up_at = time.monotonic() + self._ride_out
        while True:
            try:
                return await self._write(batch)
            except REDIS_OUTAGE:
                if time.monotonic() >= give_up_at:
                    raise
            await asyncio.sleep(RETRY_SECONDS)
            try:
                if await self._async.exists(Job.key_for(batch[0][0].request_id)):
                    return await self._placed(batch)
            except REDIS_OUTAGE:
                continue

    async def _placed(self, batch: list[tuple[GenerationRequest, str]]) -> list[Enqueued]:
        """Where the jobs of a batch already written stand in their queues now."""
        async with self._async.pipeline(transaction=False) as pipe:
            for request, model in batch:
                pipe.lpos((await self._queue(model)).key, request.request_id)
            positions: list[Any] = await pipe.execute()
        return [
            Enqueued(request.request_id, int(at or 0))
            for (request, _), at in zip(batch, positions, strict=True)
        ]

    async def _write(self, batch: list[tuple[GenerationRequest, str]]) -> list[Enqueued]:
        """One transaction: every job of the batch, then each queue's length, to place each job in it."""
        by_model: dict[str, list[GenerationRequest]] = {}
        for request, model in batch:
            by_model.setdefault(model, []).append(request)
        queues = {model: await self._queue(model) for model in by_model}
        recorder = self._redis.pipeline(transaction=True)  # never executed: it only records RQ's commands
        for model, requests in by_model.items():
            queues[model].enqueue_many([self._make_job(request) for request in requests], pipeline=recorder)
        async with self._async.pipeline(transaction=True) as pipe:
            for args, options in recorder.command_stack:
                if not _changes_nothing(args):
                    pipe.pipeline_execute_command(*args, **options)
            for model in by_model:
                pipe.llen(queues[model].key)
            lengths: list[Any] = (await pipe.execute())[-len(by_model) :]
        ahead: dict[str, int] = {}
        for requests, length in zip(by_model.values(), lengths, strict=True):
            # The transaction pushed this model's jobs last, in order: the i-th has length - n + i before it.
            for index, request in enumerate(requests):
                ahead[request.request_id] = max(int(length) - len(requests) + index, 0)
        return [Enqueued(request.request_id, ahead[request.request_id]) for request, _ in batch]


def _changes_nothing(command: tuple[Any, ...]) -> bool:
    """RQ's bookkeeping that changes nothing for a new job without dependencies, left out of the write (a
    burst's write had twice the commands it needed): the expiry of its `dependents` and `dependencies`
    sets, which do not exist, and a status-only `HSET` (the job's whole hash, written with it, holds the
    same status)."""
    name, key = str(command[0]).upper(), str(command[1])
    if name == "EXPIRE":
        return key.endswith((":dependents", ":dependencies"))
    return name == "HSET" and len(command) == 4 and str(command[2]) == "status"
