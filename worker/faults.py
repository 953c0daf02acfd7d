"""Faults a test injects into a real `brandbot worker` process — test-only, all off unless a variable is set.

The CLI entry point reads them once from `BRANDBOT_TEST_*` environment variables and hands them to
`run_worker`; nothing else reads the environment. They reproduce what cannot be provoked from outside on a
CPU: a slow slot start-up (the heartbeat race), a slow model load, an engine that runs one request at a
time (ExLlamaV2 without flash-attn), an engine whose generation thread dies, and a shorter wait for Redis.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from brandbot.logs import get_logger
from worker.engines.base import Engine, GenerationStream, SamplingSettings

log = get_logger(__name__)

SLOT_START_DELAY = "BRANDBOT_TEST_SLOT_START_DELAY_SECONDS"
ENGINE_BATCH_LIMIT = "BRANDBOT_TEST_ENGINE_BATCH_LIMIT"
KILL_ENGINE_THREAD_AT_IN_FLIGHT = "BRANDBOT_TEST_KILL_ENGINE_THREAD_AT_IN_FLIGHT"
PUBLISH_OUTAGE = "BRANDBOT_TEST_PUBLISH_OUTAGE_SECONDS"
DIE_ON_PROMPT_TEXT = "BRANDBOT_TEST_DIE_ON_PROMPT_TEXT"
STALL_ON_PROMPT_TEXT = "BRANDBOT_TEST_STALL_ON_PROMPT_TEXT"
LOAD_DELAY = "BRANDBOT_TEST_LOAD_DELAY_SECONDS"

WATCH_INTERVAL_SECONDS = 0.01


class EngineThreadKilled(BaseException):
    """Raised inside the engine's generation thread: a BaseException, so no `except Exception` absorbs it."""


@dataclass(frozen=True)
class WorkerFaults:
    slot_start_delay_seconds: float = 0.0
    """Each job slot's thread waits this long before it starts (a slow start-up)."""

    engine_batch_limit: int | None = None
    """The engine runs at most this many requests at once, as ExLlamaV2 does without flash-attn."""

    kill_engine_thread_at_in_flight: int | None = None
    """The engine's generation thread is killed once this many requests are in it."""

    publish_outage_seconds: float | None = None
    """A reply waits this long for Redis instead of `PUBLISH_OUTAGE_SECONDS` (a test need not wait 30 s)."""

    die_on_prompt_text: str | None = None
    """The worker process kills itself (SIGKILL) when a prompt holding this text reaches the engine: a
    poison question, deterministic however fast the model would have answered it."""

    load_delay_seconds: float = 0.0
    """The worker waits this long before it loads the model (a large model on a slow disk)."""

    stall_on_prompt_text: str | None = None
    """The engine's generation thread gets stuck for good when a prompt holding this text reaches the
    engine: every generation in it stops making progress, nothing fails (a hung CUDA call)."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> WorkerFaults:
        def number(name: str) -> int | None:
            return int(environ[name]) if environ.get(name) else None

        return cls(
            slot_start_delay_seconds=float(environ.get(SLOT_START_DELAY) or 0.0),
            engine_batch_limit=number(ENGINE_BATCH_LIMIT),
            kill_engine_thread_at_in_flight=number(KILL_ENGINE_THREAD_AT_IN_FLIGHT),
            publish_outage_seconds=float(environ[PUBLISH_OUTAGE]) if environ.get(PUBLISH_OUTAGE) else None,
            die_on_prompt_text=environ.get(DIE_ON_PROMPT_TEXT) or None,
            load_delay_seconds=float(environ.get(LOAD_DELAY) or 0.0),
            stall_on_prompt_text=environ.get(STALL_ON_PROMPT_TEXT) or None,
        )

    def delay_slot_start(self, setup: Callable[[], object]) -> Callable[[], object]:
        if not self.slot_start_delay_seconds:
            return setup

        def delayed() -> object:
            time.sleep(self.slot_start_delay_seconds)
            return setup()

        return delayed

    def arm(self, engine: Engine) -> None:
        """Start watching `engine`; kill its generation thread once enough requests are in it."""
        self._arm_poison(engine)
        self._arm_stall(engine)
        threshold = self.kill_engine_thread_at_in_flight
        thread = engine.generation_thread
        if threshold is None or thread is None:
            return

        def watch() -> None:
            while engine.in_flight() < threshold:
                time.sleep(WATCH_INTERVAL_SECONDS)
            log.warning("fault injection: killing the engine thread", in_flight=engine.in_flight())
            assert thread.ident is not None
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread.ident), ctypes.py_object(EngineThreadKilled)
            )

        threading.Thread(target=watch, name="fault-kill-engine-thread", daemon=True).start()

    def _arm_poison(self, engine: Engine) -> None:
        poison = self.die_on_prompt_text
        if not poison:
            return
        submit = engine.submit

        def submit_or_die(
            prompt: str, sampling: SamplingSettings, *, deadline_seconds: float
        ) -> GenerationStream:
            if poison in prompt:
                log.warning("fault injection: the worker dies of a poison question")
                os.kill(os.getpid(), signal.SIGKILL)
            return submit(prompt, sampling, deadline_seconds=deadline_seconds)

        setattr(engine, "submit", submit_or_die)  # noqa: B010 - an instance attribute over the method

    def _arm_stall(self, engine: Engine) -> None:
        marker = self.stall_on_prompt_text
        if not marker:
            return
        stalled = threading.Event()
        submit = engine.submit

        def submit_or_stall(
            prompt: str, sampling: SamplingSettings, *, deadline_seconds: float
        ) -> GenerationStream:
            if marker in prompt:
                log.warning("fault injection: the engine stalls")
                stalled.set()
            stream = submit(prompt, sampling, deadline_seconds=deadline_seconds)
            for name in ("put_delta", "finish"):  # both run in the generation thread: it sticks there
                setattr(stream, name, stuck_once(stalled, getattr(stream, name)))
            return stream

        setattr(engine, "submit", submit_or_stall)  # noqa: B010 - an instance attribute over the method


def stuck_once(stalled: threading.Event, step: Callable[..., None]) -> Callable[..., None]:
    def maybe_stuck(*args: object) -> None:
        if stalled.is_set():
            threading.Event().wait()  # for good: the generation thread never comes back
        step(*args)

    return maybe_stuck
