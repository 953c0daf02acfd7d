"""N RQ job slots in one process, sharing one loaded model — RQ semantics kept, no fork per job.

RQ has no threaded worker, so each slot is a `SimpleWorker` running in its own thread; the main thread
owns what only it can do (signals), and what a `SimpleWorker` neglects (heartbeats of running jobs,
prompt recovery of jobs abandoned by a killed worker):

- signal handlers are installed only here; slots get no handlers and stop via `_stop_requested`;
- `TimerDeathPenalty` replaces SIGALRM (main-thread only); the engine enforces the real deadline;
- running jobs' heartbeats are refreshed every few seconds with a short TTL, and registry cleanup
  runs here on a short interval, so a SIGKILLed worker's jobs are retried within about a minute;
- SIGTERM drains: stop taking jobs, let running ones finish within a grace period, requeue the rest.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.registry import clean_registries
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from brandbot import keys
from brandbot.logs import get_logger
from worker.admission import AdmittedJob, fail_refused

log = get_logger(__name__)

HEARTBEAT_INTERVAL_SECONDS = 5
"""How often running jobs' heartbeats and this worker's record are refreshed."""

JOB_HEARTBEAT_TTL_SECONDS = 20
"""Default: a running job whose heartbeat is older than this is abandoned (its worker died)."""

MAINTENANCE_INTERVAL_SECONDS = 15.0
"""Default: how often abandoned jobs are looked for and retried (RQ's default is 10 minutes)."""

SLOT_WORKER_TTL_SECONDS = 16
"""RQ blocks on the queue for (ttl - 15) seconds at a time: 1 s, so an idle slot notices a stop at once."""


class SlotWorker(SimpleWorker):
    """A `SimpleWorker` that runs in a thread of `ThreadedWorker`."""

    death_penalty_class = TimerDeathPenalty
    job_class = AdmittedJob  # only the reply job runs: see worker/admission.py

    def __init__(self, *args: Any, job_heartbeat_ttl: int = JOB_HEARTBEAT_TTL_SECONDS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.running: tuple[Job, Execution] | None = None
        self.job_heartbeat_ttl = job_heartbeat_ttl
        # RQ's heartbeat pipeline sets `job_monitoring_interval + 60` as the worker key's TTL.
        self.job_monitoring_interval = job_heartbeat_ttl

    def _install_signal_handlers(self) -> None:
        """Signals can only be handled by the main thread; `ThreadedWorker` stops the slots."""

    def subscribe(self) -> None:
        """No per-slot pub/sub thread: RQ's commands target forked work horses, which slots do not have."""

    def unsubscribe(self) -> None:
        """Nothing was subscribed."""

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        # RQ's loop keeps blocking on the queue until a job arrives; a slot must also notice a stop.
        while not self._stop_requested:
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time=timeout)
            if result is not None:
                return result
        return None

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # RQ's SimpleWorker uses `timeout + 60 s` because it never refreshes the heartbeat; we do.
        return self.job_heartbeat_ttl

    def execute_job(self, job: Job, queue: Queue) -> None:
        if fail_refused(job, queue):
            return
        execution = self.prepare_execution(job)
        self.running = (job, execution)
        try:
            self.perform_job(job, queue, execution)
        finally:
            self.running = None
        self.set_state("idle")

    def refresh_heartbeats(self) -> None:
        running = self.running
        if running is None:
            self.heartbeat()
            return
        self.maintain_heartbeats(*running)


class ThreadedWorker:
    """Run `slots` job threads on one RQ queue; call `run()` from the main thread.

    ```python
    worker = ThreadedWorker(connection=redis.Redis(), queue_name="brandbot:model:default", slots=8,
                            name="gpu0", thread_setup=lambda: current_service.set(service))
    worker.run()  # returns after SIGTERM/SIGINT and a drain
    ```
    """

    def __init__(
        self,
        *,
        connection: redis.Redis,
        queue_name: str,
        slots: int,
        name: str | None = None,
        thread_setup: Callable[[], object] = lambda: None,
        heartbeat_record: Callable[[], dict[str, str]] = dict,
        on_drain_timeout: Callable[[], None] = lambda: None,
        drain_grace_seconds: float = 30.0,
        on_tick: Callable[[int], None] = lambda depth: None,
        on_stop: Callable[[], None] = lambda: None,
        job_heartbeat_ttl: int = JOB_HEARTBEAT_TTL_SECONDS,
        maintenance_interval: float = MAINTENANCE_INTERVAL_SECONDS,
    ) -> None:
        self.connection = connection
        self.queue = Queue(
            queue_name, connection=connection, serializer=JSONSerializer, job_class=AdmittedJob
        )
        # A random part too: PIDs repeat, and RQ refuses a name a dead worker's record still holds.
        self.name = name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self._thread_setup = thread_setup
        self._heartbeat_record = heartbeat_record
        self._on_drain_timeout = on_drain_timeout
        self._on_tick = on_tick
        self._on_stop = on_stop
        self._grace = drain_grace_seconds
        self._job_heartbeat_ttl = job_heartbeat_ttl
        self._maintenance_interval = maintenance_interval
        self._stop = threading.Event()
        self.slots = [
            SlotWorker(
                [self.queue],
                connection=connection,
                name=f"{self.name}.slot{index}",
                serializer=JSONSerializer,
                worker_ttl=SLOT_WORKER_TTL_SECONDS,
                log_job_description=False,  # descriptions would be users' questions
                disable_default_exception_handler=False,
                job_heartbeat_ttl=job_heartbeat_ttl,
            )
            for index in range(slots)
        ]
        self._threads: list[threading.Thread] = []

    def request_stop(self, *_: object) -> None:
        self._on_stop()
        self._stop.set()

    def busy_slots(self) -> int:
        return sum(slot.running is not None for slot in self.slots)

    def run(self, *, handle_signals: bool = True) -> None:
        """Serve until stopped; `handle_signals=False` lets a benchmark run it in a thread."""
        if handle_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        self._recover_abandoned()
        for slot in self.slots:
            thread = threading.Thread(target=self._run_slot, args=(slot,), name=slot.name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._beat()
        next_maintenance = time.monotonic() + self._maintenance_interval
        while not self._stop.wait(HEARTBEAT_INTERVAL_SECONDS):
            self._beat()
            if time.monotonic() >= next_maintenance:
                self._recover_abandoned()
                next_maintenance = time.monotonic() + self._maintenance_interval
        self._drain()

    def _run_slot(self, slot: SlotWorker) -> None:
        self._thread_setup()
        try:
            slot.work(logging_level="WARNING", with_scheduler=False)
        except Exception:
            log.exception("job slot stopped unexpectedly", slot=slot.name)

    def _beat(self) -> None:
        try:
            for slot in self.slots:
                slot.refresh_heartbeats()
            record: Any = {
                "last_heartbeat": datetime.now(UTC).isoformat(),
                "in_flight": str(self.busy_slots()),
                "slots": str(len(self.slots)),
                **self._heartbeat_record(),
            }
            key = keys.worker_heartbeat(self.name)
            with self.connection.pipeline() as pipe:
                pipe.hset(key, mapping=record)
                pipe.expire(key, self._job_heartbeat_ttl)
                pipe.sadd(keys.WORKERS_SET, self.name)
                pipe.execute()
            self._on_tick(self.queue.count)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            log.warning("redis unreachable, heartbeat skipped", error=error)

    def _recover_abandoned(self) -> None:
        """Retry jobs whose worker died (their heartbeat expired); one worker per queue does it at a time."""
        try:
            if self.queue.acquire_maintenance_lock():
                try:
                    clean_registries(self.queue)
                finally:
                    self.queue.release_maintenance_lock()
            names: Any = self.connection.smembers(keys.WORKERS_SET)
            for name in names:
                if not self.connection.exists(keys.worker_heartbeat(keys.as_text(name))):
                    self.connection.srem(keys.WORKERS_SET, name)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            log.warning("redis unreachable, maintenance skipped", error=error)

    def _drain(self) -> None:
        log.info("draining", in_flight=self.busy_slots(), grace_seconds=self._grace)
        for slot in self.slots:
            slot._stop_requested = True
        deadline = time.monotonic() + self._grace
        while self.busy_slots() and time.monotonic() < deadline:
            self._beat()
            time.sleep(0.1)
        if self.busy_slots():
            log.warning("grace period over, requeueing unfinished requests", in_flight=self.busy_slots())
            self._on_drain_timeout()
            while self.busy_slots():
                time.sleep(0.05)
        for thread in self._threads:
            thread.join(timeout=SLOT_WORKER_TTL_SECONDS)
        self.connection.delete(keys.worker_heartbeat(self.name))
        self.connection.srem(keys.WORKERS_SET, self.name)
        log.info("stopped")
