"""A retried question runs alone in its worker: if it is what killed the last worker, it kills no other.

A question whose worker died is retried once. Were it retried beside others and kill this worker too (a
"poison" question: one that crashes the engine, every time), the questions beside it would be abandoned
with it and lose their one retry through no fault of their own. So a slot that takes a retried job waits
until the other slots' jobs have finished, the other slots take no new job meanwhile (one taken in that
instant goes back to the queue untouched), and the retried job runs alone. First attempts still run side
by side.

```python
gate = SoloGate()
with gate.alone() if retried else gate.beside():   # in a slot, around running the job
    ...
gate.wait_open(timeout=1.0)                         # in a slot, before taking a job
```
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SoloGate:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._beside = 0  # first attempts running
        self._alone_waiting_or_running = 0
        self._alone_running = False

    def is_open(self) -> bool:
        """No retried job waits or runs: a job taken now may run."""
        with self._changed:
            return self._alone_waiting_or_running == 0

    def wait_open(self, timeout: float) -> bool:
        """Until no retried job waits or runs (then a slot may take a job); False after `timeout`."""
        with self._changed:
            return self._changed.wait_for(lambda: self._alone_waiting_or_running == 0, timeout)

    @contextmanager
    def beside(self) -> Iterator[None]:
        """Run a first attempt (beside others)."""
        with self._changed:
            self._beside += 1
        try:
            yield
        finally:
            with self._changed:
                self._beside -= 1
                self._changed.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        """Run a retried job once nothing else runs; one at a time."""
        with self._changed:
            self._alone_waiting_or_running += 1
            self._changed.wait_for(lambda: self._beside == 0 and not self._alone_running)
            self._alone_running = True
        try:
            yield
        finally:
            with self._changed:
                self._alone_running = False
                self._alone_waiting_or_running -= 1
                self._changed.notify_all()
