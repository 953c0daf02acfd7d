"""Benchmarks of the worker tier (not tests): figures printed side by side, as ratios.

- `engine`: one loaded model at several concurrencies (1, 4, 16, 64 on a GPU; 1, 2, 4 on the CPU engine):
  aggregate tokens/s relative to one stream, time to first token p50/p99, single-stream decode as a share
  of the memory-bandwidth roofline (`worker/roofline.py`), and peak memory (one model copy serves them all).
- `queue`: the full job path (JSON request → RQ slot → prompt → engine → reply stream) with a null
  engine, next to raw RQ `SimpleWorker` running a trivial job: pickup latency and jobs/s.
"""

from __future__ import annotations

import math
import resource
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from brandbot import keys
from brandbot.connections import sync_client
from brandbot.contract import (
    DoneEvent,
    FinishReason,
    GenerationRequest,
    Platform,
    ReplyTarget,
    Role,
    Turn,
    UserRef,
    parse_reply_event,
)
from brandbot.errors import EngineDied
from brandbot.heap import freeze_startup_heap
from brandbot.progress import Step, no_progress
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.queue import RequestQueue
from brandbot.settings import EngineName, Settings
from brandbot.templating import ChatTemplate
from worker.engines.base import Engine, GenerationResult, GenerationStream, SamplingSettings
from worker.job import current_service
from worker.metrics import WorkerMetrics
from worker.replies import ReplyPublisher
from worker.roofline import known_bandwidth_gbs, roofline_tokens_per_second, weight_bytes_per_token
from worker.service import ReplyService
from worker.threaded_worker import ThreadedWorker

BENCH_QUEUE_PREFIX = "brandbot:bench"
BENCH_MODEL = "bench-null"


# -- engine -------------------------------------------------------------------------------------------

GPU_CONCURRENCIES = [1, 4, 16, 64]
CPU_CONCURRENCIES = [1, 2, 4]  # the CPU engine, on a small model: the same figures, sooner


@dataclass(frozen=True)
class EngineRun:
    concurrency: int
    tokens: int
    seconds: float
    ttft_ms: list[float]
    decode_tokens_per_second: list[float]
    """Per stream: tokens after the first ÷ time after the first (the decode phase alone)."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    def ttft(self, quantile: float) -> float:
        return percentile(self.ttft_ms, quantile)


def percentile(values: list[float], quantile: float) -> float:
    """Nearest-rank percentile (0 for none): p99 of a few values is their largest, not an interpolation."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(quantile * len(ordered)) - 1))]


def run_engine_batch(engine: Engine, prompt: str, concurrency: int, max_new_tokens: int) -> EngineRun:
    sampling = SamplingSettings(temperature=0.8, top_p=0.95, max_new_tokens=max_new_tokens, seed=7)
    started = time.perf_counter()
    streams = [engine.submit(prompt, sampling, deadline_seconds=600) for _ in range(concurrency)]
    for stream in streams:
        for _ in stream:
            pass
    seconds = time.perf_counter() - started
    results = [s.result for s in streams if s.result is not None]
    return EngineRun(
        concurrency=concurrency,
        tokens=sum(r.completion_tokens for r in results),
        seconds=seconds,
        ttft_ms=[r.time_to_first_token_ms for r in results if r.time_to_first_token_ms is not None],
        decode_tokens_per_second=[
            (r.completion_tokens - 1) * 1000 / (r.total_ms - r.time_to_first_token_ms)
            for r in results
            if r.time_to_first_token_ms is not None
            and r.completion_tokens > 1
            and r.total_ms > r.time_to_first_token_ms
        ],
    )


def peak_memory() -> str:
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = f"peak RSS {rss_mb:.0f} MB"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MB"
    except ImportError:
        pass
    return text


def gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None


def roofline_line(single: EngineRun, model_dir: Path, bandwidth_gbs: float | None, device: str | None) -> str:
    """Single-stream decode speed as a share of the memory-bandwidth roofline (or why it cannot be said)."""
    if not single.decode_tokens_per_second:
        return "roofline: no single-stream decode measured (answers shorter than two tokens)"
    decode = statistics.median(single.decode_tokens_per_second)
    source = "--bandwidth-gbs"
    if bandwidth_gbs is None and device is not None:
        bandwidth_gbs, source = known_bandwidth_gbs(device), device
    if bandwidth_gbs is None:
        where = f"{device!r} is not in the table of known GPUs" if device else "no GPU"
        return f"roofline: single-stream decode {decode:.1f} tok/s; {where}: pass --bandwidth-gbs to compare"
    bytes_per_token = weight_bytes_per_token(model_dir)
    limit = roofline_tokens_per_second(bandwidth_gbs, bytes_per_token)
    return (
        f"roofline: single-stream decode {decode:.1f} tok/s = {decode / limit:.1%} of {limit:.1f} tok/s"
        f" ({bandwidth_gbs:.0f} GB/s from {source} ÷ {bytes_per_token / 1e6:.1f} MB of weights per token)"
    )


