"""The ExLlamaV3 engine: what needs no GPU runs everywhere; the real thing runs where CUDA and exllamav3 are.

On CPU the engine's generation thread runs against a GPU test double: a stand-in for exllamav3's
`Generator` whose results are shaped as exllamav3 1.6.5's `iterate()` documents them (generator/generator.py:
"started", "streaming" with `eos_reason`, "held" and `new_tokens`, and the "error" result of a reaped job,
which carries no identifier). The `gpu` class loads the rigged model of the ExLlamaV2 tests (every next
token depends only on the last one), so every expected output is known exactly.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from brandbot.contract import FinishReason
from brandbot.errors import EngineDied, EngineLoadError
from tests.test_exllamav2_engine import CHAT, LOOP, PARALLEL, build_rigged_model
from worker.engines.base import GenerationResult, GenerationStream, SamplingSettings
from worker.engines.exllamav3 import (
    NO_CUDA,
    ExLlamaV3Engine,
    cache_layer_options,
    cache_tokens_for,
    completion_tokens,
    final_text,
    finish_reason,
    sampler_options,
)

REPO = Path(__file__).resolve().parent.parent
GREEDY = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=64)

# `ComboSampler.__init__`'s parameters and defaults in exllamav3 1.6.5 (generator/sampler/presets.py).
COMBO_SAMPLER_DEFAULTS: dict[str, Any] = {
    "rep_p": 1.0,
    "freq_p": 0.0,
    "pres_p": 0.0,
    "rep_sustain_range": int(10e7),
    "rep_decay_range": 0,
    "dry_multiplier": 0.0,
    "dry_base": 1.75,
    "dry_allowed_length": 2,
    "dry_range": 0,
    "dry_sequence_breakers": None,
    "temperature": 1.0,
    "min_p": 0.0,
    "top_k": 0,
    "top_p": 1.0,
    "temp_last": False,
    "adaptive_target": 1.0,
    "adaptive_decay": 0.9,
    "logit_bias": None,
}


def collect(stream: GenerationStream, consumed: str = "") -> tuple[list[str], GenerationResult]:
    """The rest of a stream's deltas and its result, whose text must be exactly what was streamed."""
    deltas = list(stream)
    assert stream.result is not None
    assert consumed + "".join(deltas) == stream.result.text
    return deltas, stream.result


# -- pure parts ----------------------------------------------------------------------------------------
def test_module_imports_without_importing_exllamav3() -> None:
    code = "import sys, worker.engines.exllamav3; print('exllamav3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cache_type_maps_to_exllamav3_quantized_cache_bits() -> None:
    assert cache_layer_options("fp16") == {}
    assert cache_layer_options("q8") == {"k_bits": 8, "v_bits": 8}
    assert cache_layer_options("q6") == {"k_bits": 6, "v_bits": 6}
    assert cache_layer_options("q4") == {"k_bits": 4, "v_bits": 4}
    with pytest.raises(EngineLoadError, match="unknown cache type 'q3': use one of fp16, q8, q6, q4"):
        cache_layer_options("q3")


def test_cache_is_page_aligned_and_always_holds_one_full_sequence() -> None:
    # A full-length job reserves its context plus one token of pages: 2048 tokens take 9 pages of 256.
    assert cache_tokens_for(2048, 4, None) == 4 * 2304
    assert cache_tokens_for(1000, 3, None) == 3072
    assert cache_tokens_for(32768, 8, None) == 65536  # capped
    assert cache_tokens_for(131072, 8, None) == 131328  # but one sequence always fits
    assert cache_tokens_for(4096, 8, 1000) == 4352
    assert cache_tokens_for(4096, 8, 10_000) == 10_240


