"""`brandbot worker`: load the model once, then serve its queue with N job slots until SIGTERM."""

from __future__ import annotations

import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from brandbot import keys
from brandbot.connections import worker_connection
from brandbot.errors import EngineLoadError
from brandbot.feedback import FeedbackRecorder
from brandbot.health import Readiness, probe_client, serve_ops
from brandbot.heap import freeze_startup_heap
from brandbot.logs import get_logger
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.settings import Settings
from brandbot.templating import ChatTemplate
from brandbot.usage import UptimeClock, UsageRecorder
from worker.adapter_match import AdapterMatcher
from worker.engine_watchdog import EngineWatchdog
from worker.engines import GpuOptions, load_engine, select_engine
from worker.engines.selection import EngineChoice
from worker.environment import seal_process_environment
from worker.faults import WorkerFaults
from worker.job import current_service
from worker.metrics import WorkerMetrics
from worker.replies import PUBLISH_OUTAGE_SECONDS, ReplyPublisher
from worker.service import ReplyService
from worker.threaded_worker import ThreadedWorker
from worker.tuning.adapters import served_fingerprint

log = get_logger(__name__)

REDIS_SOCKET_TIMEOUT_SECONDS = 10.0
"""A Redis call that gets no answer (a silent partition) fails after this long instead of hanging a slot;
well above RQ's 1 s blocking dequeue."""


def gpu_options(settings: Settings) -> GpuOptions:
    return GpuOptions(
        cache_type=settings.cache_type.value,
        cache_tokens=settings.cache_tokens,
        gpu_split=[float(gb) for gb in settings.gpu_split.split(",")] if settings.gpu_split else None,
        lora_dir=settings.lora_dir,
    )


def run_worker(settings: Settings, *, faults: WorkerFaults | None = None) -> None:
    seal_process_environment()  # may re-execute this process: first, before anything is loaded
    faults = faults or WorkerFaults()
    connection = worker_connection(settings, socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS)
    connection.ping()
    # Replies get a connection of their own that never retries by itself: a write whose answer was lost
    # is checked against the stream before it is sent again (`ReplyWriter`), or it could appear twice.
    replies_connection = worker_connection(
        settings, socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS, retry=Retry(NoBackoff(), 0)
    )
    prompts = LivePromptLibrary(settings.prompts_dir)
    choice = select_engine(settings.engine, settings.model_dir)
    # Served from before the model loads: alive at once, ready once the model is loaded.
    metrics = WorkerMetrics(model=settings.model_name, engine=choice.engine.value)
    loaded = threading.Event()
    readiness = Readiness(redis_client=probe_client(settings))
    readiness.add("model loaded", loaded.is_set)
    ops = serve_ops(settings, registry=metrics.registry, readiness=readiness)
    try:
        _serve(settings, faults, choice, connection, replies_connection, prompts, metrics, loaded, readiness)
    finally:
        if ops is not None:
            ops.close()


def _serve(
    settings: Settings,
    faults: WorkerFaults,
    choice: EngineChoice,
    connection: redis.Redis,
    replies_connection: redis.Redis,
    prompts: LivePromptLibrary,
    metrics: WorkerMetrics,
    loaded: threading.Event,
    readiness: Readiness,
) -> None:
    adapters = AdapterMatcher(served=served_fingerprint(settings.model_dir, settings.lora_dir))
    if faults.load_delay_seconds:
        time.sleep(faults.load_delay_seconds)
    engine = load_engine(
        choice.engine,
        settings.model_dir,
        concurrency=faults.engine_batch_limit or settings.worker_concurrency,
        gpu=gpu_options(settings),
    )
    assert settings.model_dir is not None
    try:
        template = ChatTemplate.from_model_dir(settings.model_dir)
    except Exception as error:
        engine.close()
        raise EngineLoadError(str(error)) from None
    metrics.engine_requests.set_function(engine.in_flight)
    usage = UsageRecorder(connection, retention_days=settings.usage_retention_days)
    uptime = UptimeClock(usage, model=settings.model_name, clock=time.monotonic)

    def on_tick(queue_depth: int) -> None:  # every heartbeat; a Redis error skips it like the heartbeat
        metrics.queue_depth.set(queue_depth)
        uptime.tick()

    service = ReplyService(
        engine=engine,
        template=template,
        prompts=prompts,
        publisher=ReplyPublisher(
            replies_connection,
            retention_seconds=settings.retention_seconds,
            outage_seconds=faults.publish_outage_seconds or PUBLISH_OUTAGE_SECONDS,
        ),
        metrics=metrics,
        company=settings.company_name,
        deadline_seconds=settings.generation_deadline_seconds,
        feedback=FeedbackRecorder(connection, retention_seconds=settings.retention_seconds),
        adapters=adapters,
        usage=usage,
        model_name=settings.model_name,
    )
    report_unserved_personas(prompts, adapters, settings.model_name)
    # More slots than the engine really runs at once would hold questions here that another worker could
    # start now (ExLlamaV2 without flash-attn generates one at a time).
    slots = min(settings.worker_concurrency, engine.max_concurrency)
    watchdog = EngineWatchdog(engine, stall_seconds=settings.engine_stall_seconds)
    watchdog.watch()
    worker = ThreadedWorker(
        connection=connection,
        queue_name=keys.model_queue(settings.model_name),
        slots=slots,
        thread_setup=faults.delay_slot_start(lambda: current_service.set(service)),
        heartbeat_record=lambda: {
            "model": settings.model_name,
            "engine": engine.name,
            "mode": engine.mode,
            "concurrency": str(settings.worker_concurrency),
            "engine_concurrency": str(engine.max_concurrency),
            "tokens_per_second": f"{metrics.token_rate.per_second():.1f}",
        },
        fatal_error=watchdog.failure,
        on_drain_timeout=service.abort_all,
        drain_grace_seconds=settings.drain_grace_seconds,
        job_heartbeat_ttl=settings.job_heartbeat_ttl_seconds,
        maintenance_interval=settings.recovery_interval_seconds,
        on_tick=on_tick,
        on_stop=service.start_draining,
    )

    log.info(
        "worker ready",
        model=settings.model_name,
        engine=engine.name,
        mode=engine.mode,
        engine_reason=choice.reason,
        slots=slots,
        configured_concurrency=settings.worker_concurrency,
        engine_concurrency=engine.max_concurrency,
        context_length=engine.context_length,
        queue=keys.model_queue(settings.model_name),
    )
    prompts.start_watching()
    faults.arm(engine)
    readiness.add("job slots running", lambda: worker.live_slots() > 0)
    loaded.set()
    freeze_startup_heap()  # the loaded model's Python objects are walked by no collection from now on
    try:
        worker.run()
    finally:
        prompts.stop_watching()
        engine.close()
        try:
            uptime.flush()
        except redis.RedisError:
            log.warning("worker uptime not counted, redis unreachable")


def report_unserved_personas(prompts: LivePromptLibrary, adapters: AdapterMatcher, model_name: str) -> None:
    """One line per persona routed to this queue whose fine-tune this worker does not serve."""
    library = prompts.current()
    for persona in library.personas.values():
        if persona.model != model_name:
            continue
        reason = adapters.mismatch(persona, library)
        if reason is not None:
            log.error(
                "persona's fine-tune not served: its questions will be refused",
                persona=persona.name,
                reason=reason,
            )