def bench_engine(
    engine: Engine,
    template: ChatTemplate,
    concurrencies: list[int],
    max_new_tokens: int,
    echo: Callable[[str], None],
    step: Step = no_progress,
    *,
    model_dir: Path | None = None,
    bandwidth_gbs: float | None = None,
) -> list[EngineRun]:
    """Run every concurrency in turn; `step` is told as the warm-up and each run start."""
    prompt = template.render(
        [{"role": "user", "content": "Write a short note about our deployment process."}]
    )
    step("warm-up")
    run_engine_batch(engine, prompt, 1, 8)  # warm-up: first-call allocations stay out of the figures
    runs = []
    for concurrency in concurrencies:
        step(f"{concurrency} at once")
        runs.append(run_engine_batch(engine, prompt, concurrency, max_new_tokens))
    base = runs[0]
    echo(f"engine={engine.name} mode={engine.mode!r} max_new_tokens={max_new_tokens}")
    echo(
        f"{'concurrency':>11} {'tokens':>7} {'tok/s':>8} {'× c=1':>6} {'ttft p50 ms':>12} {'ttft p99 ms':>12}"
    )
    for run in runs:
        echo(
            f"{run.concurrency:>11} {run.tokens:>7} {run.tokens_per_second:>8.1f} "
            f"{run.tokens_per_second / base.tokens_per_second:>6.2f}"
            f" {run.ttft(0.5):>12.1f} {run.ttft(0.99):>12.1f}"
        )
    if model_dir is not None and base.concurrency == 1:
        echo(roofline_line(base, model_dir, bandwidth_gbs, gpu_name()))
    echo("goals on a GPU: 16 streams ≥ 6 × one stream; one stream ≥ 60 % of the roofline")
    echo(f"one model copy for all of them: {peak_memory()}")
    return runs


# -- queue --------------------------------------------------------------------------------------------


class NullEngine(Engine):
    """Benchmark-only engine: answers at once with a fixed text, so only the job path is measured."""

    name = "null"
    mode = "instant fixed answer (benchmark only)"
    context_length = 4096
    max_concurrency = 64
    ANSWER = "ok"

    def count_tokens(self, text: str) -> int:
        return len(text) // 4

    def submit(self, prompt: str, sampling: SamplingSettings, *, deadline_seconds: float) -> GenerationStream:
        stream = GenerationStream(deadline_seconds)
        stream.put_delta(self.ANSWER)
        stream.finish(
            GenerationResult(FinishReason.STOP, self.ANSWER, self.count_tokens(prompt), 1, 0.0, 0.0)
        )
        return stream

    def close(self) -> None:
        pass

    def _fail_every_stream(self, error: EngineDied) -> None:
        """Nothing to fail: every stream is finished inside `submit`."""


def trivial_job(payload: dict[str, object]) -> dict[str, object]:
    """What raw RQ runs in the comparison: nothing at all."""
    return {"ok": True}


@dataclass(frozen=True)
class QueueRun:
    name: str
    pickup_ms: list[float]
    jobs_per_second: float

    def pickup(self, quantile: float) -> float:
        ordered = sorted(self.pickup_ms)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


def _pickup_ms(connection: redis.Redis, job_ids: list[str]) -> list[float]:
    jobs = Job.fetch_many(job_ids, connection=connection, serializer=JSONSerializer)
    return [
        (job.started_at - job.enqueued_at).total_seconds() * 1000
        for job in jobs
        if job is not None and job.started_at and job.enqueued_at
    ]


