"""One scenario per fault, in turn, on one running stack: ask, hurt, wait, count.

```python
plan = SoakPlan(run_dir=Path(".soak"), model_dir=Path("models/tiny"), questions=150, users=50)
tallies = await run_soak(plan, progress=print)
```
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from brandbot.soak.faults import FAULTS, Fault
from brandbot.soak.load import People, Question, Watch
from brandbot.soak.stack import SoakStack, StackPlan
from brandbot.soak.tally import Tally

RECOVERY_SECONDS = 120.0
"""After a scenario, the processes must be back (workers beating, front-ends connected) within this."""

Advance = Callable[[int], None]
Bar = Callable[[str, int], AbstractContextManager[Advance]]


@dataclass(frozen=True)
class SoakPlan:
    run_dir: Path
    model_dir: Path
    questions: int = 1000
    users: int = 200
    discord_share: float = 0.25
    workers: int = 2
    worker_concurrency: int = 8
    max_new_tokens: int = 24
    duration_seconds: float = 600.0
    """Longest a scenario waits for every question to settle; what is unsettled then is lost."""
    faults: tuple[str, ...] = tuple(FAULTS)

    def stack_plan(self) -> StackPlan:
        return StackPlan(
            run_dir=self.run_dir,
            model_dir=self.model_dir,
            workers=self.workers,
            worker_concurrency=self.worker_concurrency,
            max_new_tokens=self.max_new_tokens,
            channels=self.users,  # one channel each: edits are paced per channel
            users=self.users,
        )


async def run_soak(
    plan: SoakPlan, *, bar: Bar, on_tally: Callable[[Tally], None] = lambda _t: None
) -> list[Tally]:
    stack = SoakStack(plan.stack_plan())
    tallies: list[Tally] = []
    try:
        await stack.start()
        people = People(stack)
        for name in plan.faults:
            tally = await run_scenario(stack, people, FAULTS[name], plan, bar)
            tallies.append(tally)
            on_tally(tally)
    finally:
        await stack.stop()
    return tallies


async def run_scenario(stack: SoakStack, people: People, fault: Fault, plan: SoakPlan, bar: Bar) -> Tally:
    await stack.wait_ready()
    restarts_before = stack.restarts()
    started = time.monotonic()
    marked = {plan.questions // 2: fault.marker} if fault.marker else {}
    with bar(f"{fault.name}: answers", plan.questions) as advance:
        questions = await people.ask(plan.questions, discord_share=plan.discord_share, marked=marked)
        for question in questions:
            question.expect_error = question.expect_error and fault.marker_expects_error
        watch = Watch(people, questions)
        watch.on_settled = advance
        watching = asyncio.create_task(watch.run())
        try:
            await fault.act(stack, watch)
            await watch.until_all_settled(plan.duration_seconds)
        finally:
            watching.cancel()
        watch.look()
    seconds = time.monotonic() - started
    recovered = True
    try:
        await stack.wait_ready(RECOVERY_SECONDS)
    except TimeoutError:
        recovered = False
    tally = Tally.of(
        fault.name,
        questions,
        seconds=seconds,
        restarts=stack.restarts() - restarts_before,
        recovered=recovered,
    )
    if not tally.passed:
        write_unsettled(plan.run_dir / f"unsettled-{fault.name}.jsonl", questions)
    return tally


def write_unsettled(path: Path, questions: list[Question]) -> None:
    """What each question that did not end in exactly one answer (or its one expected error) shows, for
    the logs' request ids to be looked up by: where it was asked, and its finished and open messages."""
    with path.open("w", encoding="utf-8") as out:
        for q in questions:
            ended_well = not q.writing and q.answers + q.errors == 1 and (q.answers == 1 or q.expect_error)
            if not ended_well:
                out.write(json.dumps(dataclasses.asdict(q)) + "\n")


def no_bar(_title: str, _total: int) -> AbstractContextManager[Advance]:
    from contextlib import contextmanager

    @contextmanager
    def nothing() -> Iterator[Advance]:
        yield lambda _n: None

    return nothing()
