"""A stalled engine stops its worker instead of freezing it.

An engine whose generation thread is stuck (a hung CUDA call, a deadlock in a library) makes no progress
and never fails: without a watchdog its worker would hold its questions forever, heartbeats fresh, so no
other worker would ever retry them. The watchdog counts a delta or an end of any stream as progress; when
the engine has requests in flight and none progressed for `stall_seconds`, it declares the engine
stalled: every stream ends with `EngineDied` (their questions are retried on another worker), and the
worker stops as it does when the engine dies (a non-zero exit: its supervisor starts it again).

```python
watchdog = EngineWatchdog(engine, stall_seconds=60)
watchdog.watch()                    # from now on, streams report progress
worker = ThreadedWorker(..., fatal_error=watchdog.failure)   # looked at every second
```
"""

from __future__ import annotations

import time
from collections.abc import Callable

from brandbot.logs import get_logger
from worker.engines.base import Engine, GenerationStream, SamplingSettings

log = get_logger(__name__)


class EngineWatchdog:
    def __init__(
        self, engine: Engine, *, stall_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._stall_seconds = stall_seconds
        self._clock = clock
        self._progress_at = clock()

    def watch(self) -> None:
        """Have every stream the engine starts from now on report its progress here."""
        submit = self._engine.submit

        def submit_watched(
            prompt: str, sampling: SamplingSettings, *, deadline_seconds: float
        ) -> GenerationStream:
            stream = submit(prompt, sampling, deadline_seconds=deadline_seconds)
            stream.on_progress = self._progressed
            return stream

        setattr(self._engine, "submit", submit_watched)  # noqa: B010 - an instance attribute over the method

    def failure(self) -> str | None:
        """Why the engine can generate nothing more (it died, or it stalled just now), or None."""
        if self._engine.failure is not None:
            return self._engine.failure
        now = self._clock()
        if not self._engine.in_flight():
            self._progress_at = now  # idle is not stalled
            return None
        if now - self._progress_at < self._stall_seconds:
            return None
        reason = f"the {self._engine.name} engine made no progress for {self._stall_seconds:g} s"
        log.critical("engine stalled", in_flight=self._engine.in_flight(), stall_seconds=self._stall_seconds)
        self._engine.declare_stalled(reason)
        return reason

    def _progressed(self) -> None:
        self._progress_at = self._clock()
