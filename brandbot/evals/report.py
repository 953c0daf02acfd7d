"""What an eval prints: a table per persona (case × check), pass rates, and for `--compare` what changed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from brandbot.evals.checks import CheckResult
from brandbot.evals.runner import CaseOutcome

PASS = "[green]pass[/]"
FAIL = "[red]FAIL[/]"
ANSWER_PREVIEW_CHARS = 60


@dataclass(frozen=True)
class PassRate:
    passed: int
    cases: int

    @property
    def rate(self) -> float:
        return self.passed / self.cases if self.cases else 0.0

    def __str__(self) -> str:
        return f"{self.passed}/{self.cases} ({self.rate:.0%})"


def pass_rates(outcomes: Sequence[CaseOutcome]) -> dict[str, PassRate]:
    """Cases passed per persona (a case passes when it was answered and every check passed)."""
    rates: dict[str, PassRate] = {}
    for outcome in outcomes:
        old = rates.get(outcome.persona, PassRate(0, 0))
        rates[outcome.persona] = PassRate(old.passed + outcome.passed, old.cases + 1)
    return rates


def lowest_rate(outcomes: Sequence[CaseOutcome]) -> float:
    return min((rate.rate for rate in pass_rates(outcomes).values()), default=0.0)


def _rows(outcome: CaseOutcome) -> list[CheckResult]:
    """A case's checks; an unanswered case shows one failed `answered` check."""
    if outcome.error is not None:
        return [CheckResult("answered", False, outcome.error)]
    return outcome.checks


def _mark(check: CheckResult) -> str:
    return PASS if check.passed else f"{FAIL} {check.detail}"


def print_run(console: Console, outcomes: Sequence[CaseOutcome], *, label: str) -> None:
    for persona, rate in pass_rates(outcomes).items():
        table = Table(title=f"{persona} — {label}", title_justify="left")
        for column in ("case", "check", "result"):
            table.add_column(column)
        for outcome in (o for o in outcomes if o.persona == persona):
            for index, check in enumerate(_rows(outcome)):
                table.add_row(outcome.case if index == 0 else "", check.name, _mark(check), end_section=False)
            table.add_section()
        console.print(table)
        console.print(f"{persona}: {rate} of cases passed")


@dataclass(frozen=True)
class Change:
    persona: str
    case: str
    check: str
    before: bool | None  # None: the check did not exist on that side
    after: bool | None


def side_by_side(before: CaseOutcome, after: CaseOutcome) -> list[Change]:
    """Each check of one case on both sides (A's order, then checks only B has)."""
    old_checks = {check.name: check.passed for check in _rows(before)}
    new_checks = {check.name: check.passed for check in _rows(after)}
    names = [*old_checks, *(name for name in new_checks if name not in old_checks)]
    return [Change(before.persona, before.case, n, old_checks.get(n), new_checks.get(n)) for n in names]


def changes(before: Sequence[CaseOutcome], after: Sequence[CaseOutcome]) -> list[Change]:
    """Every check whose result differs between the two sides (same cases, in the same order)."""
    return [
        change
        for old, new in zip(before, after, strict=True)
        for change in side_by_side(old, new)
        if change.before != change.after
    ]


def _side_mark(value: bool | None) -> str:
    return "—" if value is None else PASS if value else FAIL


def print_compare(
    console: Console,
    before: Sequence[CaseOutcome],
    after: Sequence[CaseOutcome],
    *,
    labels: tuple[str, str],
) -> None:
    table = Table(title=f"A = {labels[0]}    B = {labels[1]}", title_justify="left")
    for column in ("persona", "case", "check", "A", "B", ""):
        table.add_column(column)
    for old, new in zip(before, after, strict=True):
        for index, change in enumerate(side_by_side(old, new)):
            first = index == 0
            table.add_row(
                old.persona if first else "",
                old.case if first else "",
                change.check,
                _side_mark(change.before),
                _side_mark(change.after),
                "[bold yellow]changed[/]" if change.before != change.after else "",
            )
        table.add_section()
    console.print(table)
    rates_a, rates_b = pass_rates(before), pass_rates(after)
    for persona, rate in rates_a.items():
        console.print(f"{persona}: A {rate} → B {rates_b[persona]}")
    found = changes(before, after)
    if not found:
        console.print("No check changed.")
    for change in found:
        if change.before is None:
            direction = f"is new in B and {'passes' if change.after else 'fails'}"
        elif change.after is None:
            direction = "is gone in B"
        else:
            direction = "now passes" if change.after else "now fails"
        console.print(f"changed: {change.persona} / {change.case} / {change.check} {direction}")


def run_json(outcomes: Sequence[CaseOutcome], *, label: str) -> dict[str, Any]:
    return {
        "label": label,
        "pass_rates": {
            persona: {"passed": rate.passed, "cases": rate.cases, "rate": rate.rate}
            for persona, rate in pass_rates(outcomes).items()
        },
        "cases": [
            {
                "persona": outcome.persona,
                "case": outcome.case,
                "passed": outcome.passed,
                "answer": outcome.answer,
                "finish_reason": outcome.finish_reason,
                "error": outcome.error,
                "checks": [
                    {
                        "check": check.name,
                        "passed": check.passed,
                        "detail": "" if check.passed else check.detail,
                    }
                    for check in _rows(outcome)
                ],
            }
            for outcome in outcomes
        ],
    }


def compare_json(
    before: Sequence[CaseOutcome], after: Sequence[CaseOutcome], *, labels: tuple[str, str]
) -> dict[str, Any]:
    return {
        "a": run_json(before, label=labels[0]),
        "b": run_json(after, label=labels[1]),
        "changed": [
            {"persona": c.persona, "case": c.case, "check": c.check, "a": c.before, "b": c.after}
            for c in changes(before, after)
        ],
    }
