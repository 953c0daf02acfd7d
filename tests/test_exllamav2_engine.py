"""The ExLlamaV2 engine: what needs no GPU runs everywhere; the real thing runs where CUDA and exllamav2 are.

On CPU the engine's generation thread runs against a stand-in for exllamav2's dynamic generator that returns
results shaped as exllamav2 0.3.2's `iterate()` documents them (generator/dynamic.py). The `gpu` class loads
a real model folder whose weights are rewritten so each next token depends only on the last one: every
expected output is then known exactly.
"""

from __future__ import annotations

import dataclasses
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
from brandbot.errors import EngineLoadError
from worker.engines.base import GenerationResult, GenerationStream, SamplingSettings
from worker.engines.exllamav2 import ExLlamaV2Engine, cache_tokens_for, model_eos_ids, sampler_settings

REPO = Path(__file__).resolve().parent.parent
GREEDY = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=64)

# ExLlamaV2Sampler.Settings' scalar fields and defaults in exllamav2 0.3.2 (generator/sampler.py).
LIBRARY_SETTINGS = {
    "token_repetition_penalty": 1.025,
    "token_repetition_range": -1,
    "token_repetition_decay": 0,
    "token_frequency_penalty": 0.0,
    "token_presence_penalty": 0.0,
    "temperature": 0.8,
    "smoothing_factor": 0.0,
    "min_temp": 0,
    "max_temp": 0.0,
    "temp_exponent": 1.0,
    "top_k": 50,
    "top_p": 0.8,
    "top_a": 0.0,
    "min_p": 0,
    "tfs": 0,
    "typical": 0,
    "skew": 0,
    "temperature_last": False,
    "mirostat": False,
    "mirostat_tau": 1.5,
    "mirostat_eta": 0.1,
    "dry_allowed_length": 2,
    "dry_base": 1.75,
    "dry_multiplier": 0.0,
    "dry_range": 0,
    "dry_max_ngram": 20,
    "xtc_probability": 0.0,
    "xtc_threshold": 0.1,
}


def collect(stream: GenerationStream, consumed: str = "") -> tuple[list[str], GenerationResult]:
    """The rest of a stream's deltas and its result, whose text must be exactly what was streamed."""
    deltas = list(stream)
    assert stream.result is not None
    assert consumed + "".join(deltas) == stream.result.text
    return deltas, stream.result


# -- pure parts ----------------------------------------------------------------------------------------
def test_module_imports_without_importing_exllamav2() -> None:
    code = "import sys, worker.engines.exllamav2; print('exllamav2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sampler_settings_pass_the_persona_and_switch_every_other_sampler_off() -> None:
    persona = SamplingSettings(temperature=0.6, top_p=0.95, top_k=40, min_p=0.05, repetition_penalty=1.1)
    values = sampler_settings(persona)
    assert set(values) <= set(LIBRARY_SETTINGS), "every key must be a real ExLlamaV2Sampler.Settings field"
    assert (values["temperature"], values["top_p"], values["top_k"], values["min_p"]) == (0.6, 0.95, 40, 0.05)
    assert values["token_repetition_penalty"] == 1.1
    # The library's non-neutral defaults are never left in place.
    for name in ("temperature", "top_k", "top_p", "token_repetition_penalty"):
        assert name in values
    neutral = sampler_settings(SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0))
    assert neutral == {
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "min_p": 0.0,
        "token_repetition_penalty": 1.0,
        "token_repetition_range": -1,
        "token_repetition_decay": 0,
        "token_frequency_penalty": 0.0,
        "token_presence_penalty": 0.0,
        "temperature_last": False,
        "smoothing_factor": 0.0,
        "min_temp": 0.0,
        "max_temp": 0.0,
        "temp_exponent": 1.0,
        "top_a": 0.0,
        "tfs": 0.0,
        "typical": 0.0,
        "skew": 0.0,
        "mirostat": False,
        "dry_multiplier": 0.0,
        "xtc_probability": 0.0,
    }


