"""GPU engine (ExLlamaV2's dynamic generator): EXL2-quantised or plain FP16 Hugging Face folders.

One engine thread is the only caller of `generator.iterate()`. `submit` (any thread) hands a request over a
queue; the engine thread turns it into an `ExLlamaV2DynamicJob`, routes each result to its stream by the
job's identifier, and enforces cancellation and the deadline itself (a Python timeout cannot interrupt CUDA).

exllamav2 is imported only inside the constructor: its wheel builds a CUDA extension at import time and
fails on a machine without CUDA, so importing this module must stay cheap and safe everywhere.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from brandbot.contract import FinishReason
from brandbot.errors import EngineLoadError
from brandbot.logs import get_logger
from worker.engines.base import SamplingSettings
from worker.engines.dynamic_jobs import DynamicJobEngine, QueuedRequest, import_gpu_library, import_torch

log = get_logger(__name__)

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


def _round_up(tokens: int) -> int:
    return -(-tokens // PAGE_TOKENS) * PAGE_TOKENS


class ExLlamaV2Engine(DynamicJobEngine):
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
        torch = import_torch("exllamav2")
        if not torch.cuda.is_available():
            raise EngineLoadError(NO_CUDA)
        exllamav2 = import_gpu_library("exllamav2", "attn", "generator")
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

        self._start_job_loop()
        log.info(
            "exllamav2 engine loaded",
            mode=self.mode,
            context_length=self.context_length,
            cache_tokens=total_tokens,
            cache_type=cache_type,
            lora=lora_dir is not None,
            stop_token_ids=self._stop_ids,
        )

    # -- DynamicJobEngine ----------------------------------------------------------------------------
    def _encode(self, text: str) -> Any:
        # Rendered prompts contain the template's special tokens, which must count as one token each.
        return self._tokenizer.encode(text, add_bos=False, encode_special_tokens=True)

    def _new_job(self, request: QueuedRequest, key: int) -> Any:
        return self._job_class(
            input_ids=request.input_ids,
            max_new_tokens=request.max_new_tokens,
            gen_settings=self._settings_class(**sampler_settings(request.sampling)),
            seed=request.sampling.seed,
            stop_conditions=[*self._stop_ids, *(s for s in request.sampling.stop_strings if s)],
            # Case-insensitive, across tokens, held back until resolved: the library's own rollback.
            banned_strings=list(request.sampling.banned_phrases) or None,
            identifier=key,
        )

    def _new_tokens(self, request: QueuedRequest) -> int:
        return int(request.job.new_tokens)

    def _release(self) -> None:
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

    # -- the generation thread ----------------------------------------------------------------------
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
