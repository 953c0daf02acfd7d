"""GPU engine (ExLlamaV3's generator): EXL3-quantised or plain FP16 Hugging Face folders, batched.

Written against exllamav3 1.6.5 (generator/generator.py, generator/job.py, cache/, model/, tokenizer/).
Its generator is always paged (its own Triton paged-attention kernels, flash-attn optional), so requests
are batched continuously up to the worker's slots (at most 256 jobs per batch), and identical prompt
prefixes share cache pages (prefix caching is built into its page table: always on).

One engine thread is the only caller of `generator.iterate()`. `submit` (any thread) hands a request over a
queue; the engine thread turns it into a `Job`, routes each result dict to its stream by the job's
identifier, and enforces cancellation and the deadline itself (a Python timeout cannot interrupt CUDA).

exllamav3 is imported only inside the constructor: it builds its CUDA extension at import time and fails on
a machine without CUDA, so importing this module must stay cheap and safe everywhere. Everything above the
engine class is pure and tested on CPU.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from brandbot.contract import FinishReason
from brandbot.errors import EngineLoadError
from brandbot.logs import get_logger
from worker.engines.base import SamplingSettings
from worker.engines.dynamic_jobs import DynamicJobEngine, QueuedRequest, import_gpu_library, import_torch
from worker.engines.exllamav2 import END_OF_TURN_TOKENS, model_eos_ids

log = get_logger(__name__)

PAGE_TOKENS = 256  # exllamav3's PAGE_SIZE (constants.py): cache sizes are multiples of it
MAX_CHUNK_TOKENS = 2048  # prompt tokens ingested per forward pass (the generator's max_chunk_size default)
MAX_BATCH = 256  # jobs one exllamav3 batch holds
DEFAULT_CACHE_CAP_TOKENS = 65_536  # a default cache stops here; further jobs wait in the generator
NO_CUDA = (
    "BRANDBOT_ENGINE=exllamav3 needs a CUDA GPU (Ampere or newer); use BRANDBOT_ENGINE=transformers on CPU"
)
CACHE_BITS: dict[str, int | None] = {"fp16": None, "q8": 8, "q6": 6, "q4": 4}
"""BRANDBOT_CACHE_TYPE → bits per key and value element of exllamav3's `CacheLayer_quant` (None: fp16)."""

FINISH_REASONS = {
    "stop_token": FinishReason.STOP,  # end of turn / EOS
    "stop_string": FinishReason.STOP,
    "end_filter": FinishReason.STOP,  # no filters are set; listed so every documented reason maps
    "loop_detected": FinishReason.STOP,
    "max_new_tokens": FinishReason.LENGTH,  # also where the generator capped it to the cache's room
}


def cache_layer_options(cache_type: str) -> dict[str, int]:
    """Keyword arguments for exllamav3's `Cache` beyond the layer class: k/v bits of a quantized cache."""
    if cache_type not in CACHE_BITS:
        raise EngineLoadError(f"unknown cache type {cache_type!r}: use one of {', '.join(CACHE_BITS)}")
    bits = CACHE_BITS[cache_type]
    return {} if bits is None else {"k_bits": bits, "v_bits": bits}


def cache_tokens_for(context_length: int, concurrency: int, requested: int | None) -> int:
    """Total cache length, shared by every job: always room for one full-length sequence, page-aligned.

    A job reserves pages for its prompt, its answer and one token more (job.py, `prepare_for_queue`), so a
    full-length sequence takes `context_length + 1` tokens of pages.
    """
    one_sequence = _round_up(context_length + 1)
    if requested is None:
        requested = min(one_sequence * concurrency, DEFAULT_CACHE_CAP_TOKENS)
    return max(one_sequence, _round_up(requested))


def sampler_options(sampling: SamplingSettings) -> dict[str, Any]:
    """Every `ComboSampler` argument that changes sampling, set explicitly.

    exllamav3's `DefaultSampler` (min_p 0.08, temperature 0.8) is not neutral, so the persona's values are
    always passed and every other step is switched off by value. Temperature 0 means greedy (argmax), as in
    the CPU engine; top_k 0, top_p 1, min_p 0, penalties 1/0 and adaptive_target 1 are no-ops there.
    """
    return {
        "rep_p": sampling.repetition_penalty,
        "freq_p": 0.0,
        "pres_p": 0.0,
        "rep_sustain_range": int(10e7),  # the whole context, as Hugging Face's repetition penalty does
        "rep_decay_range": 0,
        "dry_multiplier": 0.0,
        "temperature": max(sampling.temperature, 0.0),
        "min_p": sampling.min_p,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "temp_last": False,  # temperature before truncation, the usual order
        "adaptive_target": 1.0,
        "logit_bias": None,
    }


