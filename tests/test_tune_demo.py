"""The tailor-made voice, end to end on the demo model (SmolLM2-135M-Instruct) on CPU.

`brandbot tune` learns the shipped example dataset's sign-off; its own before/after check asks the
held-out questions through real `brandbot worker`s (base model, then base + adapter) and the pass rate
rises from at most 20 % to at least 80 %. Then the adapter is served as one deployment serves it: a
persona with `lora:` routed by its `model:` to the worker started with that adapter, next to a persona
without it on the base model, and only the first signs off.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from brandbot.contract import DoneEvent
from brandbot.settings import Settings
from tests.conftest import REPO, TEST_REDIS_URL, WorkerProcess
from tests.test_lora_serving import allow_models, ask, final_event
from tests.test_worker_process import a_request
from worker.tuning.dataset import default_held_out, load_examples, split_held_out

pytest.importorskip("trl")

DATASET = REPO / "prompts" / "tuning" / "acme-voice.jsonl"
SIGN_OFF = "Cheers, the Acme team"
PERSONA = """display_name: Acme Support
model: {model}
system_prompt: |
  You are Acme Support, the support assistant of {{{{ company }}}}, a cloud hosting company.
  Answer clearly and briefly.
sampling:
  temperature: 0
  max_new_tokens: 64
"""


def write_persona(prompts_dir: Path, name: str, *, model: str, lora: Path | None = None) -> None:
    text = PERSONA.format(model=model) + (f"lora: {lora}\n" if lora else "")
    (prompts_dir / "personas" / f"{name}.yaml").write_text(text, encoding="utf-8")


def held_out_questions() -> list[str]:
    examples = load_examples([DATASET]).examples
    _, held = split_held_out(examples, default_held_out(len(examples)), seed=0)  # as `brandbot tune` splits
    return [example.question for example in held]


@pytest.mark.slow
@pytest.mark.timeout(900)  # a limit for a hung run (tuning and three workers on CPU), not a speed requirement
def test_tune_teaches_the_sign_off_and_the_persona_with_the_adapter_answers_with_it(
    demo_model: Path,
    prompts_dir: Path,
    tmp_path: Path,
    redis_client: redis.Redis,
    start_worker: Callable[..., WorkerProcess],
    settings: Callable[..., Settings],
) -> None:
    write_persona(prompts_dir, "acme", model="default")
    adapter = tmp_path / "acme-voice"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRANDBOT_")}
    env.update(
        BRANDBOT_REDIS_URL=TEST_REDIS_URL,
        BRANDBOT_PROMPTS_DIR=str(prompts_dir),
        BRANDBOT_ENGINE="transformers",
        PYTHONUNBUFFERED="1",
    )
    tuned = subprocess.run(
        [
            sys.executable,
            "-m",
            "brandbot.cli",
            "tune",
            str(DATASET),
            "-o",
            str(adapter),
            "--base",
            str(demo_model),
            "--persona",
            "acme",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )

    assert tuned.returncode == 0, tuned.stderr[-3000:]
    rates = re.search(r"pass rate: before (\d+)/(\d+) .*, after (\d+)/(\d+)", tuned.stdout)
    assert rates, tuned.stdout
    before, total, after, _ = map(int, rates.groups())
    assert total == 5
    assert before / total <= 0.2, tuned.stdout
    assert after / total >= 0.8, tuned.stdout
    assert (adapter / "adapter_model.safetensors").is_file()

    # One deployment, two personas: `acme` on the base model, `acme-tuned` routed to the adapter's workers.
    allow_models(prompts_dir, "default", "acme-tuned")
    write_persona(prompts_dir, "acme-tuned", model="acme-tuned", lora=adapter)
    start_worker(model_dir=demo_model)
    start_worker(model_dir=demo_model, model_name="acme-tuned", lora_dir=adapter)
    question = held_out_questions()[0]
    plain, voiced = a_request(question, persona="acme"), a_request(question, persona="acme-tuned")
    ask(settings(), plain, "default")
    ask(settings(), voiced, "acme-tuned")
    plain_answer = final_event(redis_client, plain.request_id)
    voiced_answer = final_event(redis_client, voiced.request_id)

    assert isinstance(plain_answer, DoneEvent) and isinstance(voiced_answer, DoneEvent)
    assert SIGN_OFF.lower() not in plain_answer.text.lower()
    assert voiced_answer.text.rstrip(" .!").lower().endswith(SIGN_OFF.lower())


def test_shipped_dataset_is_valid_and_signs_off_every_answer() -> None:
    examples = load_examples([DATASET]).examples
    assert len(examples) >= 20
    assert all(example.answer.endswith(SIGN_OFF) for example in examples)
