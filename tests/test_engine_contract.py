"""One contract every engine keeps: the CPU engine always, ExLlamaV2 and ExLlamaV3 where CUDA is present.

The GPU engines run a random model with realistic shapes (head size 128, hidden size 1024, four layers:
`build_tiny_model(size="gpu")`), and skip with the reason where CUDA or the package is missing.
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from brandbot.contract import FinishReason
from brandbot.templating import ChatTemplate
from worker.engines import load_engine
from worker.engines.base import Engine, GenerationStream, SamplingSettings
from worker.tiny_model import build_tiny_model

GREEDY = SamplingSettings(temperature=0.0, max_new_tokens=40)


def cuda_skip_reason(package: str) -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    if importlib.util.find_spec(package) is None:  # not imported here: it builds CUDA code at import
        return f"{package} is not installed (pip install '.[gpu]')"
    return None


@pytest.fixture(
    scope="module",
    params=[
        "transformers",
        pytest.param("exllamav2", marks=pytest.mark.gpu),
        pytest.param("exllamav3", marks=pytest.mark.gpu),
    ],
)
def engine_and_template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[tuple[Engine, ChatTemplate]]:
    from brandbot.settings import EngineName

    name = EngineName(request.param)
    model_dir = tiny_model
    if name is not EngineName.TRANSFORMERS:
        if reason := cuda_skip_reason(name.value):
            pytest.skip(reason)
        model_dir = build_tiny_model(tmp_path_factory.mktemp("gpu-model") / "tiny", size="gpu")
    engine = load_engine(name, model_dir, concurrency=8)
    yield engine, ChatTemplate.from_model_dir(model_dir)
    engine.close()


@pytest.fixture
def engine(engine_and_template: tuple[Engine, ChatTemplate]) -> Engine:
    return engine_and_template[0]


@pytest.fixture
def prompt(engine_and_template: tuple[Engine, ChatTemplate]) -> str:
    template = engine_and_template[1]
    return template.render([{"role": "user", "content": "How do I reset my password?"}])


def collect(stream: GenerationStream) -> list[str]:
    return list(stream)


@pytest.fixture
def endless_prompt(engine_and_template: tuple[Engine, ChatTemplate]) -> str:
    """A prompt whose greedy answer runs at least 300 tokens without an end of turn (random weights)."""
    engine, template = engine_and_template
    for attempt in range(30):
        candidate = template.render([{"role": "user", "content": f"hello {attempt}"}])
        stream = engine.submit(
            candidate, SamplingSettings(temperature=0.0, max_new_tokens=300), deadline_seconds=60
        )
        collect(stream)
        if stream.result is not None and stream.result.finish_reason is FinishReason.LENGTH:
            return candidate
    raise AssertionError("no prompt found whose greedy answer runs 300 tokens")


def test_deltas_arrive_in_order_and_add_up_to_the_final_text(engine: Engine, prompt: str) -> None:
    stream = engine.submit(prompt, GREEDY, deadline_seconds=60)
    deltas = collect(stream)
    assert stream.result is not None
    assert len(deltas) > 1
    assert "".join(deltas) == stream.result.text


def test_usage_counts_match_the_tokenizer(engine: Engine, prompt: str) -> None:
    stream = engine.submit(prompt, GREEDY, deadline_seconds=60)
    collect(stream)
    assert stream.result is not None
    assert stream.result.prompt_tokens == engine.count_tokens(prompt)
    assert 0 < stream.result.completion_tokens <= GREEDY.max_new_tokens
    assert stream.result.time_to_first_token_ms is not None
    assert stream.result.time_to_first_token_ms <= stream.result.total_ms


def test_max_new_tokens_ends_with_length(engine: Engine, prompt: str) -> None:
    stream = engine.submit(prompt, SamplingSettings(temperature=0.0, max_new_tokens=5), deadline_seconds=60)
    collect(stream)
    assert stream.result is not None
    assert stream.result.completion_tokens <= 5
    if stream.result.finish_reason is FinishReason.LENGTH:
        assert stream.result.completion_tokens == 5
    else:
        assert stream.result.finish_reason is FinishReason.STOP


def test_stop_string_ends_generation_and_never_reaches_the_user(engine: Engine, prompt: str) -> None:
    free = engine.submit(prompt, GREEDY, deadline_seconds=60)
    collect(free)
    assert free.result is not None
    text = free.result.text
    assert len(text) > 12, "the greedy answer is too short to pick a stop string from"
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = engine.submit(
        prompt,
        SamplingSettings(temperature=0.0, max_new_tokens=40, stop_strings=(stop,)),
        deadline_seconds=60,
    )
    shown = "".join(collect(stopped))
    assert stopped.result is not None
    assert stopped.result.finish_reason is FinishReason.STOP
    assert stop not in shown
    assert shown == text[: text.index(stop)]


def test_banned_phrase_is_never_generated_and_the_answer_still_finishes(engine: Engine, prompt: str) -> None:
    free = engine.submit(prompt, GREEDY, deadline_seconds=60)
    collect(free)
    assert free.result is not None
    # Two words of what the model says unbanned: a phrase that spans tokens (the tiny model writes nonsense).
    found = re.search(r"[A-Za-z]{2,} [A-Za-z]{2,}", free.result.text)
    assert found is not None, "the tiny model's answer changed shape; pick another prompt"
    phrase = found.group()
    assert engine.count_tokens(phrase) >= 2
    banned = SamplingSettings(temperature=0.0, max_new_tokens=40, banned_phrases=(phrase.upper(),))
    stream = engine.submit(prompt, banned, deadline_seconds=60)
    deltas = collect(stream)
    assert stream.result is not None
    assert stream.result.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert phrase.lower() not in stream.result.text.lower()
    assert "".join(deltas) == stream.result.text  # nothing streamed was taken back
    assert stream.result.text != free.result.text


def test_cancel_stops_within_a_second_with_the_partial_answer(engine: Engine, prompt: str) -> None:
    stream = engine.submit(
        prompt, SamplingSettings(temperature=0.0, max_new_tokens=2000), deadline_seconds=60
    )
    first = next(iter(stream))
    stream.cancel()
    rest = collect(stream)
    assert stream.result is not None
    assert stream.result.finish_reason is FinishReason.CANCELLED
    assert stream.result.text == first + "".join(rest)
    assert stream.result.completion_tokens < 2000


def test_deadline_ends_with_a_partial_answer_marked_as_such(engine: Engine, endless_prompt: str) -> None:
    stream = engine.submit(
        endless_prompt, SamplingSettings(temperature=0.0, max_new_tokens=300), deadline_seconds=0.05
    )
    shown = "".join(collect(stream))
    assert stream.result is not None
    assert stream.result.finish_reason is FinishReason.DEADLINE
    assert stream.result.completion_tokens < 300
    assert shown == stream.result.text


def test_concurrent_generations_each_get_their_own_text(
    engine: Engine, engine_and_template: tuple[Engine, ChatTemplate]
) -> None:
    template = engine_and_template[1]
    prompts = [template.render([{"role": "user", "content": f"Question number {i}"}]) for i in range(6)]
    alone = []
    for each in prompts:
        stream = engine.submit(each, GREEDY, deadline_seconds=60)
        alone.append("".join(collect(stream)))
    together = [engine.submit(each, GREEDY, deadline_seconds=60) for each in prompts]
    texts = ["".join(collect(stream)) for stream in together]
    assert texts == alone
    assert len(set(texts)) > 1, "different prompts should give different answers"


def test_a_cancelled_generation_frees_its_slot(engine: Engine, prompt: str, endless_prompt: str) -> None:
    long = SamplingSettings(temperature=0.0, max_new_tokens=100_000)
    hogs = [engine.submit(endless_prompt, long, deadline_seconds=60) for _ in range(engine.max_concurrency)]
    waiting = engine.submit(prompt, GREEDY, deadline_seconds=60)
    time.sleep(0.2)
    for hog in hogs:
        hog.cancel()
    collect(waiting)
    assert waiting.result is not None and waiting.result.finish_reason in (
        FinishReason.STOP,
        FinishReason.LENGTH,
    )
    assert all(
        h.result is not None and h.result.finish_reason is FinishReason.CANCELLED
        for h in hogs
        if collect(h) is not None
    )


def test_every_sampler_setting_is_honoured_without_error(engine: Engine, prompt: str) -> None:
    sampling = SamplingSettings(
        temperature=0.7, top_p=0.8, top_k=20, min_p=0.05, repetition_penalty=1.3, max_new_tokens=30, seed=3
    )
    first = engine.submit(prompt, sampling, deadline_seconds=60)
    second = engine.submit(prompt, sampling, deadline_seconds=60)
    texts = ["".join(collect(first)), "".join(collect(second))]
    assert first.result is not None and first.result.completion_tokens > 0
    assert texts[0] == texts[1], "the same seed must give the same answer"


async def test_deltas_can_be_read_from_a_coroutine_too(engine: Engine, prompt: str) -> None:
    stream = engine.submit(prompt, GREEDY, deadline_seconds=60)
    deltas = [delta async for delta in stream]
    assert stream.result is not None
    assert "".join(deltas) == stream.result.text and deltas


def test_the_deadline_runs_from_admission_not_from_submission(engine: Engine, endless_prompt: str) -> None:
    long = SamplingSettings(temperature=0.0, max_new_tokens=100_000)
    hogs = [engine.submit(endless_prompt, long, deadline_seconds=120) for _ in range(engine.max_concurrency)]
    allowance = 3.0
    waiting = engine.submit(endless_prompt, long, deadline_seconds=allowance)
    admit_after = time.monotonic() + allowance * 0.5  # half its allowance spent waiting for a place
    while time.monotonic() < admit_after:
        assert waiting.admitted_at is None, "the engine took more requests than its max_concurrency"
        time.sleep(0.05)
    for hog in hogs:
        hog.cancel()
    collect(waiting)
    result = waiting.result
    assert result is not None and waiting.admitted_at is not None and result.completion_tokens > 0
    # It runs until its deadline a whole allowance after admission, or until the context is full (a fast
    # machine). Counted from submission, the deadline would cut it half an allowance after admission.
    # (Monotonic clock, a lower bound: load can only make it longer.)
    if result.finish_reason is FinishReason.DEADLINE:
        assert result.total_ms >= (0.5 + 1.0) * allowance * 1000
    else:
        assert result.finish_reason is FinishReason.LENGTH
        assert result.prompt_tokens + result.completion_tokens >= engine.context_length - 1
    for hog in hogs:
        collect(hog)
