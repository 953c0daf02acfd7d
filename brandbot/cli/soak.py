"""`brandbot soak`: load with faults against real processes on this machine, and a table per fault."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from brandbot.soak.faults import FAULTS


def soak(
    questions: Annotated[int, typer.Option(min=1, help="Questions asked at once in each scenario.")] = 1000,
    users: Annotated[int, typer.Option(min=1, help="Distinct people asking them.")] = 200,
    discord_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of the questions asked through Discord.")
    ] = 0.25,
    workers: Annotated[int, typer.Option(min=2, help="Worker processes on the tiny model.")] = 2,
    duration: Annotated[
        float, typer.Option(min=10.0, help="Longest wait, per scenario, for every question to settle (s).")
    ] = 600.0,
    faults: Annotated[
        str, typer.Option(help=f"Comma-separated faults, in order: {', '.join(FAULTS)}; or `all`.")
    ] = "all",
    run_dir: Annotated[
        Path, typer.Option(help="Folder for the Redis data, the logs and the prompts.")
    ] = Path(".soak"),
    model_dir: Annotated[
        Path | None,
        typer.Option(help="Model folder for the workers (default: a tiny model built in run-dir)."),
    ] = None,
) -> None:
    """Ask many questions through the Slack and Discord emulators while faults hit; count what users see."""
    from bots.lifecycle import serve_until_signalled
    from brandbot.cli import fail
    from brandbot.progress import progress_count, progress_steps
    from brandbot.soak.scenario import SoakPlan, run_soak
    from brandbot.soak.tally import Tally, render

    chosen = tuple(FAULTS) if faults == "all" else tuple(f.strip() for f in faults.split(",") if f.strip())
    unknown = [f for f in chosen if f not in FAULTS]
    if unknown or not chosen:
        fail(f"unknown fault(s): {', '.join(unknown) or '(none given)'}; known: {', '.join(FAULTS)}", code=2)
    if model_dir is None:
        model_dir = run_dir / "tiny-model"
        if not (model_dir / "config.json").is_file():
            from worker.tiny_model import build_tiny_model

            with progress_steps("Building the tiny model", total=3) as step:
                build_tiny_model(model_dir, step=step)
    plan = SoakPlan(
        run_dir=run_dir,
        model_dir=model_dir,
        questions=questions,
        users=users,
        discord_share=discord_share,
        workers=workers,
        duration_seconds=duration,
        faults=chosen,
    )
    tallies: list[Tally] = []

    def counted(tally: Tally) -> None:
        tallies.append(tally)
        typer.echo(render([tally]))

    # SIGTERM or Ctrl-C stops the soak's own processes too (they run in sessions of their own).
    asyncio.run(
        serve_until_signalled(
            run_soak(plan, bar=lambda title, total: progress_count(title, total=total), on_tally=counted)
        )
    )
    if len(tallies) < len(chosen):
        fail(f"stopped after {len(tallies)} of {len(chosen)} faults; its processes are stopped", code=1)
    typer.echo(render(tallies))
    if not all(t.passed for t in tallies):
        raise typer.Exit(1)
