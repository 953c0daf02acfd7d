"""`brandbot usage`: questions, answers, tokens, GPU time and latency per day and group, and their cost."""

from __future__ import annotations

import csv
import json
import sys
from typing import Annotated

import redis
import typer
from rich.console import Console
from rich.table import Table

from brandbot.connections import sync_client
from brandbot.usage import UsageBook, last_days
from brandbot.usage_report import ALL_GROUPS, GroupBy, Prices, UsageRow, summarise

CSV_COLUMNS = list(UsageRow.__dataclass_fields__)


def usage(
    days: Annotated[
        int, typer.Option(min=1, max=3650, help="Show the last N days (UTC), today included.")
    ] = 7,
    by: Annotated[GroupBy, typer.Option(help="One row per day and persona, platform, channel or model.")] = (
        GroupBy.PERSONA
    ),
    as_csv: Annotated[
        bool, typer.Option("--csv", help="CSV on standard output (one row per day and group).")
    ] = (False),
    as_json: Annotated[bool, typer.Option("--json", help="JSON on standard output, for scripts.")] = False,
) -> None:
    """What the bot did and what it cost: counters per day and group, beside a metered API's price."""
    from brandbot.cli import fail, settings_or_exit

    if as_csv and as_json:
        fail("--csv and --json go one at a time", code=2)
    settings = settings_or_exit(log_level_floor="WARNING")
    prices = Prices.from_settings(settings)
    window = last_days(days)
    connection = sync_client(settings, socket_connect_timeout=3)
    try:
        book = UsageBook(connection)
        entries, uptime = book.read(window), book.uptime(window)
    except (redis.ConnectionError, redis.TimeoutError):
        fail("cannot reach Redis at BRANDBOT_REDIS_URL; is it running?")
        return
    except redis.exceptions.NoPermissionError:
        fail("BRANDBOT_REDIS_URL's user may not read the usage counters (brandbot:usage:*)")
        return
    finally:
        connection.close()
    rows, totals = summarise(entries, uptime, by=by, prices=prices)
    if as_json:
        document = {
            "days": window,
            "by": by.value,
            "prices": vars(prices),
            "rows": [row.as_dict() for row in rows],
            "totals": [row.as_dict() for row in totals],
        }
        typer.echo(json.dumps(document, indent=2))
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({name: "" if value is None else value for name, value in row.as_dict().items()})
    else:
        print_table(rows, totals, by=by, prices=prices, days=days)


def _seconds(ms: float | None) -> str:
    return "—" if ms is None else f"{ms / 1000:.2f}"


def _money(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}" if value < 1 else f"{value:,.2f}"


def print_table(
    rows: list[UsageRow], totals: list[UsageRow], *, by: GroupBy, prices: Prices, days: int
) -> None:
    console = Console() if sys.stdout.isatty() else Console(width=220)
    if not rows:
        console.print(f"No usage recorded in the last {days} days.")
        return
    table = Table(
        "day", by.value, "questions", "answers", "errors", "tokens in", "tokens out", "GPU s",
        "TTFT p50/p95 s", "final p50/p95 s", "API cost", "API /1k answers",
        "own (busy) /1k answers", "own (wall) /1k answers",
        title=f"brandbot usage, last {days} days (UTC)",
    )  # fmt: skip
    by_day: dict[str, list[UsageRow]] = {}
    for row in rows:
        by_day.setdefault(row.day, []).append(row)
    for total in totals:
        for row in [*by_day.get(total.day, []), total]:
            table.add_row(
                row.day,
                row.group,
                str(row.questions),
                str(row.answers),
                str(row.errors),
                f"{row.prompt_tokens:,}",
                f"{row.completion_tokens:,}",
                f"{row.gpu_seconds:,.1f}",
                f"{_seconds(row.ttft_p50_ms)} / {_seconds(row.ttft_p95_ms)}",
                f"{_seconds(row.final_p50_ms)} / {_seconds(row.final_p95_ms)}",
                _money(row.api_cost),
                _money(row.api_cost_per_1000_answers),
                _money(row.gpu_cost_per_1000_answers),
                _money(row.wall_cost_per_1000_answers),
                style="bold" if row.group == ALL_GROUPS else None,
                end_section=row.group == ALL_GROUPS,
            )
    console.print(table)
    console.print(
        f"API: {prices.input_per_million:g} per million tokens in, {prices.output_per_million:g} out "
        f"(BRANDBOT_USAGE_API_*_PRICE_PER_MILLION). Own hardware: {prices.gpu_hour:g} per GPU-hour "
        "(BRANDBOT_USAGE_GPU_HOUR_PRICE); busy = the sum of each answer's generation time (overlapping "
        "answers counted each), wall = the hours the workers were up, idle included (per model, and in "
        "each day's total)."
    )
