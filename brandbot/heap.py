"""The garbage collector of a long-running process, set once it has started.

A started front-end holds a large heap that lives as long as the process: modules, the Slack and Discord
clients, pydantic's validators, prompt files; a worker, its loaded model's Python objects too. CPython's
collector still walks all of it on every full collection, and a burst of questions (hundreds of tasks,
futures and requests) triggers those: in `brandbot bench slack` one full collection took 89 ms in the
middle of a 500-mention burst, and collections took a quarter of the burst's time. Frozen, the startup heap
is no longer walked; young objects are collected less often, each collection still short.

```python
freeze_startup_heap()  # at the entry point, once the process has built what it keeps
```
"""

from __future__ import annotations

import gc

YOUNG_COLLECTION_THRESHOLD = 20_000
"""Allocations (net of frees) between two collections of young objects; CPython's default is 700."""


def freeze_startup_heap() -> None:
    """Collect once, then move every object alive now out of the collector's sight for good."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)
