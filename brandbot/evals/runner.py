"""Asking an eval's questions the way a chat does: on the model's queue, answered by a real worker.

What is measured is what ships: each case becomes a `GenerationRequest` on the RQ queue, a `brandbot
worker` renders the persona from its own prompt folder and generates, and the answer is read back from
the reply stream, exactly as a front-end relays it. Only the seed is fixed, so reruns are comparable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from brandbot.contract import (
    DoneEvent,
    ErrorEvent,
    GenerationRequest,
    ReplyTarget,
    Role,
    StartEvent,
    Turn,
    UserRef,
)
from brandbot.errors import BrandbotError
from brandbot.evals.checks import CheckResult, judge
from brandbot.promptfiles.evals import EvalCase, EvalSuite
from brandbot.promptfiles.models import Persona
from brandbot.queue import RequestQueue
from brandbot.streams import ReplyLost
from brandbot.templating import render_text

EVAL_CHANNEL_ID = "eval"
EVAL_USER_ID = "eval"

FOLLOW_TICK_SECONDS = 1.0
"""How often a waiting case looks at its clock (the reader delivers events as they come)."""


class NoWorker(BrandbotError):
    """No live worker serves a model queue the eval needs: nothing would ever answer."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"no worker serves model {model!r}: start `brandbot worker` with BRANDBOT_MODEL_NAME={model}"
        )
        self.model = model


@dataclass(frozen=True)
class CaseOutcome:
    persona: str
    case: str
    answer: str | None
    finish_reason: str | None
    error: str | None  # no answer: why (the worker's error, a lost job, the wait ran out)
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.error is None and all(check.passed for check in self.checks)


@dataclass(frozen=True)
class Side:
    """What the cases run against: a model queue, with the persona files its workers read."""

    label: str  # shown in reports: a folder or a model name
    model: str | None  # the queue; None = each persona's own `model`
    personas: dict[str, Persona]  # as the workers on that queue see them (banned phrases, refusal)


def build_request(suite: EvalSuite, case: EvalCase) -> GenerationRequest:
    turns: list[Turn] = []
    for exchange in case.history:
        turns.append(Turn(role=Role.USER, content=exchange.user, name=case.user))
        turns.append(Turn(role=Role.ASSISTANT, content=exchange.assistant))
    turns.append(Turn(role=Role.USER, content=case.question, name=case.user))
    return GenerationRequest(
        target=ReplyTarget(platform=case.platform, channel_id=EVAL_CHANNEL_ID),
        user=UserRef(id=EVAL_USER_ID, display_name=case.user),
        channel_name=case.channel,
        persona=suite.persona.name,
        turns=turns,
        seed=suite.file.seed,
    )


async def run_side(
    queue: RequestQueue,
    suites: Sequence[EvalSuite],
    side: Side,
    *,
    company: str,
    concurrency: int,
    wait_seconds: float,
) -> list[CaseOutcome]:
    """Every case of `suites` against `side`, `concurrency` at a time, in the suites' order."""
    for model in sorted({side.model or suite.persona.model for suite in suites}):
        if await queue.workers_alive(model) == 0:
            raise NoWorker(model)
    slots = asyncio.Semaphore(concurrency)

    async def one(suite: EvalSuite, case: EvalCase) -> CaseOutcome:
        async with slots:
            return await _run_case(queue, suite, case, side, company=company, wait_seconds=wait_seconds)

    return list(await asyncio.gather(*(one(suite, case) for suite in suites for case in suite.file.cases)))


async def _run_case(
    queue: RequestQueue, suite: EvalSuite, case: EvalCase, side: Side, *, company: str, wait_seconds: float
) -> CaseOutcome:
    from worker.prompt_builder import prompt_variables  # the worker's own variables, for the refusal text

    request = build_request(suite, case)
    persona = side.personas[suite.persona.name]
    answer, finish_reason, error = await _ask(
        queue, request, side.model or suite.persona.model, wait_seconds=wait_seconds
    )
    outcome = CaseOutcome(persona.name, case.name, answer, finish_reason, error)
    if answer is None:
        return outcome
    refusal = render_text(persona.refusal, prompt_variables(request, persona, company=company))
    checks = judge(answer, case.checks, banned=tuple(persona.banned_phrases), refusal=refusal)
    return CaseOutcome(persona.name, case.name, answer, finish_reason, None, checks)


async def _ask(
    queue: RequestQueue, request: GenerationRequest, model: str, *, wait_seconds: float
) -> tuple[str | None, str | None, str | None]:
    """(answer, finish reason, None) or (None, None, why there is no answer)."""
    await queue.enqueue(request, model=model)
    give_up_at = time.monotonic() + wait_seconds
    async with queue.follow(request.request_id, watch_job=True) as follower:
        while (left := give_up_at - time.monotonic()) > 0:
            try:
                arrived = await follower.next(timeout=min(left, FOLLOW_TICK_SECONDS))
            except ReplyLost as lost:
                return None, None, f"no answer ({lost.reason})"
            if arrived is None:
                continue
            event = arrived[1]
            if isinstance(event, StartEvent):
                continue
            if isinstance(event, DoneEvent):
                return event.text, event.finish_reason.value, None
            if isinstance(event, ErrorEvent):
                return None, None, f"worker error ({event.kind.value}): {event.message}"
    await queue.cancel(request.request_id)
    return None, None, f"no answer within {wait_seconds:g} s"
