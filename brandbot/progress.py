"""Progress of long work (building, converting and loading models; benchmarks): a bar in a terminal,
plain lines otherwise (logs, CI), always on standard error so standard output stays the command's result.

```python
with progress_steps("Building the demo model", total=3) as step:
    step("loading GGUF")
    ...
    step("saving safetensors")
```

Each `step(label)` says that work starts; the bar counts the steps finished before it. On leaving the block
the bar is full (or, after an error, stays where the work stopped).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

Step = Callable[[str], None]


def no_progress(label: str) -> None:
    """A `Step` that shows nothing (the default where a caller passes none)."""


@contextmanager
def progress_steps(title: str, *, total: int, stream: TextIO | None = None) -> Iterator[Step]:
    """Show `total` steps of `title`; yields `step(label)`, called as each step starts."""
    out = stream or sys.stderr
    if out.isatty():
        with _bar(title, total, out) as step:
            yield step
        return
    started = time.monotonic()
    count = 0

    def line(label: str) -> None:
        nonlocal count
        count += 1
        print(f"{title}: [{count}/{total}] {label}", file=out, flush=True)

    yield line
    print(f"{title}: done in {time.monotonic() - started:.1f} s", file=out, flush=True)


@contextmanager
def _bar(title: str, total: int, out: TextIO) -> Iterator[Step]:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(file=out)) as progress:
        task = progress.add_task(title, total=total)
        begun = False

        def step(label: str) -> None:
            nonlocal begun
            if begun:
                progress.advance(task)
            begun = True
            progress.update(task, description=f"{title}: {label}")

        yield step
        progress.update(task, completed=total, description=title)


Advance = Callable[[int], None]


@contextmanager
def progress_count(title: str, *, total: int, stream: TextIO | None = None) -> Iterator[Advance]:
    """Count `total` things done; yields `advance(n)`. A bar in a terminal, else a line per tenth done."""
    out = stream or sys.stderr
    if out.isatty():
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=Console(file=out),
        ) as progress:  # fmt: skip
            task = progress.add_task(title, total=total)
            yield lambda n: progress.advance(task, n)
        return
    done, shown = 0, 0

    def advance(n: int) -> None:
        nonlocal done, shown
        done += n
        tenth = done * 10 // max(total, 1)
        if tenth > shown:
            shown = tenth
            print(f"{title}: {done}/{total}", file=out, flush=True)

    yield advance
