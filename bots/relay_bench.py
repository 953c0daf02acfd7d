"""`brandbot bench relay`: how many answers one front-end process relays at once, through how many Redis
connections, at how many events per second.

Not a test: it reports figures. This process runs the real relay (`bots.relay.relay_reply`, the
process's one reply-stream reader) for every answer, into a chat that only counts what it is asked to
show (no platform: the figures are the relay's). A second process stands in for the workers: it writes
each answer's events (start, deltas, done) with XADD, as `brandbot worker` does, so its work does not
compete with the front-end's for this interpreter. Redis connections are counted with `CLIENT LIST`.

With `--compare`, the same relay also runs over the old design — one blocking XREAD, and so one
connection, per answer — and the figures are shown side by side.

It writes streams named `brandbot:reply:bench-…` (deleted afterwards) to the Redis at `--redis-url`:
point it at a scratch database.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import redis
import redis.asyncio
from rich.console import Console
from rich.table import Table

from bots.relay import ChannelPacer, RelayOutcome, StreamingEditor, relay_reply
from brandbot import keys, messages
from brandbot.contract import (
    DeltaEvent,
    DoneEvent,
    FinishReason,
    ReplyEvent,
    StartEvent,
    Usage,
    parse_reply_event,
    reply_event_adapter,
)
from brandbot.queue import CLIENT_NAME, RequestQueue
from brandbot.settings import Settings

BASELINE_CLIENT_NAME = "brandbot-bench-per-answer"
"""The old design's connections, named so `CLIENT LIST` tells them apart."""

PUBLISH_BATCH = 500
"""Answers whose next event goes out in one pipeline (a worker writes many streams at once too)."""

SAMPLE_SECONDS = 0.2
"""How often `CLIENT LIST` is sampled for the connection count."""

READY_WAIT_SECONDS = 300.0
"""The longest the bench waits for every relay to follow its stream (then it reports what it has)."""


@dataclass(frozen=True)
class RelayFigures:
    design: str
    answers: int
    relayed: int  # answers that ended with their `done`
    at_once: int  # answers being followed at the same moment (peak)
    connections: int  # the front-end's Redis connections (peak, CLIENT LIST)
    events: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class CountingChat:
    """A chat that shows nothing: it counts posts and edits (the relay's work, not a platform's)."""

    max_chars = 2000

    def __init__(self, channel: str) -> None:
        self.channel_key = channel
        self.writes = 0

    async def post(self, text: str) -> str:
        self.writes += 1
        return "1"

    async def edit(self, message_id: str, text: str) -> None:
        self.writes += 1

    async def delete(self, message_id: str) -> None:
        self.writes += 1


class PerAnswerFollower:
    """The old design, kept for comparison: each answer blocks on its own XREAD (its own connection)."""

    def __init__(self, connection: redis.asyncio.Redis, request_id: str, after: str) -> None:
        self._redis = connection
        self._stream = keys.reply_stream(request_id)
        self._last_id = after
        self._buffer: list[tuple[str, ReplyEvent]] = []

    async def next(self, timeout: float) -> tuple[str, ReplyEvent] | None:  # noqa: ASYNC109 - the idle tick
        if not self._buffer:
            batches: Any = await self._redis.xread(
                {self._stream: self._last_id}, block=max(int(timeout * 1000), 1), count=100
            )
            for _name, entries in batches or []:
                for raw_id, fields in entries:
                    self._last_id = keys.as_text(raw_id)
                    self._buffer.append((self._last_id, parse_reply_event(fields[b"event"])))
        return self._buffer.pop(0) if self._buffer else None


