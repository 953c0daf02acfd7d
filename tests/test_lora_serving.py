"""A persona's `lora:` is served, never ignored: routing sends it to the workers that serve its adapter.

Two personas on one deployment: `plain` (model `default`: a worker on the base model) and `tuned`
(model `tuned`: a worker started with `BRANDBOT_LORA_DIR`). Same question, greedy: the answers differ.
A persona whose adapter no worker on its queue serves gets a kind message, and the admin a line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from brandbot import messages
from brandbot.contract import DoneEvent, ErrorEvent, ErrorKind, GenerationRequest
from brandbot.errors import PromptFileError
from brandbot.promptfiles.library import load_prompt_library
from brandbot.queue import RequestQueue
from brandbot.settings import Settings
from tests.conftest import WorkerProcess
from tests.test_worker_process import a_request, events_of, wait_for
from tests.tune_fixtures import make_adapter, make_foreign_adapter

pytest.importorskip("peft")

QUESTION = "How do I reset my password?"


def write_persona(prompts_dir: Path, name: str, *, model: str, lora: Path | None = None) -> None:
    lines = [
        f"display_name: {name.title()}",
        f"model: {model}",
        "system_prompt: You are the assistant of {{ company }}.",
        "sampling:",
        "  temperature: 0",
        "  max_new_tokens: 12",
    ]
    if lora is not None:
        lines.append(f"lora: {lora}")
    (prompts_dir / "personas" / f"{name}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def allow_models(prompts_dir: Path, *models: str) -> None:
    routing = prompts_dir / "routing.yaml"
    text = routing.read_text(encoding="utf-8").replace("models: [default]", f"models: [{', '.join(models)}]")
    routing.write_text(text, encoding="utf-8")


def ask(settings: Settings, request: GenerationRequest, model: str) -> None:
    async def go() -> None:
        queue = RequestQueue.from_settings(settings)
        await queue.enqueue(request, model=model)
        await queue.close()

    asyncio.run(go())


def final_event(client: redis.Redis, request_id: str) -> DoneEvent | ErrorEvent:
    def ended() -> bool:
        return any(isinstance(e, DoneEvent | ErrorEvent) for e in events_of(client, request_id))

    wait_for(ended, 60, "an answer")
    return next(e for e in events_of(client, request_id) if isinstance(e, DoneEvent | ErrorEvent))


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model, tmp_path_factory.mktemp("adapters") / "tiny-lora")


def test_two_personas_answer_with_and_without_their_adapter(
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    settings: Callable[..., Settings],
    prompts_dir: Path,
    tiny_model: Path,
    tiny_adapter: Path,
    tmp_path: Path,
) -> None:
    from worker.tuning.adapters import merge_adapter

    merged = merge_adapter(tiny_model, tiny_adapter, tmp_path / "merged")
    assert (merged / "brandbot-tune.json").is_file() and not (tmp_path / ".merged.partial").exists()
    allow_models(prompts_dir, "default", "tuned", "merged")
    write_persona(prompts_dir, "plain", model="default")
    write_persona(prompts_dir, "tuned", model="tuned", lora=tiny_adapter)
    write_persona(prompts_dir, "also-tuned", model="merged", lora=tiny_adapter)
    load_prompt_library(prompts_dir)  # the files are valid as written
    start_worker()
    start_worker(model_name="tuned", lora_dir=tiny_adapter)
    start_worker(model_name="merged", model_dir=merged)

    plain, tuned = a_request(QUESTION, persona="plain"), a_request(QUESTION, persona="tuned")
    from_merged = a_request(QUESTION, persona="also-tuned")
    ask(settings(), plain, "default")
    ask(settings(), tuned, "tuned")
    ask(settings(), from_merged, "merged")
    base_answer = final_event(redis_client, plain.request_id)
    tuned_answer = final_event(redis_client, tuned.request_id)
    merged_answer = final_event(redis_client, from_merged.request_id)

    assert isinstance(base_answer, DoneEvent) and isinstance(tuned_answer, DoneEvent)
    assert tuned_answer.text != base_answer.text  # greedy both: only the adapter differs
    # The merged folder's brandbot-tune.json names the adapter: its worker serves the persona too.
    assert isinstance(merged_answer, DoneEvent)


def test_persona_whose_adapter_is_not_served_gets_a_kind_message_not_the_base_voice(
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    settings: Callable[..., Settings],
    prompts_dir: Path,
    tiny_adapter: Path,
) -> None:
    write_persona(prompts_dir, "tuned", model="default", lora=tiny_adapter)
    worker = start_worker()  # the base model only

    request = a_request(QUESTION, persona="tuned")
    ask(settings(), request, "default")
    event = final_event(redis_client, request.request_id)

    assert isinstance(event, ErrorEvent)
    assert event.kind is ErrorKind.PERSONA and event.message == messages.FINE_TUNE_UNAVAILABLE
    log = worker.log()
    # The admin hears of it at start and at the question, naming the persona (no message text).
    assert log.count("fine-tune not served") >= 2 and "tuned" in log
    assert QUESTION not in log


def test_adapter_for_another_base_model_stops_the_worker_with_one_line(
    start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    foreign = make_foreign_adapter(tmp_path / "foreign-lora")
    worker = start_worker(wait=False, lora_dir=foreign)

    assert worker.process.wait(timeout=60) != 0
    log = worker.log()
    assert f"{foreign}: made for another base model" in log
    assert "Traceback" not in log


def test_personas_sharing_a_model_may_not_name_different_adapters(
    prompts_dir: Path, tiny_adapter: Path, tmp_path: Path, tiny_model: Path
) -> None:
    other = make_adapter(tiny_model, tmp_path / "other-lora", seed=1)
    write_persona(prompts_dir, "first", model="default", lora=tiny_adapter)
    write_persona(prompts_dir, "second", model="default", lora=other)

    with pytest.raises(PromptFileError) as raised:
        load_prompt_library(prompts_dir)

    (problem,) = raised.value.problems
    assert problem.startswith(f"{prompts_dir / 'personas' / 'second.yaml'}:7:")
    assert "model name of its own" in problem
