"""Before and after: held-out questions asked through real `brandbot worker`s, base model vs fine-tune.

What is measured is what ships: each side is the same `brandbot worker` process users get, started on a
private queue (`tune-<label>-<random>`) with the base model folder, plus `BRANDBOT_LORA_DIR` for the
adapter (or the merged folder). Questions go through the real queue; the dataset's own check is applied
to every answer — the closing words all its answers share (a sign-off) — and the persona's eval file
(`prompts/evals/<persona>.yaml`), if it has one, is run by `brandbot prompts eval`'s own runner against
the same worker. The step takes a model folder, an optional adapter and the cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from brandbot.contract import (
    DoneEvent,
    ErrorEvent,
    GenerationRequest,
    Limits,
    Platform,
    ReplyTarget,
    Role,
    Turn,
    UserRef,
)
from brandbot.evals.runner import CaseOutcome, Side
from brandbot.evals.runner import run_side as run_evals
from brandbot.evals.workers import own_worker, worker_environment
from brandbot.promptfiles.evals import EvalSuite
from brandbot.promptfiles.models import Persona
from brandbot.queue import RequestQueue
from brandbot.settings import Settings
from brandbot.streams import ReplyLost

START_WAIT_SECONDS = 300.0
"""Loading a large model can take minutes; past this, the check gives up with the worker's last line."""

ANSWER_WAIT_SECONDS = 300.0
FOLLOW_TICK_SECONDS = 1.0
ASKED_AT_ONCE = 4


@dataclass(frozen=True)
class HeldOutCase:
    question: str
    ends_with: str

    def passes(self, answer: str) -> bool:
        return _plain(answer).endswith(_plain(self.ends_with))


@dataclass(frozen=True)
class Outcome:
    question: str
    answer: str | None
    passed: bool
    error: str | None = None


@dataclass(frozen=True)
class SideResult:
    label: str
    outcomes: list[Outcome]

    @property
    def passed(self) -> int:
        return sum(outcome.passed for outcome in self.outcomes)

    @property
    def rate(self) -> float:
        return self.passed / len(self.outcomes) if self.outcomes else 0.0


def _plain(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(" .!")


@contextlib.asynccontextmanager
async def check_worker(
    queue: RequestQueue, settings: Settings, *, model_dir: Path, lora_dir: Path | None, label: str
) -> AsyncIterator[str]:
    """A real worker on `model_dir` (+ `lora_dir`), absolute paths, on a private queue; yields its name."""
    # The worker serves the folder checked, never the one (or the adapter) the settings name.
    env = worker_environment(settings, leave_out=("lora_dir", "model_dir", "model_name"))
    env["BRANDBOT_MODEL_DIR"] = str(model_dir)
    if lora_dir is not None:
        env["BRANDBOT_LORA_DIR"] = str(lora_dir)
    async with own_worker(queue, env, name=f"tune-{label}", start_wait_seconds=START_WAIT_SECONDS) as model:
        yield model


async def ask_cases(
    queue: RequestQueue,
    model: str,
    persona: str,
    cases: Sequence[HeldOutCase],
    *,
    label: str,
    max_new_tokens: int | None = None,
    seed: int = 0,
    wait_seconds: float = ANSWER_WAIT_SECONDS,
) -> SideResult:
    """Every case asked of `model`'s queue as `persona`, a few at a time, judged in order."""
    slots = asyncio.Semaphore(ASKED_AT_ONCE)

    async def one(case: HeldOutCase) -> Outcome:
        async with slots:
            request = GenerationRequest(
                target=ReplyTarget(platform=Platform.SLACK, channel_id="C0TUNECHECK"),
                user=UserRef(id="U0TUNECHECK", display_name="a customer"),
                persona=persona,
                turns=[Turn(role=Role.USER, content=case.question)],
                limits=Limits(max_new_tokens=max_new_tokens),
                seed=seed,  # the same answer every time for the same model: before and after compare
            )
            answer, error = await _ask(queue, request, model, wait_seconds)
            return Outcome(case.question, answer, answer is not None and case.passes(answer), error)

    return SideResult(label, list(await asyncio.gather(*(one(case) for case in cases))))


async def _ask(
    queue: RequestQueue, request: GenerationRequest, model: str, wait_seconds: float
) -> tuple[str | None, str | None]:
    await queue.enqueue(request, model=model)
    give_up_at = time.monotonic() + wait_seconds
    async with queue.follow(request.request_id, watch_job=True) as follower:
        while (left := give_up_at - time.monotonic()) > 0:
            try:
                arrived = await follower.next(timeout=min(left, FOLLOW_TICK_SECONDS))
            except ReplyLost as lost:
                return None, f"no answer ({lost.reason})"
            if arrived is None:
                continue
            event = arrived[1]
            if isinstance(event, DoneEvent):
                return event.text, None
            if isinstance(event, ErrorEvent):
                return None, f"worker error ({event.kind.value}): {event.message}"
    await queue.cancel(request.request_id)
    return None, f"no answer within {wait_seconds:g} s"


async def run_side(
    settings: Settings,
    *,
    model_dir: Path,
    lora_dir: Path | None,
    persona: str,
    cases: Sequence[HeldOutCase],
    label: str,
    max_new_tokens: int | None = None,
    seed: int = 0,
    suites: Sequence[EvalSuite] = (),
    personas: dict[str, Persona] | None = None,
) -> tuple[SideResult, list[CaseOutcome]]:
    """One model folder (and adapter) against the held-out cases and the persona's eval file (`suites`,
    run by `brandbot prompts eval`'s runner), through one worker of the check's own."""
    queue = RequestQueue.from_settings(settings)
    try:
        async with check_worker(
            queue, settings, model_dir=model_dir, lora_dir=lora_dir, label=label
        ) as model:
            held = await ask_cases(
                queue, model, persona, cases, label=label, max_new_tokens=max_new_tokens, seed=seed
            )
            evals: list[CaseOutcome] = []
            if suites:
                evals = await run_evals(
                    queue,
                    suites,
                    Side(label, model, dict(personas or {})),
                    company=settings.company_name,
                    concurrency=ASKED_AT_ONCE,
                    wait_seconds=ANSWER_WAIT_SECONDS,
                )
            return held, evals
    finally:
        await queue.close()