def _wait_finished(connection: redis.Redis, queue: Queue, job_ids: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    registry = queue.finished_job_registry
    while time.monotonic() < deadline:
        if registry.count >= len(job_ids):
            return
        time.sleep(0.002)
    raise TimeoutError(f"{queue.name}: only {registry.count} of {len(job_ids)} jobs finished")


def _measure(
    connection: redis.Redis, queue: Queue, make_job: Callable[[int], str], jobs: int, name: str
) -> QueueRun:
    latency_ids = []
    for index in range(min(jobs, 200)):  # one at a time: pure pickup latency, no queueing
        job_id = make_job(index)
        latency_ids.append(job_id)
        _wait_finished(connection, queue, latency_ids)
    started = time.perf_counter()
    burst_ids = [make_job(10_000 + index) for index in range(jobs)]
    _wait_finished(connection, queue, latency_ids + burst_ids)
    seconds = time.perf_counter() - started
    return QueueRun(name, _pickup_ms(connection, latency_ids), jobs / seconds)


def bench_queue(settings: Settings, jobs: int, echo: Callable[[str], None]) -> tuple[QueueRun, QueueRun]:
    connection = sync_client(settings)
    for pattern in (f"*{BENCH_QUEUE_PREFIX}*", f"*{keys.model_queue(BENCH_MODEL)}*"):
        for key in connection.scan_iter(match=pattern):
            connection.delete(key)

    raw_queue = Queue(f"{BENCH_QUEUE_PREFIX}:raw", connection=connection, serializer=JSONSerializer)
    # Raw RQ as it is normally run: a SimpleWorker in the main thread (SIGALRM timeouts need it there),
    # fed by a producer thread.
    raw_worker = SimpleWorker([raw_queue], connection=connection, serializer=JSONSerializer, worker_ttl=16)
    raw_runs: list[QueueRun] = []

    def enqueue_raw(index: int) -> str:
        return raw_queue.enqueue(f"{__name__}.trivial_job", {"i": index}, result_ttl=600).id

    def produce_raw() -> None:
        try:
            raw_runs.append(
                _measure(connection, raw_queue, enqueue_raw, jobs, "raw RQ SimpleWorker, trivial job")
            )
        finally:
            # RQ looks at a stop request only between jobs: a worker already waiting on the empty queue
            # would wait forever (it re-blocks every second). One more trivial job wakes it to see it.
            raw_worker._stop_requested = True
            enqueue_raw(-1)

    producer = threading.Thread(target=produce_raw, daemon=True)
    producer.start()
    raw_worker.work(logging_level="WARNING")
    producer.join()
    [raw] = raw_runs

    ours = _bench_our_path(settings, connection, jobs)
    echo(f"{jobs} jobs each; pickup = RQ enqueued_at → started_at, measured on 200 jobs sent one at a time")
    echo(f"{'path':<44} {'pickup p50':>10} {'p99':>8} {'jobs/s':>8} {'× raw':>6}")
    for run in (raw, ours):
        pickup = f"{run.pickup(0.5):>8.2f}ms {run.pickup(0.99):>6.2f}ms"
        ratio = run.jobs_per_second / raw.jobs_per_second
        echo(f"{run.name:<44} {pickup} {run.jobs_per_second:>8.0f} {ratio:>6.2f}")
    return raw, ours


def _bench_our_path(settings: Settings, connection: redis.Redis, jobs: int) -> QueueRun:
    engine = NullEngine()
    model = BENCH_MODEL
    service = ReplyService(
        engine=engine,
        template=ChatTemplate("{% for m in messages %}{{ m.content }}\n{% endfor %}"),
        prompts=LivePromptLibrary(settings.prompts_dir),
        publisher=ReplyPublisher(connection, retention_seconds=600),
        metrics=WorkerMetrics(model=model, engine=engine.name),
        company=settings.company_name,
        deadline_seconds=60,
    )
    worker = ThreadedWorker(
        connection=connection,
        queue_name=keys.model_queue(model),
        slots=settings.worker_concurrency,
        name=f"bench-{time.time_ns()}",
        thread_setup=lambda: current_service.set(service),
    )
    freeze_startup_heap()  # as `brandbot worker` does once its model is loaded
    thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False}, daemon=True)
    thread.start()
    persona = service.prompts.current().default_persona().name
    front = RequestQueue.from_settings(
        settings.model_copy(update={"retention_seconds": 600, "generation_deadline_seconds": 60})
    )

    def enqueue(index: int) -> str:
        request = GenerationRequest(
            target=ReplyTarget(platform=Platform.TERMINAL, channel_id="bench"),
            user=UserRef(id="bench"),
            persona=persona,
            turns=[Turn(role=Role.USER, content=f"question {index}")],
        )
        # The front-end's own job (its options and RQ's `enqueue_many`), minus asyncio and batching.
        queue.enqueue_many([front.job_data(request)])
        return request.request_id

    queue = worker.queue
    try:
        run = _measure(
            connection, queue, enqueue, jobs, f"brandbot job path, null engine, {len(worker.slots)} slots"
        )
        # The figures only count if the path really answered: check one reply stream.
        sample_id = queue.finished_job_registry.get_job_ids()[0]
        entries: Any = connection.xrange(keys.reply_stream(sample_id))
        if not any(isinstance(parse_reply_event(fields[b"event"]), DoneEvent) for _, fields in entries):
            raise RuntimeError(f"benchmark request {sample_id} finished without a done event")
        return run
    finally:
        worker.request_stop()
        thread.join(timeout=10)


def load_for_bench(
    settings: Settings, concurrencies: list[int] | None = None
) -> tuple[Engine, ChatTemplate, list[int]]:
    """The engine `auto` (or the setting) chooses, sized for the concurrencies asked (default: by engine)."""
    from worker.engines import load_engine, select_engine
    from worker.main import gpu_options

    choice = select_engine(settings.engine, settings.model_dir)
    if concurrencies is None:
        concurrencies = CPU_CONCURRENCIES if choice.engine is EngineName.TRANSFORMERS else GPU_CONCURRENCIES
    engine = load_engine(
        choice.engine, settings.model_dir, concurrency=max(concurrencies), gpu=gpu_options(settings)
    )
    assert settings.model_dir is not None
    return engine, ChatTemplate.from_model_dir(Path(settings.model_dir)), concurrencies
