"""A `brandbot worker` of the eval's own, serving a prompt folder under review on a private queue.

A worker renders personas from the folder it was started with, so comparing two prompt folders means
two workers: each is the same `brandbot worker` that ships, started with `BRANDBOT_PROMPTS_DIR` set to
one folder and `BRANDBOT_MODEL_NAME` set to a queue nobody else uses (other settings are inherited, so it
loads the same model). Requests never carry persona text: the worker tier keeps trusting only its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from brandbot.errors import BrandbotError
from brandbot.queue import RequestQueue

START_WAIT_SECONDS = 300.0
"""Loading a large model can take minutes; past this, the eval gives up with the worker's last line."""

STOP_WAIT_SECONDS = 30.0
"""A worker finishes its answers and exits on SIGTERM; past this it is killed."""


class WorkerDidNotStart(BrandbotError):
    """The eval's own worker exited or never became ready."""


@contextlib.asynccontextmanager
async def private_worker(
    queue: RequestQueue, prompts_dir: Path, *, label: str, start_wait_seconds: float = START_WAIT_SECONDS
) -> AsyncIterator[str]:
    """Run a worker on `prompts_dir` (absolute); yields the private model queue it serves, then stops it."""
    model = f"eval-{label}-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "BRANDBOT_PROMPTS_DIR": str(prompts_dir), "BRANDBOT_MODEL_NAME": model}
    with tempfile.TemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "brandbot.cli", "worker", env=env, stdout=log, stderr=subprocess.STDOUT
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
                f"the eval's worker exited with code {process.returncode}: {_last_line(log)}"
            )
        if await queue.workers_alive(model) > 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 0.2)
    raise WorkerDidNotStart(f"the eval's worker was not ready within {wait_seconds:g} s: {_last_line(log)}")


def _last_line(log: IO[bytes]) -> str:
    """The worker's last log line (its logs carry no message text), to say why it did not start."""
    log.seek(0)
    lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else "(no output)"