def test_cache_is_page_aligned_and_always_holds_one_full_sequence() -> None:
    assert cache_tokens_for(2048, 4, None, paged=True) == 8192
    assert cache_tokens_for(1000, 3, None, paged=True) == 3072
    assert cache_tokens_for(32768, 8, None, paged=True) == 65536  # capped
    assert cache_tokens_for(131072, 8, None, paged=True) == 131072  # but one sequence always fits
    assert cache_tokens_for(4096, 8, 1000, paged=True) == 4096
    assert cache_tokens_for(4096, 8, 10_000, paged=True) == 10_240
    assert cache_tokens_for(1000, 8, 50_000, paged=False) == 1024  # unpaged: one sequence at a time


def test_eos_ids_come_from_config_and_generation_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        '{"eos_token_id": [128001, 128009], "text_config": {"eos_token_id": 7}}'
    )
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": 128008}')
    assert model_eos_ids(tmp_path) == {128001, 128009, 7, 128008}


def test_missing_or_incomplete_model_folder_says_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(EngineLoadError, match="does not exist: check BRANDBOT_MODEL_DIR"):
        ExLlamaV2Engine(tmp_path / "nope", concurrency=1)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(
        EngineLoadError, match=r"incomplete \(no tokenizer.json, \*.safetensors weights\)"
    ) as info:
        ExLlamaV2Engine(tmp_path, concurrency=1)
    assert "\n" not in str(info.value)


