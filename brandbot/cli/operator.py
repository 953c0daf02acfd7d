"""The operator's commands: `brandbot status`, `brandbot failed …` and `brandbot probe`."""

from __future__ import annotations

import contextlib
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Annotated, Any

import redis
import typer
from rich.console import Console
from rich.table import Table

from brandbot.errors import SettingsError

PROBE_TIMEOUT_SECONDS = 3.0
"""`brandbot probe` gives up on an answer after this long (an orchestrator's health check runs it)."""

failed_app = typer.Typer(
    help="Jobs RQ gave up on (run as the Redis admin user): list, show, requeue, purge.", no_args_is_help=True
)

ShowText = Annotated[
    bool, typer.Option("--show-text", help="Also show the question and the traceback (may quote users).")
]
AsJson = Annotated[bool, typer.Option("--json", help="JSON for scripts instead of a table.")]


def status(as_json: AsJson = False) -> None:
    """Redis, workers (live slots, in flight, tokens/s, mode), queues (depth, oldest wait), failed jobs."""
    from brandbot.cli import fail, settings_or_exit
    from brandbot.errors import QueueUnavailable
    from brandbot.status import gather, print_status

    settings = settings_or_exit(log_level_floor="WARNING")
    try:
        figures = gather(settings)
    except QueueUnavailable as error:
        fail(str(error), code=2)
        return
    print_status(figures, as_json=as_json)


def probe(
    ready: Annotated[
        bool, typer.Option("--ready", help="Ask /readyz (ready to serve) instead of /healthz.")
    ] = False,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port to ask (default: BRANDBOT_METRICS_PORT).")
    ] = None,
) -> None:
    """Exit 0 if this host's brandbot process answers its health check (for container health checks)."""
    from brandbot.cli import fail
    from brandbot.settings import load_settings

    if port is None:
        try:
            port = load_settings().metrics_port
        except SettingsError as error:
            fail(str(error))
        if port is None:
            fail("BRANDBOT_METRICS_PORT is not set: the process serves no health checks")
    path = "/readyz" if ready else "/healthz"
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_SECONDS) as response:
            if response.status == 200:
                return
            fail(f"{path} answered {response.status}")
    except urllib.error.HTTPError as error:
        reason = error.read().decode(errors="replace").strip()[:200]
        fail(f"{path} answered {error.code}: {reason}")
    except (urllib.error.URLError, OSError) as error:
        why = getattr(error, "reason", error)
        fail(f"nothing answers {url} ({why})")


@contextlib.contextmanager
def admin_connection() -> Iterator[redis.Redis]:
    """A connection from BRANDBOT_REDIS_URL; Redis errors end in one line (2: unreachable)."""
    from brandbot.cli import fail, settings_or_exit
    from brandbot.connections import sync_client
    from brandbot.failed import FailedJobError

    settings = settings_or_exit(log_level_floor="WARNING")
    connection = sync_client(settings, socket_connect_timeout=3, socket_timeout=10)
    try:
        yield connection
    except (redis.ConnectionError, redis.TimeoutError) as error:
        fail(f"cannot reach Redis at BRANDBOT_REDIS_URL ({error})", code=2)
    except redis.exceptions.NoPermissionError:
        fail(
            "BRANDBOT_REDIS_URL's user may not handle failed jobs: "
            "run `brandbot failed` as the Redis admin user"
        )
    except FailedJobError as error:
        fail(str(error))
    finally:
        connection.close()


@failed_app.command("list")
def failed_list(show_text: ShowText = False, as_json: AsJson = False) -> None:
    """Failed jobs, oldest first: id, queue, when, attempts, error kind and summary (no text by default)."""
    from brandbot.failed import kind_and_summary, list_failed

    with admin_connection() as connection:
        rows = list_failed(connection)
        if show_text:
            from brandbot.failed import failure_record, fetch_job

            full: dict[str, str | None] = {}
            for row in rows:
                job = fetch_job(connection, row.id)
                full[row.id] = kind_and_summary(failure_record(job)[0])[2] if job is not None else None
    if as_json:
        extra = (lambda row: {"error": full[row.id]}) if show_text else (lambda row: {})
        print(json.dumps([row.as_dict() | extra(row) for row in rows], indent=2))
        return
    if not rows:
        typer.echo("No failed jobs.")
        return
    columns = ("id", "queue", "failed at", "attempts", "kind", "summary", "persona", "platform")
    table = Table(*columns, title="Failed jobs")
    for row in rows:
        summary = (full[row.id] if show_text else row.summary) or "(hidden: --show-text)"
        table.add_row(
            row.id,
            row.queue,
            (row.failed_at or "?")[:19],
            "?" if row.attempts is None else str(row.attempts),
            row.kind,
            summary,
            row.persona or "?",
            row.platform or "?",
        )
    _console().print(table)


@failed_app.command("show")
def failed_show(
    job_id: Annotated[str, typer.Argument(help="The job's id (the request id).")],
    show_text: ShowText = False,
    as_json: AsJson = False,
) -> None:
    """One failed job: when, where, how often tried, why; the question and traceback with --show-text."""
    from brandbot.failed import describe, find

    with admin_connection() as connection:
        queue, job = find(connection, job_id)
        row, traceback, request = describe(job, queue.name)
    details: dict[str, Any] = row.as_dict()
    if request is not None:
        turns = request.get("turns")
        details["turns"] = len(turns) if isinstance(turns, list) else None
    if show_text:
        details["traceback"] = traceback
        details["request"] = request
    if as_json:
        print(json.dumps(details, indent=2, default=str))
        return
    for name, value in details.items():
        if name in ("traceback", "request"):
            continue
        if name == "summary" and value is None:
            value = "(hidden: --show-text)"
        typer.echo(f"{name:>9}: {'?' if value is None else value}")
    if show_text:
        typer.echo("traceback:\n" + (traceback or "(none)"))
        typer.echo("request:\n" + json.dumps(request, indent=2, ensure_ascii=False))


@failed_app.command("requeue")
def failed_requeue(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Jobs to run again.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every failed reply job.")] = False,
) -> None:
    """Run failed jobs again as a new attempt; the reply goes to its reply stream, the chat is not edited."""
    from brandbot.failed import list_failed, requeue

    with admin_connection() as connection:
        ids = _chosen(job_ids, everything, lambda: [r.id for r in list_failed(connection) if not r.refused])
        for job_id in ids:
            attempt = requeue(connection, job_id)
            typer.echo(f"requeued {job_id} (attempt {attempt})")


@failed_app.command("purge")
def failed_purge(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Jobs to delete.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every failed job.")] = False,
) -> None:
    """Delete failed jobs with their results and reply streams."""
    from brandbot.failed import list_failed, purge

    with admin_connection() as connection:
        ids = _chosen(job_ids, everything, lambda: [r.id for r in list_failed(connection)])
        for job_id in ids:
            purge(connection, job_id)
        typer.echo(f"purged {len(ids)} failed job{'' if len(ids) == 1 else 's'}")


def _chosen(job_ids: list[str] | None, everything: bool, every: Any) -> list[str]:
    from brandbot.cli import fail

    if bool(job_ids) == everything:
        fail("name the jobs, or pass --all (not both)", code=2)
    return list(every()) if everything else list(job_ids or [])


def _console() -> Console:
    # Piped output (scripts, CI logs) gets a wide table instead of wrapped cells.
    return Console() if sys.stdout.isatty() else Console(width=220)
