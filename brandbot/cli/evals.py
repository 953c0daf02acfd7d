"""`brandbot prompts eval`: voice regression tests, asked through the real queue of real workers."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from brandbot.errors import BrandbotError, PromptFileError
from brandbot.evals.report import compare_json, lowest_rate, print_compare, print_run, run_json
from brandbot.evals.runner import CaseOutcome, Side, run_side
from brandbot.evals.workers import private_worker, worker_environment
from brandbot.promptfiles.evals import EvalSuite, load_evals
from brandbot.promptfiles.library import PromptLibrary, load_prompt_library
from brandbot.promptfiles.models import MODEL_NAME_PATTERN
from brandbot.queue import RequestQueue
from brandbot.settings import Settings

DEFAULT_MIN_PASS = 1.0
"""Every case must pass by default: with a fixed seed answers repeat, so a voice suite is meant to be
green, and any lower bar lets a new failure hide behind an old one. Lower it (`--min-pass 0.8`) while
a suite or a model is being reworked."""

DEFAULT_CONCURRENCY = 4
"""Cases in flight at once: enough to fill a worker's batch, few enough not to crowd out real users."""

WAIT_MARGIN_SECONDS = 30.0

EXIT_BELOW_MIN_PASS = 1
EXIT_BAD_FILES = 2
EXIT_CANNOT_RUN = 3


@dataclass(frozen=True)
class _Target:
    side: Side
    folder: Path | None  # a prompt folder under review: the eval starts its own worker on it


def evaluate(
    personas: Annotated[
        list[str] | None, typer.Argument(help="Personas to evaluate (default: every one with an eval file).")
    ] = None,
    min_pass: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Exit 1 when a persona's share of passing cases is below this."),
    ] = DEFAULT_MIN_PASS,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (for CI), no tables.")
    ] = False,
    compare: Annotated[
        tuple[str, str] | None,
        typer.Option(
            metavar="A B",
            help="Run the same cases against two prompt folders or two model names and show what changed "
            "(a folder gets a worker of the eval's own; a model name uses that model's running workers).",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Cases asked at once.")] = DEFAULT_CONCURRENCY,
    wait_seconds: Annotated[
        float | None, typer.Option(min=1, help="Longest wait for one answer (default: from the deadline).")
    ] = None,
    folder: Annotated[
        Path | None,
        typer.Option(
            "--prompts-dir", help="Prompt folder with the eval files (default: BRANDBOT_PROMPTS_DIR)."
        ),
    ] = None,
) -> None:
    """Ask each eval case's question through the queue and check the answers (exit 1 below --min-pass).

    Eval files: prompts/evals/<persona>.yaml.

    Exit codes: 0 pass · 1 below --min-pass · 2 a prompt or eval file has problems · 3 cannot run (no
    worker, Redis unavailable).
    """
    from brandbot.cli import fail, settings_or_exit

    settings = settings_or_exit(log_level_floor="WARNING")
    library = _library_or_exit(folder or settings.prompts_dir)
    try:
        suites = load_evals(library, personas or ())
    except PromptFileError as error:
        print_problems(error, library.folder)
        raise typer.Exit(EXIT_BAD_FILES) from None
    if compare is None:
        targets = [_Target(Side(f"workers of {library.folder}", None, dict(library.personas)), None)]
    else:
        targets = [_target(argument, library, suites) for argument in compare]
    wait = wait_seconds or settings.generation_deadline_seconds * concurrency + WAIT_MARGIN_SECONDS
    try:
        results = asyncio.run(_run(settings, suites, targets, concurrency=concurrency, wait_seconds=wait))
    except BrandbotError as error:
        fail(str(error), code=EXIT_CANNOT_RUN)
        return
    last = results[-1]
    below = lowest_rate(last) < min_pass
    if as_json:
        if compare is None:
            document = run_json(last, label=targets[0].side.label)
        else:
            document = compare_json(results[0], last, labels=(targets[0].side.label, targets[1].side.label))
        typer.echo(json.dumps({**document, "min_pass": min_pass, "ok": not below}, indent=2))
    else:
        console = Console(soft_wrap=False)
        if compare is None:
            print_run(console, last, label=targets[0].side.label)
        else:
            print_compare(console, results[0], last, labels=(targets[0].side.label, targets[1].side.label))
    if below:
        which = "B's" if compare is not None else "the"
        fail(
            f"{which} lowest pass rate {lowest_rate(last):.0%} is below --min-pass {min_pass:.0%}",
            code=EXIT_BELOW_MIN_PASS,
        )


def _target(argument: str, library: PromptLibrary, suites: list[EvalSuite]) -> _Target:
    """A compare side: an existing folder is a prompt folder; otherwise a model name."""
    from brandbot.cli import fail

    path = Path(argument)
    if path.is_dir():
        other = _library_or_exit(path)
        missing = [suite.persona.name for suite in suites if other.persona(suite.persona.name) is None]
        if missing:
            fail(f"{path}: no persona named {', '.join(missing)} to evaluate", code=EXIT_BAD_FILES)
        return _Target(Side(str(path), None, dict(other.personas)), path.resolve())
    if re.fullmatch(MODEL_NAME_PATTERN, argument) is None:
        fail(f"--compare: {argument!r} is neither a prompt folder nor a model name", code=EXIT_BAD_FILES)
    return _Target(Side(f"model {argument}", argument, dict(library.personas)), None)


async def _run(
    settings: Settings,
    suites: list[EvalSuite],
    targets: list[_Target],
    *,
    concurrency: int,
    wait_seconds: float,
) -> list[list[CaseOutcome]]:
    queue = RequestQueue.from_settings(settings)
    results: list[list[CaseOutcome]] = []
    environment = worker_environment(settings) if any(t.folder for t in targets) else {}

    async def ask(side: Side) -> list[CaseOutcome]:
        return await run_side(
            queue,
            suites,
            side,
            company=settings.company_name,
            concurrency=concurrency,
            wait_seconds=wait_seconds,
        )

    try:
        for label, target in zip("ab", targets, strict=False):
            if target.folder is None:
                results.append(await ask(target.side))
                continue
            async with private_worker(
                queue, environment, target.folder, label=label
            ) as model:  # one at a time: one GPU
                results.append(await ask(replace(target.side, model=model)))
    finally:
        await queue.close()
    return results


def _library_or_exit(folder: Path) -> PromptLibrary:
    try:
        return load_prompt_library(folder)
    except PromptFileError as error:
        print_problems(error, folder)
        raise typer.Exit(EXIT_BAD_FILES) from None


def print_problems(error: PromptFileError, folder: Path) -> None:
    for problem in error.problems:
        typer.echo(problem)
    count = len(error.problems)
    typer.echo(f"{count} problem{'s' if count != 1 else ''} in {folder}", err=True)
