"""Judging one answer against its case's checks (and the persona's banned phrases, always)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from brandbot.promptfiles.evals import Checks


@dataclass(frozen=True)
class CheckResult:
    name: str  # e.g. `include "status page"`, `max 80 words`
    passed: bool
    detail: str = ""  # why it failed, in a few words


def _plain(text: str) -> str:
    """Case and runs of whitespace do not matter to a phrase check."""
    return " ".join(text.split()).casefold()


def judge(answer: str, checks: Checks, *, banned: tuple[str, ...], refusal: str) -> list[CheckResult]:
    """Every check of a case on `answer`; `refusal` is the persona's refusal as the worker renders it."""
    plain = _plain(answer)
    results: list[CheckResult] = []
    for phrase in checks.include:
        results.append(CheckResult(f"include {phrase!r}", _plain(phrase) in plain, "not in the answer"))
    for pattern in checks.include_regex:
        found = re.search(pattern, answer) is not None
        results.append(CheckResult(f"include /{pattern}/", found, "no match"))
    for phrase in checks.exclude:
        results.append(CheckResult(f"exclude {phrase!r}", _plain(phrase) not in plain, "in the answer"))
    for pattern in checks.exclude_regex:
        match = re.search(pattern, answer)
        results.append(
            CheckResult(f"exclude /{pattern}/", match is None, f"matched {match and match.group()!r}")
        )
    if checks.refuses:
        # Its closing mark is not part of its words: "…/support and we'll look" said the whole refusal.
        said = _plain(refusal).rstrip(".!")
        results.append(CheckResult("refuses", said in plain, "no refusal text in the answer"))
    if checks.max_words is not None:
        words = len(answer.split())
        results.append(
            CheckResult(f"max {checks.max_words} words", words <= checks.max_words, f"{words} words")
        )
    if checks.starts_with is not None:
        ok = plain.startswith(_plain(checks.starts_with))
        results.append(
            CheckResult(f"starts with {checks.starts_with!r}", ok, f"starts {answer.strip()[:30]!r}")
        )
    if checks.ends_with is not None:
        ok = plain.endswith(_plain(checks.ends_with))
        results.append(CheckResult(f"ends with {checks.ends_with!r}", ok, f"ends {answer.strip()[-30:]!r}"))
    for phrase in banned:
        results.append(CheckResult(f"banned {phrase!r}", _plain(phrase) not in plain, "generated anyway"))
    return results