def test_sampler_options_pass_the_persona_and_switch_every_other_step_off() -> None:
    persona = SamplingSettings(temperature=0.6, top_p=0.95, top_k=40, min_p=0.05, repetition_penalty=1.1)
    options = sampler_options(persona)
    assert set(options) <= set(COMBO_SAMPLER_DEFAULTS), "every key must be a ComboSampler parameter"
    assert (options["temperature"], options["top_p"], options["top_k"], options["min_p"]) == (
        0.6,
        0.95,
        40,
        0.05,
    )
    assert options["rep_p"] == 1.1
    neutral = sampler_options(SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0))
    # Every step other than the persona's is at the value that makes it a no-op in exllamav3.
    assert {k: v for k, v in neutral.items()} == {k: COMBO_SAMPLER_DEFAULTS[k] for k in neutral}
    assert sampler_options(SamplingSettings(temperature=0.0))["temperature"] == 0.0  # argmax


def test_result_dicts_map_to_finish_reasons_text_and_token_counts() -> None:
    assert finish_reason({"eos": True, "eos_reason": "stop_token"}) is FinishReason.STOP
    assert finish_reason({"eos": True, "eos_reason": "stop_string"}) is FinishReason.STOP
    assert finish_reason({"eos": True, "eos_reason": "max_new_tokens"}) is FinishReason.LENGTH
    assert finish_reason({"eos": True, "eos_reason": "something new"}) is FinishReason.STOP
    # A stop token: the text still held back (maybe a stop string's start) is shown, minus the token's text.
    stop_token = {
        "eos": True,
        "eos_reason": "stop_token",
        "eos_triggering_token_str": "</s>",
        "text": "",
        "held": {"text": "User</s>"},
        "new_tokens": 4,
    }
    assert final_text(stop_token) == "User"
    assert completion_tokens(stop_token, 0) == 3  # the end-of-turn token is not part of the answer
    stop_string = {"eos": True, "eos_reason": "stop_string", "text": "ab", "held": {"text": "User: x"}}
    assert final_text(stop_string) == "ab"
    assert completion_tokens({"eos_reason": "max_new_tokens", "new_tokens": 5}, 0) == 5
    assert completion_tokens({"eos_reason": "max_new_tokens"}, 7) == 7


