"""GPU engine (ExLlamaV2's dynamic generator): EXL2-quantised or plain FP16 Hugging Face folders.

One engine thread is the only caller of `generator.iterate()`. `submit` (any thread) hands a request over a
queue; the engine thread turns it into an `ExLlamaV2DynamicJob`, routes each result to its stream by the
job's identifier, and enforces cancellation and the deadline itself (a Python timeout cannot interrupt CUDA).

exllamav2 is imported only inside the constructor: its wheel builds a CUDA extension at import time and
fails on a machine without CUDA, so importing this module must stay cheap and safe everywhere.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brandbot.contract import FinishReason
from brandbot.errors import EngineDied, EngineLoadError
from brandbot.logs import get_logger
from worker.engines.base import Engine, GenerationResult, GenerationStream, SamplingSettings

log = get_logger(__name__)

IDLE_WAIT_SECONDS = 0.05
PAGE_TOKENS = 256  # exllamav2's PAGED_PAGE_SIZE: the cache length must be a multiple of it, paged or not
MAX_CHUNK_TOKENS = 2048  # prompt tokens ingested per forward pass (exllamav2's default max_input_len)
MAX_Q_SIZE = 8  # the generator's default max_q_size; bounds the batch size with max_input_len
DEFAULT_CACHE_CAP_TOKENS = 65_536  # a default cache stops here; further jobs wait in the generator
NO_CUDA = "BRANDBOT_ENGINE=exllamav2 needs a CUDA GPU; use BRANDBOT_ENGINE=transformers on CPU"
CACHE_CLASSES = {
    "fp16": "ExLlamaV2Cache",
    "q8": "ExLlamaV2Cache_Q8",
    "q6": "ExLlamaV2Cache_Q6",
    "q4": "ExLlamaV2Cache_Q4",
}
# Common chat templates' end-of-turn tokens; those that are single tokens in the vocabulary stop generation.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")


def sampler_settings(sampling: SamplingSettings) -> dict[str, float | int | bool]:
    """Every `ExLlamaV2Sampler.Settings` field that changes sampling, set explicitly.

    The library's defaults are not neutral (temperature 0.8, top_k 50, top_p 0.8, repetition penalty 1.025),
    so the persona's values are always passed and every other sampler is switched off by value rather than
    by trusting a default. exllamav2 treats temperature < 0.01 as greedy, top_k 0, top_p 1 and min_p 0 as off.
    """
    return {
        "temperature": sampling.temperature,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "min_p": sampling.min_p,
        "token_repetition_penalty": sampling.repetition_penalty,
        "token_repetition_range": -1,  # the whole context, as Hugging Face's repetition penalty does
        "token_repetition_decay": 0,
        "token_frequency_penalty": 0.0,
        "token_presence_penalty": 0.0,
        "temperature_last": False,  # temperature before truncation, the usual order
        "smoothing_factor": 0.0,
        "min_temp": 0.0,
        "max_temp": 0.0,  # dynamic temperature is on only when max_temp > min_temp
        "temp_exponent": 1.0,
        "top_a": 0.0,
        "tfs": 0.0,
        "typical": 0.0,
        "skew": 0.0,
        "mirostat": False,
        "dry_multiplier": 0.0,
        "xtc_probability": 0.0,
    }


def cache_tokens_for(max_seq_len: int, concurrency: int, requested: int | None, *, paged: bool) -> int:
    """Total cache length: always room for one full-length sequence, a multiple of the page size."""
    one_sequence = _round_up(max_seq_len)
    if not paged:
        return one_sequence  # the unpaged generator holds one sequence at a time
    if requested is None:
        requested = min(max_seq_len * concurrency, DEFAULT_CACHE_CAP_TOKENS)
    return max(one_sequence, _round_up(requested))


def check_model_folder(model_dir: Path) -> None:
    """Fail early, with a fix, on what exllamav2 would report as an assertion deep inside loading."""
    if not model_dir.is_dir():
        raise EngineLoadError(f"{model_dir} does not exist: check BRANDBOT_MODEL_DIR")
    missing = [name for name in ("config.json", "tokenizer.json") if not (model_dir / name).is_file()]
    if not any(model_dir.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if missing:
        raise EngineLoadError(
            f"{model_dir} is incomplete (no {', '.join(missing)}): download the whole model folder again"
        )


def model_eos_ids(model_dir: Path) -> set[int]:
    """EOS ids listed in config.json and generation_config.json (exllamav2's config keeps only the first)."""
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        try:
            data = json.loads((model_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for section in (data, data.get("text_config") or {}):
            value = section.get("eos_token_id")
            ids.update([value] if isinstance(value, int) else [v for v in value or () if isinstance(v, int)])
    return ids


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise EngineLoadError("the GPU engine needs torch and exllamav2: pip install '.[gpu]'") from None
    return torch


def _import_exllamav2() -> Any:
    """Import exllamav2 (which builds or loads its CUDA extension now) or say in one line what to do."""
    try:
        import exllamav2
        import exllamav2.attn
        import exllamav2.generator
    except ImportError as error:
        if (error.name or "").split(".")[0] == "exllamav2":
            raise EngineLoadError(
                "exllamav2 is not installed: pip install '.[gpu]' (or use BRANDBOT_ENGINE=transformers)"
            ) from None
        raise EngineLoadError(f"exllamav2 cannot be imported ({error}): pip install '.[gpu]'") from None
    except Exception as error:
        first_line = f"{type(error).__name__}: {error}".splitlines()[0]
        raise EngineLoadError(
            f"exllamav2's CUDA extension failed to build or load ({first_line}):"
            " check that the CUDA toolkit matches torch's CUDA version"
        ) from None
    return exllamav2


def _round_up(tokens: int) -> int:
    return -(-tokens // PAGE_TOKENS) * PAGE_TOKENS


@dataclass
class _Request:
    stream: GenerationStream
    sampling: SamplingSettings
    input_ids: Any  # torch.LongTensor of shape (1, prompt_tokens), on the CPU as the job requires
    prompt_tokens: int
    max_new_tokens: int
    job: Any = None
    parts: list[str] = field(default_factory=list)
    first_token_at: float | None = None


class ExLlamaV2Engine(Engine):
    name = "exllamav2"

    def __init__(
        self,
        model_dir: Path,
        *,
        concurrency: int,
        cache_type: str = "fp16",
        cache_tokens: int | None = None,
        gpu_split: list[float] | None = None,
        lora_dir: Path | None = None,
        max_seq_len: int | None = None,
    ) -> None:
        check_model_folder(model_dir)
        if cache_type not in CACHE_CLASSES:
            raise EngineLoadError(f"unknown cache type {cache_type!r}: use one of {', '.join(CACHE_CLASSES)}")
        torch = _import_torch()
        if not torch.cuda.is_available():
            raise EngineLoadError(NO_CUDA)
        exllamav2 = _import_exllamav2()
        from exllamav2 import attn as exl_attn
        from exllamav2.generator import ExLlamaV2DynamicGenerator, ExLlamaV2DynamicJob, ExLlamaV2Sampler

        self._torch = torch
        self._job_class = ExLlamaV2DynamicJob
        self._settings_class = ExLlamaV2Sampler.Settings

        try:
            config = exllamav2.ExLlamaV2Config(str(model_dir))
            config.arch_compat_overrides()  # turns off flash-attn etc. where this architecture needs it
            self._tokenizer = exllamav2.ExLlamaV2Tokenizer(config)
        except (AssertionError, ValueError, KeyError, TypeError, OSError) as error:
            raise EngineLoadError(f"cannot read the model in {model_dir}: {error}".splitlines()[0]) from None
        if max_seq_len is not None:
            if max_seq_len > config.max_seq_len:
                raise EngineLoadError(
                    f"max_seq_len {max_seq_len} exceeds this model's {config.max_seq_len}: lower it"
                )
            config.max_seq_len = max_seq_len
        # The paged generator needs the prefill chunk (max_input_len) to be a multiple of the page size.
        chunk = min(MAX_CHUNK_TOKENS, config.max_seq_len // PAGE_TOKENS * PAGE_TOKENS)
        if chunk < PAGE_TOKENS:
            raise EngineLoadError(
                f"max_seq_len {config.max_seq_len} is too short: use at least {PAGE_TOKENS}"
            )
        config.max_input_len, config.max_attention_size = chunk, chunk**2
        config.max_output_len = 16  # generation needs logits for at most max_q_size positions; saves VRAM
        self.context_length = int(config.max_seq_len)

        paged, why_unpaged = self._paged_support(exl_attn, config)
        batch = min(concurrency, chunk // MAX_Q_SIZE) if paged else 1
        self.max_concurrency = batch
        self.mode = (
            f"paged, continuous batching up to {batch}"
            if paged
            else f"unpaged, one request at a time ({why_unpaged})"
        )
        total_tokens = cache_tokens_for(self.context_length, batch, cache_tokens, paged=paged)
        cache_class = getattr(exllamav2, CACHE_CLASSES[cache_type])
        self._model: Any = None
        self._lora: Any = None
        try:
            self._model = exllamav2.ExLlamaV2(config)
            if gpu_split is None:
                cache = cache_class(self._model, max_seq_len=total_tokens, lazy=True)
                self._model.load_autosplit(cache)  # fills GPUs in turn, allocating the cache alongside
            else:
                self._model.load(gpu_split)
                cache = cache_class(self._model, max_seq_len=total_tokens)
            self._generator: Any = ExLlamaV2DynamicGenerator(
                model=self._model, cache=cache, tokenizer=self._tokenizer, max_batch_size=batch, paged=paged
            )
            if lora_dir is not None:
                self._lora = exllamav2.ExLlamaV2Lora.from_directory(self._model, str(lora_dir))
                self._generator.set_loras([self._lora])  # applies to every job: one fine-tune per worker
        except Exception as error:
            if self._model is not None:
                self._model.unload()
            message = self._load_failure(error, model_dir, total_tokens, cache_type)
            if message is None:
                raise
            raise EngineLoadError(message) from None
        self._stop_ids = self._end_token_ids(model_dir)

        self._incoming: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._active: dict[int, _Request] = {}
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._closed = False
        self._accepting = True
        self._accepting_lock = threading.Lock()
        self._start_generation_thread(self._run)
        log.info(
            "exllamav2 engine loaded",
            mode=self.mode,
            context_length=self.context_length,
            cache_tokens=total_tokens,
            cache_type=cache_type,
            lora=lora_dir is not None,
            stop_token_ids=self._stop_ids,
        )

    # -- Engine interface ------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        # Rendered prompts contain the template's special tokens, which must count as one token each.
        return int(self._tokenizer.encode(text, encode_special_tokens=True).shape[-1])

    def submit(self, prompt: str, sampling: SamplingSettings, *, deadline_seconds: float) -> GenerationStream:
        stream = GenerationStream(deadline_seconds)
        # add_bos=False: the chat template renders BOS itself.
        input_ids = self._tokenizer.encode(prompt, add_bos=False, encode_special_tokens=True)
        prompt_tokens = int(input_ids.shape[-1])
        room = self.context_length - prompt_tokens
        if prompt_tokens == 0 or room < 1:
            stream.fail(ValueError(f"prompt of {prompt_tokens} tokens does not fit {self.context_length}"))
            return stream
        # The generator does not check the context window per job, so cap the answer to what is left.
        max_new = max(1, min(sampling.max_new_tokens, room))
        with self._accepting_lock:  # once the engine thread has stopped, nothing may wait in the queue
            if self.failure is not None:
                stream.fail(EngineDied(self.failure))
                return stream
            if not self._accepting:
                stream.fail(RuntimeError("the exllamav2 engine is closed"))
                return stream
            self._incoming.put(_Request(stream, sampling, input_ids, prompt_tokens, max_new))
        self._wake.set()
        return stream

    def in_flight(self) -> int:
        return len(self._active) + self._incoming.qsize()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._wake.set()
        assert self._thread is not None
        self._thread.join(timeout=30)
        if self._thread.is_alive():  # stuck in a CUDA call: freeing the model under it would crash
            log.warning("exllamav2 engine thread did not stop; model left loaded")
            return
        for pool in (
            getattr(self._generator, "sampling_pool", None),
            getattr(self._generator, "filter_pool", None),
        ):
            if pool is not None:
                pool.shutdown(wait=False)
        if self._lora is not None:
            self._lora.unload()
        self._model.unload()
        self._generator = None
        self._torch.cuda.empty_cache()

    # -- loading helpers -------------------------------------------------------------------------------
    def _paged_support(self, exl_attn: Any, config: Any) -> tuple[bool, str]:
        """Paged attention (continuous batching) needs flash-attn >= 2.5.7, as exllamav2/attn.py detects."""
        if not getattr(exl_attn, "has_flash_attn_with_paged", False):
            return False, "flash-attn >= 2.5.7 not found"
        if config.no_flash_attn:
            return False, "flash-attn disabled for this model or by EXLLAMA_NO_FLASH_ATTN"
        cuda = self._torch.cuda
        if any(cuda.get_device_capability(i)[0] < 8 for i in range(cuda.device_count())):
            config.no_flash_attn = True  # flash-attn 2 runs on Ampere or newer only
            return False, "flash-attn needs an Ampere or newer GPU"
        return True, ""

    def _end_token_ids(self, model_dir: Path) -> list[int]:
        """EOS is not automatic in the dynamic generator: EOS ids plus the template's end-of-turn token."""
        ids = model_eos_ids(model_dir)
        if self._tokenizer.eos_token_id is not None:
            ids.add(int(self._tokenizer.eos_token_id))
        for piece in END_OF_TURN_TOKENS:
            token_id = self._tokenizer.single_id(piece)
            if token_id is not None:
                ids.add(int(token_id))
        return sorted(ids)

    def _load_failure(
        self, error: Exception, model_dir: Path, total_tokens: int, cache_type: str
    ) -> str | None:
        """One line saying what went wrong while loading and what to do; None for an unexpected error."""
        text = str(error)
        if isinstance(error, self._torch.cuda.OutOfMemoryError) or any(
            marker in text
            for marker in ("Insufficient VRAM", "out of memory")  # load_autosplit's own error
        ):
            return (
                f"the model and a {total_tokens}-token {cache_type} cache do not fit in GPU memory: lower"
                " cache_tokens or max_seq_len, use cache_type q8/q4, or a smaller quantisation"
            )
        if isinstance(error, AssertionError | ValueError | KeyError | OSError):
            return f"cannot load the model in {model_dir}: {text}".splitlines()[0]
        return None

    # -- the generation thread -------------------------------------------------------------------------
    def _run(self) -> None:
        keys = itertools.count()
        while not self._closing.is_set():
            self._admit(keys)
            self._enforce_limits()
            if not self._active:
                self._wake.wait(IDLE_WAIT_SECONDS)
                self._wake.clear()
                continue
            try:
                results = self._generator.iterate()
            except Exception as error:  # which job broke is unknown: fail them all, start clean
                for key in list(self._active):
                    self._active.pop(key).stream.fail(error)
                self._generator.clear_queue()
                continue
            for result in results:
                self._route(result)
        # Closing: running answers end with what they have; nothing may wait in the queue.
        for key, request in list(self._active.items()):
            self._finish(key, FinishReason.CANCELLED, int(request.job.new_tokens))
        self._refuse_waiting(RuntimeError("the exllamav2 engine is closed"))

    def _fail_every_stream(self, error: EngineDied) -> None:
        for request in self._active.values():
            request.stream.fail(error)
        self._active.clear()
        self._refuse_waiting(error)

    def _refuse_waiting(self, error: Exception) -> None:
        with self._accepting_lock:
            self._accepting = False
        while True:
            try:
                self._incoming.get_nowait().stream.fail(error)
            except queue.Empty:
                break

    def _admit(self, keys: itertools.count[int]) -> None:
        while True:
            try:
                request = self._incoming.get_nowait()
            except queue.Empty:
                return
            key = next(keys)
            try:
                request.job = self._job_class(
                    input_ids=request.input_ids,
                    max_new_tokens=request.max_new_tokens,
                    gen_settings=self._settings_class(**sampler_settings(request.sampling)),
                    seed=request.sampling.seed,
                    stop_conditions=[*self._stop_ids, *(s for s in request.sampling.stop_strings if s)],
                    # Case-insensitive, across tokens, held back until resolved: the library's own rollback.
                    banned_strings=list(request.sampling.banned_phrases) or None,
                    identifier=key,
                )
                self._generator.enqueue(request.job)
            except Exception as error:  # e.g. the job cannot fit the cache: fail this request only
                request.stream.fail(error)
                continue
            self._active[key] = request

    def _enforce_limits(self) -> None:
        now = time.monotonic()
        for key, request in list(self._active.items()):
            if request.stream.cancelled:
                self._stop(key, FinishReason.CANCELLED)
            elif now >= request.stream.deadline_at:
                self._stop(key, FinishReason.DEADLINE)

    def _stop(self, key: int, reason: FinishReason) -> None:
        """Cancel a running or pending job; the stream ends with the text streamed so far."""
        request = self._active[key]
        self._generator.cancel(request.job)
        self._finish(key, reason, int(request.job.new_tokens))

    def _route(self, result: dict[str, Any]) -> None:
        key = result.get("identifier")
        if not isinstance(key, int) or key not in self._active:
            return  # a stopped job's late results are dropped
        request = self._active[key]
        if result.get("stage") == "started":  # the generator found room for it: its deadline starts now
            request.stream.admit()
        if result.get("stage") != "streaming":
            return  # "started" and "prefill" results carry no text
        if request.first_token_at is None:
            request.first_token_at = time.monotonic()
        text = str(result.get("text", ""))
        if not result.get("eos"):
            self._emit(request, text)
            return
        reason = result.get("eos_reason")  # stop_token, stop_string, max_new_tokens (or end_filter: unused)
        completion_tokens = int(result.get("new_tokens", request.job.new_tokens))
        request.prompt_tokens = int(result.get("prompt_tokens", request.prompt_tokens))
        if reason == "stop_token":
            # The generator holds back text that may begin a stop string or an incomplete character and
            # drops it on a stop token; show it (as the CPU engine does), minus the stop token's own text.
            held = str(result.get("held", {}).get("text", ""))
            text += held.removesuffix(str(result.get("eos_triggering_token_str", ""))).rstrip("\ufffd")
            completion_tokens -= 1  # the end-of-turn token is not part of the answer
        self._emit(request, text)
        self._finish(
            key, FinishReason.LENGTH if reason == "max_new_tokens" else FinishReason.STOP, completion_tokens
        )

    @staticmethod
    def _emit(request: _Request, text: str) -> None:
        if text:
            request.parts.append(text)
            request.stream.put_delta(text)

    def _finish(self, key: int, reason: FinishReason, completion_tokens: int) -> None:
        request = self._active.pop(key)
        started = request.stream.submitted_at
        first = request.first_token_at
        request.stream.finish(
            GenerationResult(
                finish_reason=reason,
                text="".join(request.parts),
                prompt_tokens=request.prompt_tokens,
                completion_tokens=max(completion_tokens, 0),
                time_to_first_token_ms=(first - started) * 1000 if first is not None else None,
                total_ms=(time.monotonic() - started) * 1000,
            )
        )