def finish_reason(result: dict[str, Any]) -> FinishReason:
    """The finish reason of an `iterate()` result with `eos` set (its `eos_reason`).

    A reason this version does not document still ends the answer normally (STOP) rather than the engine.
    """
    return FINISH_REASONS.get(str(result.get("eos_reason")), FinishReason.STOP)


def final_text(result: dict[str, Any]) -> str:
    """The text of a final (`eos`) result that belongs to the answer.

    On a stop token the generator drops the text it was still holding back (the start of a possible stop
    string, an incomplete character) into `held`; it is part of the answer (as in the CPU engine), minus
    the stop token's own text. On a stop string, `text` already ends before it.
    """
    text = str(result.get("text", ""))
    if result.get("eos_reason") == "stop_token":
        held = str((result.get("held") or {}).get("text", ""))
        text += held.removesuffix(str(result.get("eos_triggering_token_str", ""))).rstrip("\ufffd")
    return text


def completion_tokens(result: dict[str, Any], fallback: int) -> int:
    """Answer tokens of a final result: the end-of-turn token that ended it is not part of the answer."""
    tokens = int(result.get("new_tokens", fallback))
    return max(tokens - 1 if result.get("eos_reason") == "stop_token" else tokens, 0)


def batching_mode(batch: int) -> str:
    if batch <= 1:
        return "paged, one request at a time (BRANDBOT_WORKER_CONCURRENCY=1)"
    return f"paged, continuous batching up to {batch}"