class PerAnswerQueue(RequestQueue):
    """`RequestQueue` with the old per-answer reader behind the same `follow()`."""

    def __init__(self, *, redis_url: str) -> None:
        super().__init__(
            sync_client=redis.Redis.from_url(redis_url),
            async_client=redis.asyncio.Redis.from_url(redis_url),
            retention_seconds=600,
            deadline_seconds=600,
        )
        self._per_answer = redis.asyncio.Redis.from_url(
            redis_url, max_connections=100_000, socket_connect_timeout=5, client_name=BASELINE_CLIENT_NAME
        )
        self.open_followers = 0

    @contextlib.asynccontextmanager
    async def _follow(self, request_id: str, after: str) -> AsyncIterator[Any]:
        self.open_followers += 1
        try:
            yield PerAnswerFollower(self._per_answer, request_id, after)
        finally:
            self.open_followers -= 1

    def follow(self, request_id: str, *, after: str = "0-0", watch_job: bool = True) -> Any:
        return self._follow(request_id, after)

    @property
    def following(self) -> int:
        return self.open_followers

    async def close(self) -> None:
        await self._per_answer.aclose()
        await super().close()


def publisher_main(redis_url: str, request_ids: list[str], deltas: int, pipe: Connection) -> None:
    """The workers' stand-in (second process): start every answer, wait for "go", stream the rest."""
    client = redis.Redis.from_url(redis_url)
    rounds: list[ReplyEvent] = [DeltaEvent(text=f"word{index} ") for index in range(deltas)]
    text = "".join(event.text for event in rounds if isinstance(event, DeltaEvent))
    usage = Usage(prompt_tokens=10, completion_tokens=deltas, total_ms=1.0)
    rounds.append(DoneEvent(text=text, finish_reason=FinishReason.STOP, usage=usage))
    _publish_round(client, request_ids, StartEvent())
    pipe.send("started")
    if pipe.recv() != "go":
        return
    for event in rounds:
        _publish_round(client, request_ids, event)
    pipe.send("published")
    client.close()


def _publish_round(client: redis.Redis, request_ids: list[str], event: ReplyEvent) -> None:
    """One event to every answer, in the worker's wire format (`worker.replies.ReplyPublisher`)."""
    payload = reply_event_adapter.dump_json(event)
    for start in range(0, len(request_ids), PUBLISH_BATCH):
        with client.pipeline(transaction=False) as pipe:
            for request_id in request_ids[start : start + PUBLISH_BATCH]:
                pipe.xadd(keys.reply_stream(request_id), {"event": payload})
                pipe.expire(keys.reply_stream(request_id), 600)
            pipe.execute()


class ConnectionSampler:
    """Peak count of connections carrying `name`, sampled from `CLIENT LIST` in a thread."""

    def __init__(self, redis_url: str, name: str) -> None:
        self._client = redis.Redis.from_url(redis_url)
        self._name = name
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, name="bench-client-list", daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()
        self._client.close()

    def sample(self) -> None:
        clients: Any = self._client.client_list()
        self.peak = max(self.peak, sum(1 for entry in clients if entry.get("name") == self._name))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            with contextlib.suppress(redis.RedisError):
                self.sample()


async def bench_design(
    queue: RequestQueue, *, design: str, client_name: str, redis_url: str, answers: int, deltas: int
) -> RelayFigures:
    """Relay `answers` answers of `deltas` deltas each at once through `queue`; measure."""
    run = uuid.uuid4().hex[:8]
    request_ids = [f"bench-{run}-{index}" for index in range(answers)]
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    workers = multiprocessing.get_context("spawn").Process(
        target=publisher_main,
        args=(redis_url, request_ids, deltas, theirs),
        name="bench-workers",
        daemon=True,
    )
    workers.start()
    pacer = ChannelPacer(0.05)
    try:
        await asyncio.to_thread(ours.recv)  # every answer has started
        with ConnectionSampler(redis_url, client_name) as sampler:
            relays = [
                asyncio.create_task(_relay(queue, request_id, pacer, index))
                for index, request_id in enumerate(request_ids)
            ]
            at_once = await _wait_until_following(queue, answers)
            sampler.sample()
            started = time.perf_counter()
            ours.send("go")
            outcomes = await asyncio.gather(*relays)
            seconds = time.perf_counter() - started
        relayed = sum(1 for outcome in outcomes if outcome.status == "done")
        return RelayFigures(
            design=design,
            answers=answers,
            relayed=relayed,
            at_once=at_once,
            connections=sampler.peak,
            events=relayed * (deltas + 1),
            seconds=seconds,
        )
    finally:
        workers.join(timeout=30)
        if workers.is_alive():
            workers.kill()
        await _delete_streams(redis_url, request_ids)


