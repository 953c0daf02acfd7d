"""The counts of one scenario, and the table `brandbot soak` prints.

- answered: exactly one finished answer and nothing else;
- errors shown: exactly one clear error notice and nothing else (expected for a poison question);
- lost: nothing finished at the end (no answer, no error: nothing, or a message still writing);
- duplicated: more than one finished message (answers and errors together), or one and a second one
  still writing.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from brandbot.soak.load import Question


@dataclass(frozen=True)
class Tally:
    fault: str
    questions: int
    answered: int
    errors_shown: int
    expected_errors: int
    lost: int
    duplicated: int
    first_text: tuple[float, float]  # p50, p99 seconds
    final: tuple[float, float]
    seconds: float
    restarts: int
    recovered: bool

    @property
    def passed(self) -> bool:
        unexpected_errors = self.errors_shown - self.expected_errors
        return self.lost == 0 and self.duplicated == 0 and self.recovered and unexpected_errors <= 0

    @classmethod
    def of(
        cls, fault: str, questions: list[Question], *, seconds: float, restarts: int, recovered: bool
    ) -> Tally:
        def finished(q: Question) -> int:
            return q.answers + q.errors

        clean = [q for q in questions if not q.writing]
        return cls(
            fault=fault,
            questions=len(questions),
            answered=sum(1 for q in clean if q.answers == 1 and q.errors == 0),
            errors_shown=sum(1 for q in clean if q.errors == 1 and q.answers == 0),
            expected_errors=sum(1 for q in questions if q.expect_error),
            lost=sum(1 for q in questions if finished(q) == 0),
            duplicated=sum(1 for q in questions if finished(q) > 1 or (finished(q) == 1 and q.writing)),
            first_text=percentiles([q.first_text_at - q.sent_at for q in questions if q.first_text_at]),
            final=percentiles([q.settled_at - q.sent_at for q in questions if q.settled_at]),
            seconds=seconds,
            restarts=restarts,
            recovered=recovered,
        )


def percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    if len(values) == 1:
        return (values[0], values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return (statistics.median(values), cuts[98])


def table(tallies: list[Tally], *, title: str = "brandbot soak") -> Table:
    grid = Table(title=title)
    for heading in (
        "fault", "questions", "answered", "errors shown", "lost", "duplicated",
        "first text p50/p99", "final p50/p99", "restarts", "recovered", "result",
    ):  # fmt: skip
        grid.add_column(heading, justify="left" if heading == "fault" else "right")
    for t in tallies:
        errors = f"{t.errors_shown}" + (f" ({t.expected_errors} expected)" if t.expected_errors else "")
        grid.add_row(
            t.fault, str(t.questions), str(t.answered), errors, str(t.lost), str(t.duplicated),
            f"{t.first_text[0]:.1f} / {t.first_text[1]:.1f} s", f"{t.final[0]:.1f} / {t.final[1]:.1f} s",
            str(t.restarts), "yes" if t.recovered else "NO", "pass" if t.passed else "FAIL",
        )  # fmt: skip
    return grid


def render(tallies: list[Tally], *, width: int = 160) -> str:
    console = Console(width=width, record=True, file=None, force_terminal=False, color_system=None)
    with console.capture() as captured:
        console.print(table(tallies))
    return captured.get()
