"""`brandbot tune`: fine-tune a LoRA adapter on the company's own answers, checked before and after."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import redis
import typer
from rich.console import Console
from rich.table import Table

from brandbot.errors import BrandbotError, PromptFileError
from brandbot.promptfiles.library import load_prompt_library
from brandbot.promptfiles.models import Persona
from brandbot.settings import Settings

CHECK_MAX_NEW_TOKENS = 96
"""Held-out answers are cut here: long enough for a short answer and its sign-off."""

CHECK_USER = "a customer"


def tune(
    data: Annotated[
        list[Path],
        typer.Argument(help="JSONL files: `brandbot feedback export` output and/or curated chat examples."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Adapter folder to write.")],
    base: Annotated[
        Path | None, typer.Option(help="Base model folder (default: BRANDBOT_MODEL_DIR).")
    ] = None,
    persona: Annotated[
        str | None,
        typer.Option(
            help="Persona whose voice this is: its system message fills in examples that have none, other "
            "personas' feedback is skipped, and the held-out check asks as it (default: routing's default)."
        ),
    ] = None,
    held_out: Annotated[
        int | None,
        typer.Option(min=0, help="Examples kept out of training for the check (default: a fifth)."),
    ] = None,
    epochs: Annotated[float, typer.Option(min=0.1, help="Passes over the training examples.")] = 3.0,
    learning_rate: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate.")] = 2e-3,
    rank: Annotated[int, typer.Option(min=1, help="LoRA rank (r) on the attention projections.")] = 8,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per training step.")] = 4,
    save_every: Annotated[int, typer.Option(min=1, help="Checkpoint every this many steps.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the split and of training.")] = 0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")
    ] = False,
    merge: Annotated[
        Path | None,
        typer.Option(help="Also write a full model folder (merged weights, tokenizer, chat template) here."),
    ] = None,
    include_downvoted: Annotated[
        bool, typer.Option("--include-downvoted", help="Train on 👎 answers from feedback too.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Ask the held-out questions before and after.")
    ] = True,
) -> None:
    """Train a LoRA adapter (PEFT + TRL) on the assistant's words only; CPU or GPU; resumable.

    Before and after training the held-out questions go through real workers (base model, then the
    fine-tune) and the answers are checked against the dataset's own closing words (its sign-off).
    """
    from brandbot.cli import fail, settings_or_exit

    settings = settings_or_exit()
    model_dir = base or settings.model_dir
    if model_dir is None:
        fail("no base model: pass --base DIR or set BRANDBOT_MODEL_DIR", code=2)
        return
    console = Console(soft_wrap=True)
    try:
        _tune(
            settings,
            console,
            data=data,
            output=output,
            model_dir=model_dir,
            persona_name=persona,
            held_out=held_out,
            options_values={
                "epochs": epochs,
                "learning_rate": learning_rate,
                "rank": rank,
                "alpha": rank * 2,
                "batch_size": batch_size,
                "save_steps": save_every,
                "seed": seed,
            },
            resume=resume,
            merge=merge,
            include_downvoted=include_downvoted,
            check=check,
        )
    except PromptFileError as error:
        fail(str(error), code=2)
    except BrandbotError as error:
        fail(str(error))
    except ImportError as error:
        fail(f"`brandbot tune` needs the tune extra ({error.name} is missing): pip install -e '.[cpu,tune]'")


def _tune(
    settings: Settings,
    console: Console,
    *,
    data: list[Path],
    output: Path,
    model_dir: Path,
    persona_name: str | None,
    held_out: int | None,
    options_values: dict[str, Any],
    resume: bool,
    merge: Path | None,
    include_downvoted: bool,
    check: bool,
) -> None:
    from worker.engines import check_model_folder
    from worker.tuning.dataset import common_ending, default_held_out, load_examples, split_held_out
    from worker.tuning.heldout import HeldOutCase
    from worker.tuning.trainer import PAUSE_AT_STEP, TuneOptions, describe, train_adapter

    check_model_folder(model_dir)
    library = load_prompt_library(settings.prompts_dir)
    persona = library.persona(persona_name) if persona_name else library.default_persona()
    if persona is None:
        raise BrandbotError(f"no persona named {persona_name!r} in {settings.prompts_dir}")
    loaded = load_examples(data, persona=persona.name, include_downvoted=include_downvoted)
    examples = loaded.examples
    count = default_held_out(len(examples)) if held_out is None else held_out
    train, held = split_held_out(examples, count, seed=options_values["seed"])
    skipped = []
    if loaded.skipped_downvoted:
        skipped.append(f"{loaded.skipped_downvoted} 👎 skipped")
    if loaded.skipped_other_persona:
        skipped.append(f"{loaded.skipped_other_persona} of other personas skipped")
    console.print(
        f"{len(train)} examples to train on, {len(held)} held out"
        + (f" ({'; '.join(skipped)})" if skipped else "")
        + f"; persona {persona.name}; base {model_dir}"
    )
    ending = common_ending([example.answer for example in examples])
    cases = [HeldOutCase(example.question, ending) for example in held] if ending else []
    if check and not cases:
        console.print(
            "no held-out check: "
            + ("no examples held out" if not held else "the answers share no closing words to check")
        )
    check = check and bool(cases)
    suites: list[Any] = []
    if check:
        from brandbot.promptfiles.evals import eval_path, load_evals

        if eval_path(library.folder, persona.name).is_file():
            suites = load_evals(library, [persona.name])  # a typo in it: its file:line, before any work
        console.print(
            f"held-out check: each answer ends with {ending!r}"
            + (f"; and {eval_path(library.folder, persona.name)}" if suites else "")
        )
        _require_redis(settings)
        before = _run_check(settings, model_dir, None, persona, cases, "before", suites, library)
        console.print(f"before: {before[0].passed}/{len(cases)} held-out answers pass")

    system = _system_message(persona, settings)
    options = TuneOptions(**options_values)
    result = train_adapter(
        model_dir,
        train,
        output,
        system=system,
        options=options,
        resume=resume,
        progress=_progress(console),
        pause_at_step=int(os.environ[PAUSE_AT_STEP]) if os.environ.get(PAUSE_AT_STEP) else None,
    )
    console.print(describe(result))
    served_dir: Path = model_dir
    served_lora: Path | None = output
    if merge is not None:
        from worker.tuning.adapters import merge_adapter

        merge_adapter(model_dir, output, merge)
        console.print(f"merged model written to {merge}")
        served_dir, served_lora = merge, None
    if check:
        after = _run_check(settings, served_dir, served_lora, persona, cases, "after", suites, library)
        if suites:
            from brandbot.evals.report import print_compare

            print_compare(console, before[1], after[1], labels=(f"base {model_dir}", "fine-tune"))
        _print_comparison(console, before[0], after[0], tune_seconds=result.seconds)


def _require_redis(settings: Settings) -> None:
    from brandbot.connections import sync_client

    client = sync_client(settings, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError):
        raise BrandbotError(
            "the before/after check asks real workers through Redis at BRANDBOT_REDIS_URL, which does not "
            "answer: start Redis (or `brandbot up`), or pass --no-check"
        ) from None
    finally:
        client.close()


def _system_message(persona: Persona, settings: Settings) -> str:
    """The persona's system message as the check's requests get it (examples without one are given it)."""
    from brandbot.contract import GenerationRequest, Platform, ReplyTarget, Role, Turn, UserRef
    from worker.prompt_builder import prompt_variables, system_message

    request = GenerationRequest(
        target=ReplyTarget(platform=Platform.SLACK, channel_id="C0TUNECHECK"),
        user=UserRef(id="U0TUNECHECK", display_name=CHECK_USER),
        persona=persona.name,
        turns=[Turn(role=Role.USER, content="-")],
    )
    return system_message(persona, prompt_variables(request, persona, company=settings.company_name))


def _run_check(
    settings: Settings,
    model_dir: Path,
    lora: Path | None,
    persona: Persona,
    cases: Any,
    label: str,
    suites: list[Any],
    library: Any,
) -> Any:
    from worker.tuning.heldout import run_side

    return asyncio.run(
        run_side(
            settings,
            model_dir=model_dir.resolve(),
            lora_dir=lora.resolve() if lora is not None else None,
            persona=persona.name,
            cases=cases,
            label=label,
            max_new_tokens=CHECK_MAX_NEW_TOKENS,
            suites=suites,
            personas=dict(library.personas),
        )
    )


def _print_comparison(console: Console, before: Any, after: Any, *, tune_seconds: float) -> None:
    table = Table(title="held-out questions: base model → fine-tune")
    table.add_column("question")
    table.add_column("before")
    table.add_column("after")
    for old, new in zip(before.outcomes, after.outcomes, strict=True):
        table.add_row(old.question, _mark(old), _mark(new))
    console.print(table)
    console.print(
        f"pass rate: before {before.passed}/{len(before.outcomes)} ({before.rate:.0%}),"
        f" after {after.passed}/{len(after.outcomes)} ({after.rate:.0%}); tuning took {tune_seconds:.0f} s"
    )


def _mark(outcome: Any) -> str:
    if outcome.error:
        return f"error: {outcome.error}"
    return "pass" if outcome.passed else "fail"


def _progress(console: Console) -> Any:
    """A rich progress bar in a terminal; plain lines (one per logged step) otherwise."""
    from worker.tuning.trainer import Progress

    if console.is_terminal and sys.stdout.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        bar = Bar(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=console,
        )
        task_holder: dict[str, Any] = {}

        def start(total: int, done: int) -> None:
            bar.start()
            task_holder["task"] = bar.add_task("train", total=total, completed=done, loss="…")

        def step(number: int, loss: float | None) -> None:
            bar.update(task_holder["task"], completed=number, loss=f"{loss:.3f}" if loss else "…")
            if number >= (bar.tasks[0].total or 0):
                bar.stop()

        return Progress(on_start=start, on_step=step)
    totals: dict[str, int] = {}

    def plain_start(total: int, done: int) -> None:
        totals["total"] = total
        typer.echo(f"training: {total} steps" + (f", resuming at step {done}" if done else ""))

    def plain_step(number: int, loss: float | None) -> None:
        typer.echo(f"step {number}/{totals.get('total', '?')} loss {loss:.3f}" if loss is not None else "")

    return Progress(on_start=plain_start, on_step=plain_step)