async def _relay(queue: RequestQueue, request_id: str, pacer: ChannelPacer, index: int) -> RelayOutcome:
    editor = StreamingEditor(CountingChat(f"C{index}"), pacer)
    await editor.start(messages.THINKING)
    return await relay_reply(
        queue=queue, request_id=request_id, editor=editor, model="bench", worker_wait_seconds=600
    )


async def _wait_until_following(queue: RequestQueue, answers: int) -> int:
    deadline = time.monotonic() + READY_WAIT_SECONDS
    peak = 0
    while time.monotonic() < deadline:
        peak = max(peak, queue.following)
        if peak >= answers:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # every lane (or every per-answer read) is now blocked on its streams
    return max(peak, queue.following)


async def _delete_streams(redis_url: str, request_ids: list[str]) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        for start in range(0, len(request_ids), PUBLISH_BATCH):
            await client.delete(
                *(keys.reply_stream(rid) for rid in request_ids[start : start + PUBLISH_BATCH])
            )
    finally:
        await client.aclose()


async def run_relay_bench(
    redis_url: str, *, answers: int, deltas: int, compare: int, progress: Callable[[str], None]
) -> list[RelayFigures]:
    """The reader at `answers` answers, and with `compare` > 0 both designs at `compare` answers."""
    runs: list[tuple[str, int, Callable[[], RequestQueue], str]] = [
        ("one reader per process", answers, lambda: _queue(redis_url), CLIENT_NAME)
    ]
    if compare:
        runs += [
            ("one reader per process", compare, lambda: _queue(redis_url), CLIENT_NAME),
            (
                "one XREAD per answer (old)",
                compare,
                lambda: PerAnswerQueue(redis_url=redis_url),
                BASELINE_CLIENT_NAME,
            ),
        ]
    figures = []
    for design, count, make_queue, client_name in runs:
        progress(f"relaying {count} answers at once: {design} …")
        queue = make_queue()
        try:
            figures.append(
                await bench_design(
                    queue,
                    design=design,
                    client_name=client_name,
                    redis_url=redis_url,
                    answers=count,
                    deltas=deltas,
                )
            )
        finally:
            await queue.close()
    return figures


def _queue(redis_url: str) -> RequestQueue:
    """The front-end's own queue client (bounded pools, one stream reader) on the bench's Redis."""
    settings = Settings(_env_file=None, redis_url=redis_url, retention_seconds=600)
    return RequestQueue.from_settings(settings)


def figures_table(figures: list[RelayFigures]) -> Table:
    """The figures as a table; with a comparison, the reader's ratios to the old design at the same load."""
    table = Table(title="Relaying answers from one front-end process")
    for column in ("design", "answers at once", "relayed", "Redis connections", "events/s"):
        table.add_column(column, justify="left" if column == "design" else "right")
    table.add_column("connections, events/s vs old (same load)", justify="right")
    baselines = {f.answers: f for f in figures if f.design.endswith("(old)")}
    for figure in figures:
        old = baselines.get(figure.answers)
        ratio = ""
        if old is not None and old is not figure and figure.connections and old.events_per_second:
            ratio = (
                f"{figure.connections / old.connections:.3f}×, "
                f"{figure.events_per_second / old.events_per_second:.2f}×"
            )
        table.add_row(
            figure.design,
            str(figure.at_once),
            f"{figure.relayed}/{figure.answers}",
            str(figure.connections),
            f"{figure.events_per_second:,.0f}",
            ratio,
        )
    return table


def print_figures(figures: list[RelayFigures]) -> None:
    console = Console()
    console.width = max(console.width, 120)  # a pipe reports 80 columns; the table needs more
    console.print(figures_table(figures))
