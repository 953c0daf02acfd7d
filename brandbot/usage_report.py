"""The economics of `brandbot usage`: counters summed per day and group, percentiles, and what they cost.

Two costs per group, side by side:

- **metered API**: what the same tokens would have cost at a per-token price
  (`prompt_tokens / 1e6 × input price + completion_tokens / 1e6 × output price`);
- **own hardware, busy**: `GPU-hour price × busy GPU-hours`, where busy GPU-seconds are the sum of each
  request's generation time (submission to the engine → last token). Answers generated in one batch
  overlap, so under load this counts the GPU's time more than once: an upper bound on what the answers
  kept the GPU busy, a fair share per answer.
- **own hardware, wall clock** (per model, and per day for all models): `GPU-hour price × hours the
  workers were up`, idle time included: what a GPU dedicated to brandbot costs, used or not.

Each is also given per 1,000 answers shown (answers counted by the front-ends).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum

from brandbot.settings import Settings
from brandbot.usage import Counters, UsageEntry


class GroupBy(StrEnum):
    PERSONA = "persona"
    PLATFORM = "platform"
    CHANNEL = "channel"
    MODEL = "model"


ALL_GROUPS = "all"
"""The group name of a day's total row."""


@dataclass(frozen=True)
class Prices:
    input_per_million: float
    output_per_million: float
    gpu_hour: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Prices:
        return cls(
            input_per_million=settings.usage_api_input_price_per_million,
            output_per_million=settings.usage_api_output_price_per_million,
            gpu_hour=settings.usage_gpu_hour_price,
        )


@dataclass(frozen=True)
class UsageRow:
    """One day and group (or the day's total, `group == "all"`), ready for a table, CSV or JSON."""

    day: str
    group: str
    questions: int
    answers: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    gpu_seconds: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    final_p50_ms: float | None
    final_p95_ms: float | None
    api_cost: float
    api_cost_per_1000_answers: float | None
    gpu_cost: float
    gpu_cost_per_1000_answers: float | None
    worker_hours: float | None
    """Hours the workers were up (a model's row, or a day's total); None where not attributable."""
    wall_cost_per_1000_answers: float | None

    def as_dict(self) -> dict[str, object]:
        """Fields for CSV and JSON; costs and times rounded to 6 decimals (no float noise)."""
        return {
            name: round(value, 6) if isinstance(value, float) else value
            for name, value in asdict(self).items()
        }


def per_thousand(cost: float, answers: int) -> float | None:
    return cost / answers * 1000 if answers else None


def make_row(
    day: str, group: str, counters: Counters, prices: Prices, worker_seconds: int | None
) -> UsageRow:
    api_cost = (
        counters["prompt_tokens"] / 1e6 * prices.input_per_million
        + counters["completion_tokens"] / 1e6 * prices.output_per_million
    )
    gpu_seconds = counters["busy_ms"] / 1000
    gpu_cost = gpu_seconds / 3600 * prices.gpu_hour
    answers = counters["answers"]
    worker_hours = worker_seconds / 3600 if worker_seconds is not None else None
    return UsageRow(
        day=day,
        group=group,
        questions=counters["questions"],
        answers=answers,
        errors=counters["errors"],
        prompt_tokens=counters["prompt_tokens"],
        completion_tokens=counters["completion_tokens"],
        gpu_seconds=gpu_seconds,
        ttft_p50_ms=counters.percentile_ms("ttft", 0.5),
        ttft_p95_ms=counters.percentile_ms("ttft", 0.95),
        final_p50_ms=counters.percentile_ms("final", 0.5),
        final_p95_ms=counters.percentile_ms("final", 0.95),
        api_cost=api_cost,
        api_cost_per_1000_answers=per_thousand(api_cost, answers),
        gpu_cost=gpu_cost,
        gpu_cost_per_1000_answers=per_thousand(gpu_cost, answers),
        worker_hours=worker_hours,
        wall_cost_per_1000_answers=(
            per_thousand(worker_hours * prices.gpu_hour, answers) if worker_hours is not None else None
        ),
    )


def summarise(
    entries: list[UsageEntry],
    uptime: dict[str, dict[str, int]],
    *,
    by: GroupBy,
    prices: Prices,
) -> tuple[list[UsageRow], list[UsageRow]]:
    """Rows per day and group (sorted), and one total row per day (every group, every model's uptime)."""
    grouped: dict[tuple[str, str], Counters] = {}
    totals: dict[str, Counters] = {}
    for entry in entries:
        grouped.setdefault((entry.day, getattr(entry.group, by.value)), Counters()).add(entry.counters.values)
        totals.setdefault(entry.day, Counters()).add(entry.counters.values)
    rows = [
        make_row(
            day,
            name,
            counters,
            prices,
            uptime.get(day, {}).get(name) if by is GroupBy.MODEL else None,  # None: no uptime recorded yet
        )
        for (day, name), counters in sorted(grouped.items())
    ]
    day_totals = [
        make_row(day, ALL_GROUPS, counters, prices, sum(uptime[day].values()) if uptime.get(day) else None)
        for day, counters in sorted(totals.items())
    ]
    return rows, day_totals
