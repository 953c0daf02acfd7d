"""A `brandbot worker` of the eval's own, serving a prompt folder under review on a private queue.

A worker renders personas from the folder it was started with, so comparing two prompt folders means
two workers: each is the same `brandbot worker` that ships, started with `BRANDBOT_PROMPTS_DIR` set to
one folder and `BRANDBOT_MODEL_NAME` set to a queue nobody else uses. Its other settings are the eval's
own (so it loads the same model), except that it serves no metrics port (a worker on this host may hold
it). Requests never carry persona text: the worker tier keeps trusting only its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import IO

import brandbot
from brandbot.errors import BrandbotError
from brandbot.queue import RequestQueue
from brandbot.settings import Settings

START_WAIT_SECONDS = 300.0
"""Loading a large model can take minutes; past this, the eval gives up with the worker's last line."""

STOP_WAIT_SECONDS = 30.0
"""A worker finishes its answers and exits on SIGTERM; past this it is killed."""


class WorkerDidNotStart(BrandbotError):
    """A command's own worker (an eval's, a tune check's) exited or never became ready."""


def worker_environment(settings: Settings, *, leave_out: Collection[str] = ()) -> dict[str, str]:
    """`settings` as the environment of a worker process (paths made absolute, no metrics port, nor the
    settings named in `leave_out`).

    The worker starts in an empty folder, so a `.env` file cannot add anything these settings lack.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("BRANDBOT_")}
    for name, value in settings.model_dump(mode="json").items():
        current = getattr(settings, name)
        if value is None or name == "metrics_port" or name in leave_out:
            continue
        if hasattr(current, "get_secret_value"):
            value = current.get_secret_value()
        elif isinstance(current, Path):
            value = str(current.resolve())
        env[f"BRANDBOT_{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    # The same code as this eval, wherever it was imported from (a checkout, not only an installed copy).
    code = str(Path(brandbot.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, os.environ.get("PYTHONPATH")]))
    return env


@contextlib.asynccontextmanager
async def private_worker(
    queue: RequestQueue,
    environment: dict[str, str],
    prompts_dir: Path,
    *,
    label: str,
    start_wait_seconds: float = START_WAIT_SECONDS,
) -> AsyncIterator[str]:
    """Run a worker on `prompts_dir` (absolute); yields the private model queue it serves, then stops it.

    `environment` comes from `worker_environment`.
    """
    with_prompts = {**environment, "BRANDBOT_PROMPTS_DIR": str(prompts_dir)}
    async with own_worker(
        queue, with_prompts, name=f"eval-{label}", start_wait_seconds=start_wait_seconds
    ) as model:
        yield model


@contextlib.asynccontextmanager
async def own_worker(
    queue: RequestQueue,
    environment: dict[str, str],
    *,
    name: str,
    start_wait_seconds: float = START_WAIT_SECONDS,
) -> AsyncIterator[str]:
    """Run a worker with `environment` on a model queue of its own (named after `name`), yield that queue's
    model name once the worker serves it, then stop the worker (SIGTERM, then SIGKILL)."""
    model = f"{name}-{uuid.uuid4().hex[:8]}"
    env = {**environment, "BRANDBOT_MODEL_NAME": model}
    with tempfile.TemporaryFile() as log, tempfile.TemporaryDirectory() as empty:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "brandbot.cli", "worker"),
            env=env,
            cwd=empty,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            await _wait_ready(queue, process, model, log, start_wait_seconds)
            yield model
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), STOP_WAIT_SECONDS)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def _wait_ready(
    queue: RequestQueue, process: asyncio.subprocess.Process, model: str, log: IO[bytes], wait_seconds: float
) -> None:
    give_up_at = time.monotonic() + wait_seconds
    while time.monotonic() < give_up_at:
        if process.returncode is not None:
            raise WorkerDidNotStart(
                f"the {name_of(model)} worker exited with code {process.returncode}: {_last_line(log)}"
            )
        if await queue.workers_alive(model) > 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 0.2)
    raise WorkerDidNotStart(
        f"the {name_of(model)} worker was not ready within {wait_seconds:g} s: {_last_line(log)}"
    )


def name_of(model: str) -> str:
    """`eval-a` of `eval-a-1f2e3d4c`: which command's worker it is, for its error line."""
    return model.rsplit("-", 1)[0]


def _last_line(log: IO[bytes]) -> str:
    """The worker's last log line (its logs carry no message text), to say why it did not start."""
    log.seek(0)
    lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else "(no output)"