def test_without_cuda_the_engine_refuses_with_a_one_line_hint(tiny_model: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(EngineLoadError) as info:
        ExLlamaV2Engine(tiny_model, concurrency=2)
    message = str(info.value)
    assert message == "BRANDBOT_ENGINE=exllamav2 needs a CUDA GPU; use BRANDBOT_ENGINE=transformers on CPU"
    assert "exllamav2" not in sys.modules


# -- the generation thread, against a stand-in for exllamav2 -------------------------------------------
EOS_ID, END_OF_TURN_ID = 2, 7
FakeSettings = dataclasses.make_dataclass(
    "Settings",
    [(name, type(value), dataclasses.field(default=value)) for name, value in LIBRARY_SETTINGS.items()],
)


def on_engine_thread() -> None:
    assert threading.current_thread().name == "engine-exllamav2", (
        "only the engine thread may drive the generator"
    )


class FakeTokenizer:
    """One token per character; `<|im_end|>` is one token only when special tokens are encoded."""

    eos_token_id = EOS_ID

    def __init__(self, config: Any) -> None:
        self.calls: list[dict[str, Any]] = []

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
    def __init__(self, input_ids: Any, max_new_tokens: int, identifier: object = None, **kwargs: Any) -> None:
        self.input_ids, self.max_new_tokens, self.identifier = input_ids, max_new_tokens, identifier
        self.kwargs, self.stop_conditions = kwargs, kwargs["stop_conditions"]
        self.new_tokens = 0
        # The prompt scripts the output: "say:A|B|<eos>" → "A", "B", then the EOS token; then "." forever.
        # "<eos:X>" is the EOS token while the generator still holds back "X" (e.g. a stop string's start).
        prompt = "".join(chr(i) for i in input_ids[0].tolist() if i >= 32)
        self.script = prompt.split("say:")[-1].split("|") if "say:" in prompt else []

    def next_piece(self) -> str:
        return self.script.pop(0) if self.script else "."


class FakeGenerator:
    instances: list[FakeGenerator] = []  # noqa: RUF012

    def __init__(self, *, model: Any, cache: Any, tokenizer: Any, max_batch_size: int, paged: bool) -> None:
        self.max_batch_size, self.paged = max_batch_size, paged
        self.pending: list[FakeJob] = []
        self.active: list[FakeJob] = []
        self.cancelled: list[FakeJob] = []
        self.raise_next: Exception | None = None
        FakeGenerator.instances.append(self)

    def enqueue(self, job: FakeJob) -> int:
        on_engine_thread()
        self.pending.append(job)
        return 0

    def cancel(self, job: FakeJob) -> None:
        on_engine_thread()
        for jobs in (self.pending, self.active):
            if job in jobs:
                jobs.remove(job)
        self.cancelled.append(job)

    def clear_queue(self) -> None:
        self.pending.clear()
        self.active.clear()

    def set_loras(self, loras: Any) -> None:
        pass

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
            results.append({"job": job, "stage": "started", "eos": False, "identifier": job.identifier})
        for job in list(self.active):
            piece = job.next_piece()
            job.new_tokens += 1
            result: dict[str, Any] = {
                "job": job,
                "stage": "streaming",
                "eos": False,
                "identifier": job.identifier,
            }
            if piece.startswith("<eos"):  # a stop token: the text still held comes back under "held"
                held = piece.removeprefix("<eos").removeprefix(":").removesuffix(">")
                result.update(
                    eos_reason="stop_token", eos_triggering_token_str="<|im_end|>", held={"text": held}
                )
            elif piece in job.stop_conditions:
                result.update(eos_reason="stop_string", text="")
            else:
                result["text"] = piece
                if job.new_tokens >= job.max_new_tokens:
                    result["eos_reason"] = "max_new_tokens"
            if "eos_reason" in result:
                prompt_tokens = job.input_ids.shape[-1]
                result.update(eos=True, new_tokens=job.new_tokens, prompt_tokens=prompt_tokens)
                self.active.remove(job)
            results.append(result)
        return results


class FakeModel:
    unloaded = 0

    def __init__(self, config: Any) -> None:
        self.config = config

    def load_autosplit(self, cache: Any) -> None:
        if self.config.fail_with is not None:
            raise self.config.fail_with

    def load(self, gpu_split: list[float]) -> None:
        pass

    def unload(self) -> None:
        FakeModel.unloaded += 1


@pytest.fixture
def fake_exllamav2(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Installs a stand-in `exllamav2` package and a CUDA-capable-looking torch; returns the knobs."""
    torch = pytest.importorskip("torch")
    knobs = types.SimpleNamespace(paged=True, fail_with=None)
    attn = types.ModuleType("exllamav2.attn")

    class Config:
        def __init__(self, model_dir: str) -> None:
            self.max_seq_len, self.no_flash_attn, self.fail_with = 2048, False, knobs.fail_with
            attn.has_flash_attn_with_paged = knobs.paged  # type: ignore[attr-defined]

        def arch_compat_overrides(self) -> None:
            pass

    package = types.ModuleType("exllamav2")
    package.ExLlamaV2Config = Config  # type: ignore[attr-defined]
    package.ExLlamaV2Tokenizer = FakeTokenizer  # type: ignore[attr-defined]
    package.ExLlamaV2 = FakeModel  # type: ignore[attr-defined]
    for name in ("ExLlamaV2Cache", "ExLlamaV2Cache_Q8", "ExLlamaV2Cache_Q6", "ExLlamaV2Cache_Q4"):
        setattr(
            package,
            name,
            lambda model, max_seq_len, lazy=False: types.SimpleNamespace(max_seq_len=max_seq_len),
        )
    generator = types.ModuleType("exllamav2.generator")
    generator.ExLlamaV2DynamicGenerator = FakeGenerator  # type: ignore[attr-defined]
    generator.ExLlamaV2DynamicJob = FakeJob  # type: ignore[attr-defined]
    generator.ExLlamaV2Sampler = types.SimpleNamespace(Settings=FakeSettings)  # type: ignore[attr-defined]
    package.attn, package.generator = attn, generator  # type: ignore[attr-defined]
    for name, module in (
        ("exllamav2", package),
        ("exllamav2.attn", attn),
        ("exllamav2.generator", generator),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    FakeGenerator.instances.clear()
    return knobs


@pytest.fixture
def make_engine(
    fake_exllamav2: types.SimpleNamespace, tiny_model: Path
) -> Iterator[Callable[..., ExLlamaV2Engine]]:
    engines: list[ExLlamaV2Engine] = []

    def make(**options: Any) -> ExLlamaV2Engine:
        engines.append(ExLlamaV2Engine(tiny_model, **{"concurrency": 4, **options}))
        return engines[-1]

    yield make
    for engine in engines:
        engine.close()


def test_paged_mode_batches_and_unpaged_mode_runs_one_at_a_time(
    make_engine: Callable[..., ExLlamaV2Engine], fake_exllamav2: types.SimpleNamespace
) -> None:
    engine = make_engine()
    assert engine.mode == "paged, continuous batching up to 4"
    assert (FakeGenerator.instances[-1].paged, FakeGenerator.instances[-1].max_batch_size) == (True, 4)
    fake_exllamav2.paged = False
    engine = make_engine()
    assert engine.mode == "unpaged, one request at a time (flash-attn >= 2.5.7 not found)"
    assert (FakeGenerator.instances[-1].paged, FakeGenerator.instances[-1].max_batch_size) == (False, 1)
    assert engine.max_concurrency == 1
    streams = [engine.submit(f"say:{n}|<eos>", GREEDY, deadline_seconds=10) for n in "abcd"]
    assert [collect(s)[1].text for s in streams] == ["a", "b", "c", "d"]


def test_stream_deltas_then_stop_on_end_of_turn(make_engine: Callable[..., ExLlamaV2Engine]) -> None:
    engine = make_engine()
    stream = engine.submit("say:Hel|lo| there|<eos>", GREEDY, deadline_seconds=10)
    deltas, result = collect(stream)
    assert deltas == ["Hel", "lo", " there"]
    assert (result.finish_reason, result.completion_tokens) == (FinishReason.STOP, 3)  # EOS not counted
    assert result.prompt_tokens == len("say:Hel|lo| there|<eos>")
    # Text held back (maybe a stop string's start) when the end-of-turn token comes is still shown.
    held = collect(
        engine.submit("say:Use|<eos:r>", SamplingSettings(stop_strings=("User:",)), deadline_seconds=10)
    )
    assert (held[0], held[1].text) == (["Use", "r"], "User")
    assert result.time_to_first_token_ms is not None and result.total_ms >= result.time_to_first_token_ms


def test_job_gets_explicit_sampler_settings_stop_conditions_and_special_tokens(
    make_engine: Callable[..., ExLlamaV2Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine()
    seen: list[FakeJob] = []
    original = FakeGenerator.enqueue

    def spy(self: FakeGenerator, job: FakeJob) -> int:
        seen.append(job)
        return original(self, job)

    monkeypatch.setattr(FakeGenerator, "enqueue", spy)
    sampling = SamplingSettings(
        temperature=0.5,
        top_p=0.9,
        top_k=20,
        min_p=0.1,
        stop_strings=("User:", ""),
        banned_phrases=("As an AI",),
        seed=3,
    )
    collect(engine.submit("say:x|<eos>", sampling, deadline_seconds=10))
    (job,) = seen
    assert dataclasses.asdict(job.kwargs["gen_settings"]) == {
        **LIBRARY_SETTINGS,
        **sampler_settings(sampling),
    }
    assert job.kwargs["seed"] == 3
    assert job.kwargs["banned_strings"] == ["As an AI"]  # the library folds case itself
    assert set(job.stop_conditions) == {EOS_ID, END_OF_TURN_ID, "User:"}  # the empty stop string is dropped
    assert job.max_new_tokens == sampling.max_new_tokens
    assert engine.count_tokens("ab<|im_end|>") == 3  # a rendered prompt's special tokens count once
    calls = engine._tokenizer.calls
    assert all(call["encode_special_tokens"] and not call["add_bos"] for call in calls)


def test_stop_string_and_max_new_tokens(make_engine: Callable[..., ExLlamaV2Engine]) -> None:
    engine = make_engine()
    stopped = engine.submit("say:a|b|User:|c", SamplingSettings(stop_strings=("User:",)), deadline_seconds=10)
    result = collect(stopped)[1]
    assert (result.finish_reason, result.text, result.completion_tokens) == (FinishReason.STOP, "ab", 3)
    capped = engine.submit("say:a|b|c|d", SamplingSettings(max_new_tokens=2), deadline_seconds=10)
    result = collect(capped)[1]
    assert (result.finish_reason, result.text, result.completion_tokens) == (FinishReason.LENGTH, "ab", 2)


def test_max_new_tokens_is_capped_to_the_context_window(make_engine: Callable[..., ExLlamaV2Engine]) -> None:
    engine = make_engine()
    prompt = "say:" + "x" * 2040
    result = collect(engine.submit(prompt, SamplingSettings(max_new_tokens=500), deadline_seconds=10))[1]
    assert (result.finish_reason, result.completion_tokens) == (FinishReason.LENGTH, 2048 - len(prompt))
    with pytest.raises(ValueError, match="does not fit"):
        collect(engine.submit("x" * 2048, GREEDY, deadline_seconds=10))


def test_cancel_and_deadline_cancel_the_job_and_keep_the_partial_text(
    make_engine: Callable[..., ExLlamaV2Engine],
) -> None:
    engine = make_engine()
    stream = engine.submit("loop", SamplingSettings(max_new_tokens=100_000), deadline_seconds=30)
    first = stream.next_delta(timeout=5)
    assert first == "."
    stream.cancel()
    _, result = collect(stream, consumed=first)
    assert result.finish_reason is FinishReason.CANCELLED
    assert set(result.text) == {"."}
    assert 0 < result.completion_tokens < 100_000
    late = engine.submit("loop", SamplingSettings(max_new_tokens=100_000), deadline_seconds=0.1)
    _, result = collect(late)
    assert result.finish_reason is FinishReason.DEADLINE
    assert result.text and set(result.text) == {"."}
    assert len(FakeGenerator.instances[-1].cancelled) == 2
    assert engine.in_flight() == 0


def test_concurrent_requests_each_get_their_own_text(make_engine: Callable[..., ExLlamaV2Engine]) -> None:
    engine = make_engine()
    streams = {n: engine.submit(f"say:{n}|{n}{n}|<eos>", GREEDY, deadline_seconds=10) for n in "wxyz"}
    for n, stream in streams.items():
        assert collect(stream)[1].text == f"{n}{n}{n}"


def test_a_failing_iteration_fails_its_streams_and_the_engine_carries_on(
    make_engine: Callable[..., ExLlamaV2Engine],
) -> None:
    engine = make_engine()
    FakeGenerator.instances[-1].raise_next = RuntimeError("CUDA error: an illegal memory access")
    with pytest.raises(RuntimeError, match="illegal memory access"):
        collect(engine.submit("say:a|<eos>", GREEDY, deadline_seconds=10))
    assert collect(engine.submit("say:b|<eos>", GREEDY, deadline_seconds=10))[1].text == "b"


def test_close_ends_open_streams_unloads_the_model_and_refuses_new_work(
    make_engine: Callable[..., ExLlamaV2Engine],
) -> None:
    engine = make_engine()
    unloaded = FakeModel.unloaded
    stream = engine.submit("loop", SamplingSettings(max_new_tokens=100_000), deadline_seconds=30)
    assert stream.next_delta(timeout=5) == "."
    engine.close()
    assert collect(stream, consumed=".")[1].finish_reason is FinishReason.CANCELLED
    assert FakeModel.unloaded == unloaded + 1
    with pytest.raises(RuntimeError, match="closed"):
        collect(engine.submit("say:a", GREEDY, deadline_seconds=10))


def test_out_of_memory_while_loading_is_a_one_line_load_error(
    fake_exllamav2: types.SimpleNamespace, tiny_model: Path
) -> None:
    import torch

    fake_exllamav2.fail_with = torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB\nmore"
    )
    with pytest.raises(EngineLoadError, match="do not fit in GPU memory: lower cache_tokens") as info:
        ExLlamaV2Engine(tiny_model, concurrency=4, cache_type="q4")
    assert "\n" not in str(info.value) and "8192-token q4 cache" in str(info.value)
    fake_exllamav2.fail_with = RuntimeError("Insufficient VRAM for model and cache")
    with pytest.raises(EngineLoadError, match="do not fit in GPU memory"):
        ExLlamaV2Engine(tiny_model, concurrency=4)
    with pytest.raises(EngineLoadError, match="unknown cache type 'q3'"):
        ExLlamaV2Engine(tiny_model, concurrency=4, cache_type="q3")


# -- the real thing ------------------------------------------------------------------------------------
def rig_model(folder: Path, transitions: dict[int, int], default_next: int) -> None:
    """Rewrite the weights so the next token is `transitions[last token]`, or `default_next`.

    With every layer's output projections zeroed, the last hidden state is the last token's embedding.
    Each source token gets its own one-hot embedding (slot); the head row of its successor reads that slot.
    """
    import torch
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(path)
    vocab, hidden = weights["lm_head.weight"].shape
    for name, tensor in weights.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            tensor.zero_()
    embed = torch.zeros(vocab, hidden)
    head = torch.zeros(vocab, hidden)
    embed[:, 0] = 1.0
    head[default_next, 0] = 1.0
    for slot, (source, target) in enumerate(transitions.items(), start=1):
        embed[source] = 0.0
        embed[source, slot] = 1.0
        head[target, slot] = 1.0
    weights["model.embed_tokens.weight"] = embed.to(torch.float16)
    weights["lm_head.weight"] = head.to(torch.float16)
    weights["model.norm.weight"] = torch.ones(hidden, dtype=torch.float16)
    save_file(weights, path, metadata={"format": "pt"})


CHAT = "<|begin_of_text|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"  # → "xyz", then EOS
LOOP = "<|begin_of_text|><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant"  # → "~" forever
PARALLEL = {  # → its own digit, forever
    "1": "<|begin_of_text|>Hi<|pad|>",
    "2": "<|begin_of_text|>Hi<|begin_of_text|>",
    "3": "<|begin_of_text|>Hi<|im_end|>",
    "4": "<|begin_of_text|>Hi<|im_start|>",
}


def build_rigged_model(folder: Path, size: str) -> Path:
    from tokenizers import Tokenizer

    from worker.tiny_model import build_tiny_model

    build_tiny_model(folder, size=size)  # type: ignore[arg-type]
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def last(text: str) -> int:
        return int(tokenizer.encode(text, add_special_tokens=False).ids[-1])

    def token(piece: str) -> int:
        token_id = tokenizer.token_to_id(piece)
        assert token_id is not None, piece
        return int(token_id)

    x, y, z, eos = token("x"), token("y"), token("z"), token("<|im_end|>")
    transitions = {last(CHAT): x, x: y, y: z, z: eos}
    for digit, prompt in PARALLEL.items():
        transitions[last(prompt)] = token(digit)
        transitions[token(digit)] = token(digit)
    assert len(transitions) == 12 and last(LOOP) not in transitions
    rig_model(folder, transitions, default_next=token("~"))
    return folder


def test_the_rigged_model_behaves_as_designed_on_cpu(tmp_path: Path) -> None:
    """The GPU tests' premise, checked with transformers on CPU (same weights format, same tokenizer)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = build_rigged_model(tmp_path / "rigged", "cpu")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)

    def greedy(prompt: str, steps: int) -> str:
        ids = tokenizer.encode(prompt, add_special_tokens=False, return_tensors="pt")
        out = model.generate(ids, max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0)
        return str(tokenizer.decode(out[0, ids.shape[-1] :], skip_special_tokens=False))

    assert greedy(CHAT, 4) == "xyz<|im_end|>"
    assert greedy(LOOP, 5) == "~~~~~"
    for digit, prompt in PARALLEL.items():
        assert greedy(prompt, 3) == digit * 3


@pytest.fixture(scope="module")
def gpu_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExLlamaV2Engine]:
    try:
        import torch
    except ImportError:
        pytest.skip("torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    if importlib.util.find_spec("exllamav2") is None:
        pytest.skip("needs exllamav2: pip install '.[gpu]'")
    folder = build_rigged_model(tmp_path_factory.mktemp("models") / "rigged", "gpu")
    engine = ExLlamaV2Engine(folder, concurrency=4)
    yield engine
    engine.close()


@pytest.mark.gpu
class TestOnGpu:
    def test_mode_is_reported(self, gpu_engine: ExLlamaV2Engine) -> None:
        engine = gpu_engine
        assert engine.mode.startswith(
            ("paged, continuous batching up to 4", "unpaged, one request at a time")
        )
        assert engine.context_length == 2048

    def test_streams_then_stops_on_end_of_turn(self, gpu_engine: ExLlamaV2Engine) -> None:
        engine = gpu_engine
        deltas, result = collect(engine.submit(CHAT, GREEDY, deadline_seconds=60))
        assert len(deltas) >= 2
        assert (result.finish_reason, result.text, result.completion_tokens) == (FinishReason.STOP, "xyz", 3)
        assert result.prompt_tokens == engine.count_tokens(CHAT)

    def test_stops_at_max_new_tokens_and_at_stop_strings(self, gpu_engine: ExLlamaV2Engine) -> None:
        engine = gpu_engine
        capped = collect(
            engine.submit(CHAT, SamplingSettings(temperature=0, max_new_tokens=2), deadline_seconds=60)
        )
        assert (capped[1].finish_reason, capped[1].text, capped[1].completion_tokens) == (
            FinishReason.LENGTH,
            "xy",
            2,
        )
        stop = SamplingSettings(temperature=0, stop_strings=("z",))
        stopped = collect(engine.submit(CHAT, stop, deadline_seconds=60))[1]
        assert (stopped.finish_reason, stopped.text) == (FinishReason.STOP, "xy")

    def test_banned_phrase_is_never_generated(self, gpu_engine: ExLlamaV2Engine) -> None:
        banned = SamplingSettings(temperature=0, max_new_tokens=16, banned_phrases=("YZ",))
        deltas, result = collect(gpu_engine.submit(CHAT, banned, deadline_seconds=60))
        assert result.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
        assert result.text.startswith("x") and "yz" not in result.text.lower()
        assert "".join(deltas) == result.text

    def test_cancel_keeps_the_partial_text(self, gpu_engine: ExLlamaV2Engine) -> None:
        engine = gpu_engine
        stream = engine.submit(
            LOOP, SamplingSettings(temperature=0, max_new_tokens=1500), deadline_seconds=60
        )
        first = ""
        while not first:
            delta = stream.next_delta(timeout=30)
            assert delta is not None, "ended before any text"
            first = delta
        stream.cancel()
        _, result = collect(stream, consumed=first)
        assert result.finish_reason is FinishReason.CANCELLED
        assert set(result.text) == {"~"}
        assert result.completion_tokens < 1500

    def test_deadline_cuts_the_reply_short(self, gpu_engine: ExLlamaV2Engine) -> None:
        engine = gpu_engine
        stream = engine.submit(
            LOOP, SamplingSettings(temperature=0, max_new_tokens=1500), deadline_seconds=0.1
        )
        result = collect(stream)[1]
        assert result.finish_reason is FinishReason.DEADLINE
        assert set(result.text) <= {"~"} and result.completion_tokens < 1500

    def test_four_concurrent_requests_each_get_their_own_text(self, gpu_engine: ExLlamaV2Engine) -> None:
        engine = gpu_engine
        sampling = SamplingSettings(temperature=0, max_new_tokens=20)
        streams = {
            digit: engine.submit(prompt, sampling, deadline_seconds=60) for digit, prompt in PARALLEL.items()
        }
        for digit, stream in streams.items():
            result = collect(stream)[1]
            assert (result.finish_reason, result.text) == (FinishReason.LENGTH, digit * 20)
        assert engine.in_flight() == 0
