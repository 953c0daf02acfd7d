"""N RQ job slots in one process, sharing one loaded model — RQ semantics kept, no fork per job.

RQ has no threaded worker, so each slot is a `SimpleWorker` running in its own thread; the main thread
owns what only it can do (signals), and what a `SimpleWorker` neglects (heartbeats of running jobs,
prompt recovery of jobs abandoned by a killed worker):

- signal handlers are installed only here; slots get no handlers and stop via `_stop_requested`;
- `TimerDeathPenalty` replaces SIGALRM (main-thread only); the engine enforces the real deadline;
- running jobs' heartbeats are refreshed every few seconds with a short TTL, and registry cleanup
  runs here on a short interval, so a SIGKILLed worker's jobs are retried within about a minute;
- SIGTERM drains: stop taking jobs, let running ones finish within a grace period, requeue the rest;
- each slot is registered with RQ here, before the first heartbeat can create its record (RQ refuses a
  name whose record exists), and supervised: a slot whose thread ended (e.g. a Redis timeout made RQ's
  loop quit) is registered again and restarted; slots that keep dying, or a `fatal_error` (the engine
  died), stop the process with `WorkerFailed` so its supervisor restarts it.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import clean_registries
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from brandbot import keys
from brandbot.errors import WorkerFailed
from brandbot.logs import get_logger
from brandbot.queue import oldest_wait_seconds
from worker.admission import AdmittedJob, fail_refused
from worker.solo_gate import SoloGate

log = get_logger(__name__)

HEARTBEAT_INTERVAL_SECONDS = 5
"""How often running jobs' heartbeats and this worker's record are refreshed (more often for short TTLs)."""

JOB_HEARTBEAT_TTL_SECONDS = 20
"""Default: a running job whose heartbeat is older than this is abandoned (its worker died)."""

MAINTENANCE_INTERVAL_SECONDS = 15.0
"""Default: how often abandoned jobs are looked for and retried (RQ's default is 10 minutes)."""

SLOT_WORKER_TTL_SECONDS = 16
"""RQ blocks on the queue for (ttl - 15) seconds at a time: 1 s, so an idle slot notices a stop at once."""

RECOVERY_LOCK_MIN_SECONDS = 10
"""The recovery lock's shortest life: a pass over a long registry takes a few seconds."""

SUPERVISE_INTERVAL_SECONDS = 1.0
"""How often dead slots are restarted and a fatal error (a dead engine) is looked for."""

SLOT_RECONNECT_MAX_WAIT_SECONDS = 2.0
"""An idle slot retries Redis at least this often (RQ backs off to 60 s): it serves soon after a restart."""

SLOT_DEATHS_TOLERATED_PER_SLOT = 3
"""More slot deaths than this per slot within `SLOT_DEATH_WINDOW_SECONDS` stop the process: a restart loop."""

SLOT_DEATH_WINDOW_SECONDS = 60.0


SOLO_WAIT_SECONDS = 1.0
"""A slot held back by a retried job running alone looks again this often (and notices a stop)."""


def is_retry(job: Job) -> bool:
    """A job run again after its worker died (or its attempt failed): it may be what killed the worker."""
    max_attempts = int(job.meta.get("max_attempts", 1))
    return job.retries_left is not None and job.retries_left < max_attempts - 1


class SlotWorker(SimpleWorker):
    """A `SimpleWorker` that runs in a thread of `ThreadedWorker`."""

    death_penalty_class = TimerDeathPenalty
    job_class = AdmittedJob  # only the reply job runs: see worker/admission.py

    def __init__(
        self,
        *args: Any,
        job_heartbeat_ttl: int = JOB_HEARTBEAT_TTL_SECONDS,
        gate: SoloGate | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate or SoloGate()
        self.running: tuple[Job, Execution] | None = None
        self.registered = False
        self.job_heartbeat_ttl = job_heartbeat_ttl
        self.max_connection_wait_time = SLOT_RECONNECT_MAX_WAIT_SECONDS
        # RQ's heartbeat pipeline sets `job_monitoring_interval + 60` as the worker key's TTL.
        self.job_monitoring_interval = job_heartbeat_ttl

    def _install_signal_handlers(self) -> None:
        """Signals can only be handled by the main thread; `ThreadedWorker` stops the slots."""

    def register_birth(self) -> None:
        """`ThreadedWorker` registers each slot before its first heartbeat; RQ's `work()` asks again."""
        if not self.registered:
            super().register_birth()
            self.registered = True

    def subscribe(self) -> None:
        """No per-slot pub/sub thread: RQ's commands target forked work horses, which slots do not have."""

    def unsubscribe(self) -> None:
        """Nothing was subscribed."""

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        # RQ's loop keeps blocking on the queue until a job arrives; a slot must also notice a stop.
        while not self._stop_requested:
            if not self.gate.wait_open(timeout=SOLO_WAIT_SECONDS):
                continue  # a retried job waits to run alone: take nothing that could die with it
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
        if not self.gate.is_open():
            # Taken in the instant a retried job closed the gate (this slot was already waiting on the
            # queue): back to the front of the queue, untouched, so it cannot die beside that job.
            with queue.connection.pipeline() as pipeline:
                pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
                pipeline.lpush(queue.key, job.id)
                pipeline.execute()
            return
        execution = self.prepare_execution(job)
        self.running = (job, execution)  # from here the main thread keeps its heartbeat fresh
        try:
            with self.gate.alone() if is_retry(job) else self.gate.beside():
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
    worker.run()  # returns after SIGTERM/SIGINT and a drain; raises WorkerFailed if it cannot go on
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
        fatal_error: Callable[[], str | None] = lambda: None,
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
        self._fatal_error = fatal_error
        self._on_drain_timeout = on_drain_timeout
        self._on_tick = on_tick
        self._on_stop = on_stop
        self._grace = drain_grace_seconds
        self._job_heartbeat_ttl = job_heartbeat_ttl
        self._maintenance_interval = maintenance_interval
        # Outlives a recovery pass, expires soon after a worker killed during one.
        self._recovery_lock_seconds = max(int(maintenance_interval * 2), RECOVERY_LOCK_MIN_SECONDS)
        self._stop = threading.Event()
        self._gate = SoloGate()
        self.slots = [self._new_slot(index) for index in range(slots)]
        self._threads: list[threading.Thread | None] = [None] * slots
        self._slot_deaths: deque[float] = deque()
        self._redis_reachable = True

    def _new_slot(self, index: int) -> SlotWorker:
        return SlotWorker(
            [self.queue],
            connection=self.connection,
            name=f"{self.name}.slot{index}",
            serializer=JSONSerializer,
            worker_ttl=SLOT_WORKER_TTL_SECONDS,
            log_job_description=False,  # descriptions would be users' questions
            disable_default_exception_handler=False,
            job_heartbeat_ttl=self._job_heartbeat_ttl,
            gate=self._gate,
        )

    def request_stop(self, *_: object) -> None:
        self._on_stop()
        self._stop.set()

    def busy_slots(self) -> int:
        return sum(slot.running is not None for slot in self.slots)

    def live_slots(self) -> int:
        """Slots whose thread is running RQ's loop: the jobs this process can take at once right now."""
        return sum(thread is not None and thread.is_alive() for thread in self._threads)

    def run(self, *, handle_signals: bool = True) -> None:
        """Serve until stopped; `handle_signals=False` lets a benchmark run it in a thread."""
        if handle_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        self._recover_abandoned()
        for index in range(len(self.slots)):
            self._start_slot(index)
        self._beat()
        # A running job's heartbeat must be refreshed well within its TTL, or a recovery pass (here or
        # in another worker) takes it for abandoned while it runs.
        beat_interval = min(HEARTBEAT_INTERVAL_SECONDS, self._job_heartbeat_ttl / 3)
        next_beat = time.monotonic() + beat_interval
        next_maintenance = time.monotonic() + self._maintenance_interval
        failure: str | None = None
        while not self._stop.wait(SUPERVISE_INTERVAL_SECONDS):
            failure = self._fatal_error() or self._restart_dead_slots()
            if failure is not None:
                log.error("worker cannot go on, stopping", reason=failure)
                self.request_stop()
                break
            now = time.monotonic()
            if now >= next_beat or not self._redis_reachable:  # beat at once when Redis is back
                self._beat()
                next_beat = now + beat_interval
            if now >= next_maintenance:
                self._recover_abandoned()
                next_maintenance = time.monotonic() + self._maintenance_interval
        self._drain()
        if failure is not None:
            raise WorkerFailed(failure)

    def _start_slot(self, index: int) -> bool:
        """Register slot `index` with RQ (before any heartbeat touches its record), then start its thread."""
        previous = self.slots[index]
        try:
            if previous.registered:
                previous.register_death()  # its thread ended without saying so (e.g. Redis was down)
            slot = self._new_slot(index) if previous.registered else previous  # RQ talks to Redis here
            slot.register_birth()
        except redis.RedisError as error:
            log.warning("job slot not registered yet", slot=previous.name, error_type=type(error).__name__)
            return False
        self.slots[index] = slot
        thread = threading.Thread(target=self._run_slot, args=(slot,), name=slot.name, daemon=True)
        self._threads[index] = thread
        thread.start()
        return True

    def _restart_dead_slots(self) -> str | None:
        """Restart every slot whose thread ended; a reason to stop if slots die faster than they can serve."""
        now = time.monotonic()
        for index, thread in enumerate(self._threads):
            if thread is not None and thread.is_alive():
                continue
            if thread is not None:
                self._threads[index] = None
                self._slot_deaths.append(now)
                log.warning("job slot died, restarting it", slot=self.slots[index].name)
            self._start_slot(index)
        while self._slot_deaths and self._slot_deaths[0] < now - SLOT_DEATH_WINDOW_SECONDS:
            self._slot_deaths.popleft()
        if len(self._slot_deaths) > SLOT_DEATHS_TOLERATED_PER_SLOT * len(self.slots):
            return f"{len(self._slot_deaths)} job slot deaths within {SLOT_DEATH_WINDOW_SECONDS:.0f} s"
        return None

    def _run_slot(self, slot: SlotWorker) -> None:
        self._thread_setup()
        try:
            slot.work(logging_level="WARNING", with_scheduler=False)
        except Exception as error:  # the supervisor restarts it; RQ already logged what ended its loop
            log.warning("job slot stopped", slot=slot.name, error_type=type(error).__name__)

    def _beat(self) -> None:
        try:
            for index, slot in enumerate(self.slots):
                thread = self._threads[index]
                if thread is not None and thread.is_alive():  # a dead slot's record must not be revived
                    slot.refresh_heartbeats()
            record: Any = {
                "last_heartbeat": datetime.now(UTC).isoformat(),
                "in_flight": str(self.busy_slots()),
                "slots": str(len(self.slots)),
                "live_slots": str(self.live_slots()),
                # For `brandbot status` run as the `status` user, which may not read job hashes.
                "oldest_wait_seconds": str(oldest_wait_seconds(self.connection, self.queue.name) or 0.0),
                **self._heartbeat_record(),
            }
            key = keys.worker_heartbeat(self.name)
            with self.connection.pipeline() as pipe:
                pipe.hset(key, mapping=record)
                pipe.expire(key, self._job_heartbeat_ttl)
                pipe.sadd(keys.WORKERS_SET, self.name)
                pipe.execute()
            self._on_tick(self.queue.count)
        except redis.RedisError as error:
            if self._redis_reachable:
                log.warning("redis unreachable, heartbeat skipped", error_type=type(error).__name__)
            self._redis_reachable = False
            return
        if not self._redis_reachable:
            log.info("redis reachable again")
        self._redis_reachable = True

    def _recover_abandoned(self) -> None:
        """Retry jobs whose worker died (their heartbeat expired); one worker per queue does it at a time.

        The lock is our own, short-lived one: RQ's (`acquire_maintenance_lock`) lives 15 minutes, so a
        worker SIGKILLed while holding it would stop every recovery for that long.
        """
        lock = keys.recovery_lock(self.queue.name)
        try:
            if self.connection.set(lock, self.name, nx=True, ex=self._recovery_lock_seconds):
                try:
                    clean_registries(self.queue)
                    self._requeue_stranded()
                finally:
                    self.connection.delete(lock)
            names: Any = self.connection.smembers(keys.WORKERS_SET)
            for name in names:
                if not self.connection.exists(keys.worker_heartbeat(keys.as_text(name))):
                    self.connection.srem(keys.WORKERS_SET, name)
        except redis.RedisError as error:
            log.warning("redis unreachable, maintenance skipped", error_type=type(error).__name__)

    def _requeue_stranded(self) -> None:
        """Requeue jobs left in RQ's intermediate list by a worker killed between taking and starting them.

        A job is there for a moment in a live worker too, so only one seen there on an earlier pass, longer
        than a job heartbeat ago, is taken for stranded (RQ's own clean-up waits a minute and runs every
        ten).
        """
        intermediate = self.queue.intermediate_queue
        started = self.queue.started_job_registry
        for job_id in intermediate.get_job_ids():
            if job_id in started or intermediate.set_first_seen(job_id):
                continue
            first_seen = intermediate.get_first_seen(job_id)
            if (
                first_seen is None
                or (datetime.now(UTC) - first_seen).total_seconds() < self._job_heartbeat_ttl
            ):
                continue
            job = self.queue.fetch_job(job_id)
            # A stale entry, not a stranded job: its worker died after starting it (the started registry's
            # clean-up retries it), so it ran, runs or waits in the queue again. Only the entry goes.
            if (
                job is None
                or job.get_status() != JobStatus.QUEUED
                or self.connection.lpos(self.queue.key, job_id) is not None
            ):
                intermediate.remove(job_id)
                continue
            # It never started, so this is not another attempt: back to the front of the queue, untouched.
            log.warning("requeueing a job its worker took but never started", request_id=job_id)
            with self.connection.pipeline() as pipeline:
                pipeline.lrem(self.queue.intermediate_queue_key, 1, job_id)
                pipeline.lpush(self.queue.key, job_id)
                pipeline.execute()

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
        # One wait for them all: with Redis away each slot sits in RQ's reconnect sleep, which never looks
        # at a stop, and a wait per slot added up to minutes. The threads are daemons; none outlives us.
        give_up_at = time.monotonic() + SLOT_WORKER_TTL_SECONDS
        for thread in self._threads:
            if thread is not None:
                thread.join(timeout=max(0.0, give_up_at - time.monotonic()))
        try:
            self.connection.delete(keys.worker_heartbeat(self.name))
            self.connection.srem(keys.WORKERS_SET, self.name)
        except redis.RedisError as error:
            log.warning("redis unreachable, worker record left to expire", error_type=type(error).__name__)
        log.info("stopped")