def test_without_cuda_the_engine_refuses_with_a_one_line_hint(tiny_model: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(EngineLoadError) as info:
        ExLlamaV3Engine(tiny_model, concurrency=2)
    assert str(info.value) == NO_CUDA
    assert "exllamav3" not in sys.modules
    with pytest.raises(EngineLoadError, match="does not exist: check BRANDBOT_MODEL_DIR"):
        ExLlamaV3Engine(tiny_model / "nope", concurrency=2)


# -- the generation thread, against a GPU test double for exllamav3 ------------------------------------
EOS_ID, END_OF_TURN_ID = 2, 7


def on_engine_thread() -> None:
    assert threading.current_thread().name == "engine-exllamav3", "only the engine thread may drive it"


class FakeTokenizer:
    """One token per character; `<|im_end|>` is one token only when special tokens are encoded."""

    eos_token_id = EOS_ID

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    @staticmethod
    def from_config(config: Any) -> FakeTokenizer:
        return FakeTokenizer()

    def encode(self, text: str, add_bos: bool = False, encode_special_tokens: bool = False, **_: Any) -> Any:
        import torch

        self.calls.append({"add_bos": add_bos, "encode_special_tokens": encode_special_tokens})
        parts = text.split("<|im_end|>") if encode_special_tokens else [text]
        ids = [ord(c) for c in parts[0]]
        for part in parts[1:]:
            ids += [END_OF_TURN_ID, *(ord(c) for c in part)]
        return torch.tensor([ids], dtype=torch.long)

    def single_id(self, piece: str) -> int | None:
        return END_OF_TURN_ID if piece == "<|im_end|>" else None


class FakeJob:
    """Takes `Job`'s 1.6.5 keyword arguments; the prompt scripts the output.

    "say:A|B|<eos>" → "A", "B", then the EOS token; then "." forever. "<eos:X>" is the EOS token while the
    generator still holds back "X". "<fail>" makes the generator reap the job with an error.
    """

    def __init__(
        self, *, input_ids: Any, max_new_tokens: int, identifier: object = None, **kwargs: Any
    ) -> None:
        self.input_ids, self.max_new_tokens, self.identifier = input_ids, max_new_tokens, identifier
        self.kwargs = kwargs
        self.new_tokens = 0
        prompt = "".join(chr(i) for i in input_ids[0].tolist() if i >= 32)
        self.script = prompt.split("say:")[-1].split("|") if "say:" in prompt else []

    def next_piece(self) -> str:
        return self.script.pop(0) if self.script else "."


class FakeGenerator:
    """GPU test double for `exllamav3.Generator`: same constructor, enqueue/cancel/iterate/close shape."""

    instances: list[FakeGenerator] = []  # noqa: RUF012
    recurrent_slots: int | None = None  # a hybrid model: the batch is limited to its state slots

    def __init__(
        self, *, model: Any, cache: Any, tokenizer: Any, max_batch_size: int, max_chunk_size: int
    ) -> None:
        self.cache, self.max_batch_size = cache, max_batch_size
        if self.recurrent_slots is not None:
            self.max_batch_size = min(max_batch_size, self.recurrent_slots)
        self.pending: list[FakeJob] = []
        self.active: list[FakeJob] = []
        self.cancelled: list[FakeJob] = []
        self.enqueued: list[FakeJob] = []
        self.raise_next: BaseException | None = None
        self.closed = False
        FakeGenerator.instances.append(self)

    def enqueue(self, job: FakeJob) -> int:
        on_engine_thread()
        self.pending.append(job)
        self.enqueued.append(job)
        return len(self.enqueued)

    def cancel(self, job: FakeJob) -> None:
        on_engine_thread()
        for jobs in (self.pending, self.active):
            if job in jobs:
                jobs.remove(job)
        self.cancelled.append(job)

    def clear_queue(self) -> None:
        self.pending.clear()
        self.active.clear()

    def close(self) -> None:
        self.closed = True

    def iterate(self) -> list[dict[str, Any]]:
        on_engine_thread()
        time.sleep(0.002)  # a forward pass
        if self.raise_next is not None:
            error, self.raise_next = self.raise_next, None
            raise error
        results: list[dict[str, Any]] = []
        while self.pending and len(self.active) < self.max_batch_size:
            job = self.pending.pop(0)
            self.active.append(job)
            results.append(
                {"job": job, "stage": "started", "eos": False, "serial": 0, "identifier": job.identifier}
            )
        for job in list(self.active):
            piece = job.next_piece()
            if piece == "<fail>":  # reap_failed_job: no identifier in the result
                self.active.remove(job)
                results.append(
                    {"job": job, "serial": 0, "stage": "error", "eos": True, "error": ValueError("bad")}
                )
                continue
            job.new_tokens += 1
            result: dict[str, Any] = {
                "job": job,
                "stage": "streaming",
                "eos": False,
                "identifier": job.identifier,
            }
            if piece.startswith("<eos"):
                held = piece.removeprefix("<eos").removeprefix(":").removesuffix(">")
                result.update(eos_reason="stop_token", eos_triggering_token_str="<|im_end|>")
                if held:
                    result["held"] = {"text": held}
            elif piece in job.kwargs["stop_conditions"]:
                result.update(eos_reason="stop_string", eos_triggering_string=piece)
            else:
                result["text"] = piece
                if job.new_tokens >= job.max_new_tokens:
                    result["eos_reason"] = "max_new_tokens"
            if "eos_reason" in result:
                result.update(eos=True, new_tokens=job.new_tokens, prompt_tokens=job.input_ids.shape[-1])
                self.active.remove(job)
            results.append(result)
        return results


class FakeModel:
    unloaded = 0
    fail_with: BaseException | None = None

    def __init__(self, config: Any) -> None:
        self.config = config

    @staticmethod
    def from_config(config: Any) -> FakeModel:
        return FakeModel(config)

    def load(self, **options: Any) -> None:
        self.load_options = options
        if FakeModel.fail_with is not None:
            raise FakeModel.fail_with

    def unload(self) -> None:
        FakeModel.unloaded += 1


class FakeCache:
    instances: list[FakeCache] = []  # noqa: RUF012

    def __init__(
        self, model: Any, max_num_tokens: int, layer_type: Any, max_batch_size: int, **options: Any
    ) -> None:
        self.max_num_tokens, self.layer_type, self.options = max_num_tokens, layer_type, options
        self.max_batch_size = max_batch_size
        FakeCache.instances.append(self)


@pytest.fixture
def fake_exllamav3(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Installs a GPU test double of the `exllamav3` package and a CUDA-capable-looking torch."""
    torch = pytest.importorskip("torch")
    package = types.ModuleType("exllamav3")
    generator = types.ModuleType("exllamav3.generator")
    sampler = types.ModuleType("exllamav3.generator.sampler")

    class Config:
        max_position_embeddings = 2048
        eos_token_id_list = (EOS_ID,)

        @staticmethod
        def from_directory(directory: str) -> Config:
            return Config()

    class ComboSampler:
        def __init__(self, **options: Any) -> None:
            # An argument ComboSampler 1.6.5 does not take would fail in exllamav3 too.
            assert set(options) <= set(COMBO_SAMPLER_DEFAULTS)
            self.options = options

    package.Config = Config  # type: ignore[attr-defined]
    package.Tokenizer = FakeTokenizer  # type: ignore[attr-defined]
    package.Model = FakeModel  # type: ignore[attr-defined]
    package.Cache = FakeCache  # type: ignore[attr-defined]
    package.CacheLayer_fp16 = "CacheLayer_fp16"  # type: ignore[attr-defined]
    package.CacheLayer_quant = "CacheLayer_quant"  # type: ignore[attr-defined]
    package.Generator = FakeGenerator  # type: ignore[attr-defined]
    package.Job = FakeJob  # type: ignore[attr-defined]
    sampler.ComboSampler = ComboSampler  # type: ignore[attr-defined]
    package.generator, generator.sampler = generator, sampler  # type: ignore[attr-defined]
    for name, module in (
        ("exllamav3", package),
        ("exllamav3.generator", generator),
        ("exllamav3.generator.sampler", sampler),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(FakeModel, "fail_with", None)
    FakeGenerator.instances.clear()
    FakeCache.instances.clear()
    return package


@pytest.fixture
def make_engine(
    fake_exllamav3: types.ModuleType, tiny_model: Path
) -> Iterator[Callable[..., ExLlamaV3Engine]]:
    engines: list[ExLlamaV3Engine] = []

    def make(**options: Any) -> ExLlamaV3Engine:
        engines.append(ExLlamaV3Engine(tiny_model, **{"concurrency": 4, **options}))
        return engines[-1]

    yield make
    for engine in engines:
        engine.close()


def test_batches_up_to_the_worker_slots_with_the_chosen_cache(
    make_engine: Callable[..., ExLlamaV3Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(concurrency=16, cache_type="q6", cache_tokens=5000)
    assert engine.mode == "paged, continuous batching up to 16"
    assert engine.max_concurrency == 16 and FakeGenerator.instances[-1].max_batch_size == 16
    cache = FakeCache.instances[-1]
    assert cache.max_batch_size == 16
    assert (cache.max_num_tokens, cache.layer_type, cache.options) == (
        5120,
        "CacheLayer_quant",
        {"k_bits": 6, "v_bits": 6},
    )
    one = make_engine(concurrency=1)
    assert one.mode == "paged, one request at a time (BRANDBOT_WORKER_CONCURRENCY=1)"
    assert FakeCache.instances[-1].layer_type == "CacheLayer_fp16"
    assert make_engine(concurrency=1000).max_concurrency == 256
    monkeypatch.setattr(FakeGenerator, "recurrent_slots", 8)
    hybrid = make_engine(concurrency=16)
    assert (hybrid.max_concurrency, hybrid.mode) == (8, "paged, continuous batching up to 8")


def test_stream_deltas_then_stop_on_end_of_turn(make_engine: Callable[..., ExLlamaV3Engine]) -> None:
    engine = make_engine()
    stream = engine.submit("say:Hel|lo| there|<eos>", GREEDY, deadline_seconds=10)
    deltas, result = collect(stream)
    assert deltas == ["Hel", "lo", " there"]
    assert (result.finish_reason, result.completion_tokens) == (FinishReason.STOP, 3)
    assert result.prompt_tokens == len("say:Hel|lo| there|<eos>")
    assert result.time_to_first_token_ms is not None and result.total_ms >= result.time_to_first_token_ms
    held = collect(
        engine.submit("say:Use|<eos:r>", SamplingSettings(stop_strings=("User:",)), deadline_seconds=10)
    )
    assert (held[0], held[1].text) == (["Use", "r"], "User")


def test_job_gets_sampler_stop_conditions_banned_phrases_and_no_special_tokens(
    make_engine: Callable[..., ExLlamaV3Engine],
) -> None:
    engine = make_engine()
    sampling = SamplingSettings(
        temperature=0.5,
        top_k=20,
        min_p=0.1,
        stop_strings=("User:", ""),
        banned_phrases=("As an AI", ""),
        seed=3,
    )
    collect(engine.submit("say:x|<eos>", sampling, deadline_seconds=10))
    (job,) = FakeGenerator.instances[-1].enqueued
    assert job.kwargs["sampler"].options == sampler_options(sampling)
    assert job.kwargs["seed"] == 3
    assert set(job.kwargs["stop_conditions"]) == {EOS_ID, END_OF_TURN_ID, "User:"}  # empty one dropped
    assert job.kwargs["banned_strings"] == ["As an AI"]
    assert job.kwargs["decode_special_tokens"] is False
    assert job.max_new_tokens == sampling.max_new_tokens
    collect(engine.submit("say:x|<eos>", GREEDY, deadline_seconds=10))
    assert FakeGenerator.instances[-1].enqueued[-1].kwargs["banned_strings"] is None
    assert engine.count_tokens("ab<|im_end|>") == 3  # a rendered prompt's special tokens count once
    tokenizer: Any = engine._tokenizer
    assert all(call["encode_special_tokens"] and not call["add_bos"] for call in tokenizer.calls)


def test_stop_string_and_max_new_tokens(make_engine: Callable[..., ExLlamaV3Engine]) -> None:
    engine = make_engine()
    stopped = engine.submit("say:a|b|User:|c", SamplingSettings(stop_strings=("User:",)), deadline_seconds=10)
    result = collect(stopped)[1]
    assert (result.finish_reason, result.text, result.completion_tokens) == (FinishReason.STOP, "ab", 3)
    capped = engine.submit("say:a|b|c|d", SamplingSettings(max_new_tokens=2), deadline_seconds=10)
    result = collect(capped)[1]
    assert (result.finish_reason, result.text, result.completion_tokens) == (FinishReason.LENGTH, "ab", 2)
    prompt = "say:" + "x" * 2040
    result = collect(engine.submit(prompt, SamplingSettings(max_new_tokens=500), deadline_seconds=10))[1]
    assert (result.finish_reason, result.completion_tokens) == (FinishReason.LENGTH, 2048 - len(prompt))
    with pytest.raises(ValueError, match="does not fit"):
        collect(engine.submit("x" * 2048, GREEDY, deadline_seconds=10))


def test_cancel_from_another_thread_and_deadline_keep_the_partial_text(
    make_engine: Callable[..., ExLlamaV3Engine],
) -> None:
    engine = make_engine()
    stream = engine.submit("loop", SamplingSettings(max_new_tokens=100_000), deadline_seconds=30)
    first = stream.next_delta(timeout=5)
    assert first == "."
    canceller = threading.Thread(target=stream.cancel)
    canceller.start()
    canceller.join()
    _, result = collect(stream, consumed=first)
    assert result.finish_reason is FinishReason.CANCELLED
    assert set(result.text) == {"."} and 0 < result.completion_tokens < 100_000
    late = engine.submit("loop", SamplingSettings(max_new_tokens=100_000), deadline_seconds=0.1)
    _, result = collect(late)
    assert result.finish_reason is FinishReason.DEADLINE
    assert result.text and set(result.text) == {"."}
    assert len(FakeGenerator.instances[-1].cancelled) == 2
    assert engine.in_flight() == 0


def test_concurrent_requests_each_get_their_own_text(make_engine: Callable[..., ExLlamaV3Engine]) -> None:
    engine = make_engine()
    streams = {n: engine.submit(f"say:{n}|{n}{n}|<eos>", GREEDY, deadline_seconds=10) for n in "vwxyz"}
    for n, stream in streams.items():
        assert collect(stream)[1].text == f"{n}{n}{n}"


def test_a_failed_job_fails_only_its_stream_and_a_failed_iteration_fails_all(
    make_engine: Callable[..., ExLlamaV3Engine],
) -> None:
    engine = make_engine()
    other = engine.submit("say:a|b|c|<eos>", GREEDY, deadline_seconds=10)
    with pytest.raises(ValueError, match="bad"):
        collect(engine.submit("say:<fail>", GREEDY, deadline_seconds=10))
    assert collect(other)[1].text == "abc"
    FakeGenerator.instances[-1].raise_next = RuntimeError("CUDA error: an illegal memory access")
    with pytest.raises(RuntimeError, match="illegal memory access"):
        collect(engine.submit("say:a|<eos>", GREEDY, deadline_seconds=10))
    assert collect(engine.submit("say:b|<eos>", GREEDY, deadline_seconds=10))[1].text == "b"


def test_a_dead_generation_thread_fails_every_stream_and_later_submissions(
    make_engine: Callable[..., ExLlamaV3Engine],
) -> None:
    engine = make_engine()
    running = engine.submit("loop", SamplingSettings(max_new_tokens=100_000), deadline_seconds=30)
    assert running.next_delta(timeout=5) == "."
    FakeGenerator.instances[-1].raise_next = SystemExit(3)  # not an Exception: the thread dies
    with pytest.raises(EngineDied):
        collect(running, consumed=".")
    assert engine.failure == "the exllamav3 engine's generation thread died (SystemExit)"
    with pytest.raises(EngineDied):
        collect(engine.submit("say:a|<eos>", GREEDY, deadline_seconds=10))


def test_close_ends_open_streams_unloads_the_model_and_refuses_new_work(
    make_engine: Callable[..., ExLlamaV3Engine],
) -> None:
    engine = make_engine()
    unloaded = FakeModel.unloaded
    generator = FakeGenerator.instances[-1]
    stream = engine.submit("loop", SamplingSettings(max_new_tokens=100_000), deadline_seconds=30)
    assert stream.next_delta(timeout=5) == "."
    engine.close()
    assert collect(stream, consumed=".")[1].finish_reason is FinishReason.CANCELLED
    assert FakeModel.unloaded == unloaded + 1 and generator.closed
    with pytest.raises(RuntimeError, match="closed"):
        collect(engine.submit("say:a", GREEDY, deadline_seconds=10))


def test_out_of_memory_while_loading_is_a_one_line_load_error(
    fake_exllamav3: types.ModuleType, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(FakeModel, "fail_with", torch.cuda.OutOfMemoryError("CUDA out of memory.\nmore"))
    with pytest.raises(
        EngineLoadError, match="do not fit in GPU memory: lower BRANDBOT_CACHE_TOKENS"
    ) as info:
        ExLlamaV3Engine(tiny_model, concurrency=4, cache_type="q4")
    assert "\n" not in str(info.value) and "9216-token q4 cache" in str(info.value)
    monkeypatch.setattr(FakeModel, "fail_with", ValueError("Unexpected architecture Foo\nin config.json"))
    with pytest.raises(EngineLoadError, match=r"^cannot load the model in .*: Unexpected architecture Foo$"):
        ExLlamaV3Engine(tiny_model, concurrency=4)


# -- the real thing ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExLlamaV3Engine]:
    try:
        import torch
    except ImportError:
        pytest.skip("torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    if importlib.util.find_spec("exllamav3") is None:
        pytest.skip("needs exllamav3: pip install '.[gpu]'")
    folder = build_rigged_model(tmp_path_factory.mktemp("models") / "rigged", "gpu")
    engine = ExLlamaV3Engine(folder, concurrency=4, cache_type="q8")
    yield engine
    engine.close()


@pytest.mark.gpu
class TestOnGpu:
    def test_mode_is_reported(self, gpu_engine: ExLlamaV3Engine) -> None:
        assert gpu_engine.mode == "paged, continuous batching up to 4"
        assert gpu_engine.context_length == 2048

    def test_streams_then_stops_on_end_of_turn(self, gpu_engine: ExLlamaV3Engine) -> None:
        deltas, result = collect(gpu_engine.submit(CHAT, GREEDY, deadline_seconds=60))
        assert len(deltas) >= 2
        assert (result.finish_reason, result.text, result.completion_tokens) == (FinishReason.STOP, "xyz", 3)
        assert result.prompt_tokens == gpu_engine.count_tokens(CHAT)

    def test_stops_at_max_new_tokens_and_at_stop_strings(self, gpu_engine: ExLlamaV3Engine) -> None:
        capped = collect(
            gpu_engine.submit(CHAT, SamplingSettings(temperature=0, max_new_tokens=2), deadline_seconds=60)
        )
        assert (capped[1].finish_reason, capped[1].text) == (FinishReason.LENGTH, "xy")
        stopped = collect(
            gpu_engine.submit(CHAT, SamplingSettings(temperature=0, stop_strings=("z",)), deadline_seconds=60)
        )
        assert (stopped[1].finish_reason, stopped[1].text) == (FinishReason.STOP, "xy")

    def test_a_banned_phrase_is_never_generated(self, gpu_engine: ExLlamaV3Engine) -> None:
        banned = SamplingSettings(temperature=0, max_new_tokens=8, banned_phrases=("Y",))  # case-insensitive
        result = collect(gpu_engine.submit(CHAT, banned, deadline_seconds=60))[1]
        assert result.text.startswith("x") and "y" not in result.text.lower()

    def test_cancel_keeps_the_partial_text(self, gpu_engine: ExLlamaV3Engine) -> None:
        stream = gpu_engine.submit(
            LOOP, SamplingSettings(temperature=0, max_new_tokens=1500), deadline_seconds=60
        )
        first = ""
        while not first:
            delta = stream.next_delta(timeout=30)
            assert delta is not None, "ended before any text"
            first = delta
        stream.cancel()
        _, result = collect(stream, consumed=first)
        assert result.finish_reason is FinishReason.CANCELLED and set(result.text) == {"~"}

    def test_parallel_answers_stay_apart(self, gpu_engine: ExLlamaV3Engine) -> None:
        capped = SamplingSettings(temperature=0, max_new_tokens=20)
        streams = {
            digit: gpu_engine.submit(prompt, capped, deadline_seconds=60)
            for digit, prompt in PARALLEL.items()
        }
        for digit, stream in streams.items():
            assert collect(stream)[1].text == digit * 20