def _round_up(tokens: int) -> int:
    return -(-tokens // PAGE_TOKENS) * PAGE_TOKENS


class ExLlamaV3Engine(DynamicJobEngine):
    name = "exllamav3"

    def __init__(
        self,
        model_dir: Path,
        *,
        concurrency: int,
        cache_type: str = "fp16",
        cache_tokens: int | None = None,
        gpu_split: list[float] | None = None,
        max_seq_len: int | None = None,
    ) -> None:
        if not model_dir.is_dir():
            raise EngineLoadError(f"{model_dir} does not exist: check BRANDBOT_MODEL_DIR")
        layer_options = cache_layer_options(cache_type)
        torch = import_torch("exllamav3")
        if not torch.cuda.is_available():
            raise EngineLoadError(NO_CUDA)
        exllamav3 = import_gpu_library("exllamav3", "generator.sampler")
        sampler_module = exllamav3.generator.sampler
        self._torch = torch
        self._job_class = exllamav3.Job
        self._sampler_class = sampler_module.ComboSampler

        self._tokenizer_lock = threading.Lock()
        try:
            config = exllamav3.Config.from_directory(str(model_dir))
            self._tokenizer = exllamav3.Tokenizer.from_config(config)
        except (AssertionError, ValueError, KeyError, TypeError, OSError) as error:
            raise EngineLoadError(f"cannot read the model in {model_dir}: {error}".splitlines()[0]) from None
        context_length = int(config.max_position_embeddings)
        if max_seq_len is not None:
            if max_seq_len > context_length:
                raise EngineLoadError(
                    f"max_seq_len {max_seq_len} exceeds this model's {context_length}: lower it"
                )
            context_length = max_seq_len
        batch = max(1, min(concurrency, MAX_BATCH))
        total_tokens = cache_tokens_for(context_length, batch, cache_tokens)
        self.context_length = context_length
        self._model: Any = None
        try:
            self._model = exllamav3.Model.from_config(config)
            # The cache must exist before loading: the loader allocates its tensors beside each layer.
            cache = exllamav3.Cache(
                self._model,
                max_num_tokens=total_tokens,
                max_batch_size=batch,  # recurrent-state slots: a hybrid model batches no more than this
                layer_type=exllamav3.CacheLayer_quant if layer_options else exllamav3.CacheLayer_fp16,
                **layer_options,
            )
            self._model.load(
                use_per_device=gpu_split,
                max_chunk_size=MAX_CHUNK_TOKENS,
                max_batch_size=batch,
                progressbar=False,
            )
            self._generator: Any = exllamav3.Generator(
                model=self._model,
                cache=cache,
                tokenizer=self._tokenizer,
                max_batch_size=batch,
                max_chunk_size=MAX_CHUNK_TOKENS,
            )
            batch = min(batch, int(self._generator.max_batch_size))  # the generator may lower it
        except Exception as error:
            if self._model is not None:
                self._model.unload()
            message = self._load_failure(error, model_dir, total_tokens, cache_type)
            if message is None:
                raise
            raise EngineLoadError(message) from None
        self.max_concurrency = batch
        self.mode = batching_mode(batch)
        self._stop_ids = self._end_token_ids(model_dir, config)

        self._start_job_loop()
        log.info(
            "exllamav3 engine loaded",
            mode=self.mode,
            context_length=self.context_length,
            cache_tokens=total_tokens,
            cache_type=cache_type,
            prefix_cache=True,
            stop_token_ids=self._stop_ids,
        )

    # -- DynamicJobEngine ----------------------------------------------------------------------------
    def _encode(self, text: str) -> Any:
        # Rendered prompts contain the template's special tokens, which must count as one token each. User
        # text inside them cannot become special tokens: the prompt builder neutralises it before rendering.
        # exllamav3's Tokenizer switches its backend's special-token mode per call (encode_part_base), so
        # the worker's slot threads take turns; add_bos=False: the chat template renders BOS itself.
        with self._tokenizer_lock:
            return self._tokenizer.encode(text, add_bos=False, encode_special_tokens=True)

    def _new_job(self, request: QueuedRequest, key: int) -> Any:
        sampling = request.sampling
        return self._job_class(
            input_ids=request.input_ids,
            max_new_tokens=request.max_new_tokens,
            sampler=self._sampler_class(**sampler_options(sampling)),
            seed=sampling.seed,
            stop_conditions=[*self._stop_ids, *(s for s in sampling.stop_strings if s)],
            banned_strings=[p for p in sampling.banned_phrases if p] or None,
            decode_special_tokens=False,
            identifier=key,
        )

    def _new_tokens(self, request: QueuedRequest) -> int:
        job = request.job
        return int(getattr(job, "rq_new_tokens", 0)) + max(int(getattr(job, "new_tokens", 0)), 0)

    def _release(self) -> None:
        self._generator.close()  # its thread pool and pinned buffers; the model stays until unload
        self._model.unload()
        self._generator = None
        self._torch.cuda.empty_cache()

    # -- loading helpers -------------------------------------------------------------------------------
    def _end_token_ids(self, model_dir: Path, config: Any) -> list[int]:
        """Stop tokens are not automatic in the generator: EOS ids plus the template's end-of-turn token."""
        ids = model_eos_ids(model_dir) | {int(i) for i in getattr(config, "eos_token_id_list", []) or []}
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
        if isinstance(error, self._torch.cuda.OutOfMemoryError) or "out of memory" in text.lower():
            return (
                f"the model and a {total_tokens}-token {cache_type} cache do not fit in GPU memory: lower"
                " BRANDBOT_CACHE_TOKENS, use BRANDBOT_CACHE_TYPE q8/q4, or a smaller quantisation"
            )
        if isinstance(error, AssertionError | ValueError | KeyError | OSError | NotImplementedError):
            return f"cannot load the model in {model_dir}: {text}".splitlines()[0]
        return None

    # -- the generation thread ----------------------------------------------------------------------
    def _route(self, result: dict[str, Any]) -> None:
        # An "error" result (a job the generator reaped) carries the job but no identifier.
        key = result.get("identifier", getattr(result.get("job"), "identifier", None))
        if not isinstance(key, int) or key not in self._active:
            return  # a stopped job's late results are dropped
        request = self._active[key]
        stage = result.get("stage")
        if stage == "error":  # this job failed; the generator carries on with the others
            self._active.pop(key)
            error = result.get("error")
            request.stream.fail(error if isinstance(error, BaseException) else RuntimeError("job failed"))
            return
        if stage == "started" and request.stream.admitted_at is None:  # its deadline starts now
            request.stream.admit()
        if stage != "streaming":
            return  # "started" and "prefill" results carry no text
        if request.first_token_at is None:
            request.first_token_at = time.monotonic()
        if not result.get("eos"):
            self._emit(request, str(result.get("text", "")))
            return
        request.prompt_tokens = int(result.get("prompt_tokens", request.prompt_tokens))
        self._emit(request, final_text(result))
        self._finish(key, finish_reason(result), completion_tokens(result, self._new_tokens(request)))
