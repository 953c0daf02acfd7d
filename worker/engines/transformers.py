"""CPU engine (transformers + torch): development, the offline demo and the test suite.

One generation thread is the only caller of the model. New requests are prefilled alone; then every
running sequence advances by one token per batched forward (continuous batching: sequences join and
leave between steps), so many conversations stream at once for little more than the cost of one.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brandbot.contract import FinishReason
from brandbot.errors import EngineDied, EngineLoadError
from worker.engines.banned import BannedPhraseGuard
from worker.engines.base import Engine, GenerationResult, GenerationStream, SamplingSettings, StopStringFilter

IDLE_WAIT_SECONDS = 0.05


@dataclass
class _Sequence:
    stream: GenerationStream
    sampling: SamplingSettings
    prompt_ids: list[int]
    stop_filter: StopStringFilter
    banned: BannedPhraseGuard
    generator: Any
    generated: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=lambda: [0])  # text length after each count of tokens
    text: str = ""  # everything decoded so far (more than shown while a banned phrase may be forming)
    layers: list[tuple[Any, Any]] | None = None  # this sequence's KV cache, one (keys, values) per layer
    cached: int = 0  # tokens in `layers`
    first_token_at: float | None = None

    @property
    def next_input(self) -> int:
        """The token the next decoding step feeds (the cache holds everything before it)."""
        return self.generated[-1] if self.generated else self.prompt_ids[-1]


def load_failure(model_dir: Path, error: Exception) -> str:
    """One line: the folder, and the first line the loader gave (with the error's type where that line
    alone says little, e.g. a KeyError's bare key)."""
    said = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if not isinstance(error, OSError | ValueError) or not said:
        said = f"{type(error).__name__}: {said}".removesuffix(": ")
    return f"cannot load the model in {model_dir}: {said}"


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, model_dir: Path, *, concurrency: int, lora_dir: Path | None = None) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
        except ImportError as error:
            raise EngineLoadError(
                f"the CPU engine needs torch and transformers ({error.name} is missing): pip install '.[cpu]'"
            ) from None
        self._torch = torch
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self._model = AutoModelForCausalLM.from_pretrained(
                model_dir, local_files_only=True, dtype=torch.float32
            ).eval()
        except Exception as error:
            # The folder is the admin's, not our code: whatever the loaders raise on a truncated or
            # mismatched file (safetensors, tokenizers and config errors share no base class) is one line.
            raise EngineLoadError(load_failure(model_dir, error)) from None
        if lora_dir is not None:
            from worker.tuning.adapters import apply_adapter

            # Merged into the weights once: the adapter costs nothing per token, and every answer of
            # this worker is the fine-tune's (personas choose it by their model queue).
            self._model = apply_adapter(self._model, lora_dir).eval()
        config = self._model.config
        self.context_length = int(getattr(config, "max_position_embeddings", 2048))
        self.max_concurrency = concurrency
        self.mode = f"continuous batching, up to {concurrency} sequences per step"
        self._cache_class = DynamicCache
        self._stop_ids = _eos_ids(config.eos_token_id, self._tokenizer.eos_token_id)
        self._incoming: collections.deque[_Sequence] = collections.deque()
        self._active: list[_Sequence] = []
        self._wake = threading.Event()
        self._closed = False
        self._submit_lock = threading.Lock()
        self._start_generation_thread(self._run)

    # -- Engine interface ------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def submit(self, prompt: str, sampling: SamplingSettings, *, deadline_seconds: float) -> GenerationStream:
        stream = GenerationStream(deadline_seconds)
        generator = self._torch.Generator()
        generator.manual_seed(sampling.seed if sampling.seed is not None else int(time.time_ns() % 2**31))
        sequence = _Sequence(
            stream=stream,
            sampling=sampling,
            prompt_ids=self._tokenizer.encode(prompt, add_special_tokens=False),
            stop_filter=StopStringFilter(sampling.stop_strings),
            banned=BannedPhraseGuard(sampling.banned_phrases),
            generator=generator,
        )
        with self._submit_lock:
            if self.failure is not None:
                stream.fail(EngineDied(self.failure))
                return stream
            self._incoming.append(sequence)
        self._wake.set()
        return stream

    def in_flight(self) -> int:
        return len(self._active) + len(self._incoming)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _fail_every_stream(self, error: EngineDied) -> None:
        with self._submit_lock:
            for seq in [*self._active, *self._incoming]:
                seq.stream.fail(error)
            self._active.clear()
            self._incoming.clear()

    # -- the generation thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed:
            while self._incoming and len(self._active) < self.max_concurrency:
                admitted = self._incoming.popleft()
                admitted.stream.admit()
                self._active.append(admitted)
            self._expire_waiting()
            if not self._active:
                self._wake.wait(IDLE_WAIT_SECONDS)
                self._wake.clear()
                continue
            self._active = [seq for seq in self._active if not self._ended_early(seq)]
            decoding = [seq for seq in self._active if seq.layers is not None]
            for seq in [seq for seq in self._active if seq.layers is None]:
                self._guarded([seq], lambda group: [self._prefill(group[0])])
            if decoding:
                self._guarded(decoding, self._decode)

    def _guarded(self, group: list[_Sequence], forward: Any) -> None:
        """Run one forward for `group`, then take each sequence's next token; failures end only `group`."""
        try:
            rows = forward(group)
            finished = [seq for seq, logits in zip(group, rows, strict=True) if self._accept(seq, logits)]
        except Exception as error:  # a bad sequence must not take the others down
            for seq in group:
                seq.stream.fail(error)
            finished = group
        for seq in finished:
            self._active.remove(seq)

    def _expire_waiting(self) -> None:
        """A request that found no place in the batch before its deadline ends, with nothing generated."""
        now = time.monotonic()
        with self._submit_lock:  # `submit` appends from other threads; iterating needs them to wait
            expired = [seq for seq in self._incoming if now >= seq.stream.deadline_at]
            for seq in expired:
                self._incoming.remove(seq)
        for seq in expired:
            self._finish(seq, FinishReason.DEADLINE)

    def _ended_early(self, seq: _Sequence) -> bool:
        if seq.stream.cancelled:
            return self._finish(seq, FinishReason.CANCELLED)
        if time.monotonic() >= seq.stream.deadline_at:
            return self._finish(seq, FinishReason.DEADLINE)
        return False

    def _prefill(self, seq: _Sequence) -> Any:
        """The whole prompt of a newly admitted sequence, alone (prompts differ in length)."""
        torch = self._torch
        with torch.inference_mode():
            output = self._model(input_ids=torch.tensor([seq.prompt_ids]), use_cache=True)
        seq.layers = [(layer.keys, layer.values) for layer in output.cache.layers]
        seq.cached = len(seq.prompt_ids)
        return output.logits[0, -1]

    def _decode(self, group: list[_Sequence]) -> list[Any]:
        """One token for every running sequence in a single batched forward.

        Each sequence keeps its own KV cache; for the step they are left-padded to a common length and
        masked, with each sequence's own positions, then split back. Copying costs O(batch × cache), which
        is cheap next to the forward at the sizes this CPU engine is for.
        """
        torch = self._torch
        longest = max(seq.cached for seq in group)
        pad = torch.nn.functional.pad
        layers = []
        for index in range(len(group[0].layers or ())):
            keys, values = [], []
            for seq in group:
                assert seq.layers is not None
                key, value = seq.layers[index]
                keys.append(pad(key, (0, 0, longest - seq.cached, 0)))
                values.append(pad(value, (0, 0, longest - seq.cached, 0)))
            layers.append((torch.cat(keys), torch.cat(values)))
        mask = torch.zeros(len(group), longest + 1, dtype=torch.long)
        for row, seq in enumerate(group):
            mask[row, longest - seq.cached :] = 1
        with torch.inference_mode():
            output = self._model(
                input_ids=torch.tensor([[seq.next_input] for seq in group]),
                attention_mask=mask,
                position_ids=torch.tensor([[seq.cached] for seq in group]),
                cache=self._cache_class(ddp_cache_data=layers),
                use_cache=True,
            )
        for row, seq in enumerate(group):
            start = longest - seq.cached
            seq.layers = [
                (layer.keys[row : row + 1, :, start:], layer.values[row : row + 1, :, start:])
                for layer in output.cache.layers
            ]
            seq.cached += 1
        return [output.logits[row, -1] for row in range(len(group))]

    def _accept(self, seq: _Sequence, logits: Any) -> bool:
        """Sample the sequence's next token and stream it; True when the sequence has finished."""
        forbidden = seq.banned.forbidden(len(seq.generated))
        with self._torch.inference_mode():
            token = _sample(
                self._torch, logits.float(), seq.sampling, seq.generated, seq.generator, forbidden
            )
        if seq.first_token_at is None:
            seq.first_token_at = time.monotonic()
        if token is None or token in self._stop_ids:  # None: every token was ruled out here
            return self._finish(seq, FinishReason.STOP)
        seq.generated.append(token)
        seq.text = str(self._tokenizer.decode(seq.generated, skip_special_tokens=True))
        seq.offsets.append(len(seq.text))
        shown = seq.text
        if seq.banned:
            answer = _before_stop(seq.text, seq.sampling.stop_strings)  # what follows a stop is never shown
            keep = seq.banned.roll_back_to(answer, seq.offsets, seq.generated)
            if keep is not None:
                self._roll_back(seq, keep)
                return False
            if len(answer) == len(seq.text):  # no stop string yet: hold back what may begin a phrase
                shown = seq.text[: seq.banned.shown_end(seq.text, seq.offsets)]
        seq.stream.put_delta(seq.stop_filter.feed(shown))
        if seq.stop_filter.stopped:
            return self._finish(seq, FinishReason.STOP)
        if len(seq.generated) >= seq.sampling.max_new_tokens:
            return self._finish(seq, FinishReason.LENGTH)
        if len(seq.prompt_ids) + len(seq.generated) >= self.context_length:
            return self._finish(seq, FinishReason.LENGTH)
        return False

    def _roll_back(self, seq: _Sequence, keep: int) -> None:
        """Forget every token from `keep` on (text, cache): the next step samples position `keep` again."""
        del seq.generated[keep:]
        del seq.offsets[keep + 1 :]
        seq.text = str(self._tokenizer.decode(seq.generated, skip_special_tokens=True))
        seq.cached = len(seq.prompt_ids) + keep - 1
        assert seq.layers is not None
        seq.layers = [(key[:, :, : seq.cached], value[:, :, : seq.cached]) for key, value in seq.layers]

    def _finish(self, seq: _Sequence, reason: FinishReason) -> bool:
        if reason is not FinishReason.STOP or not seq.stop_filter.stopped:
            if not seq.stop_filter.stopped:  # text held back in case it began a banned phrase: it did not
                seq.stream.put_delta(seq.stop_filter.feed(seq.text))
            seq.stream.put_delta(seq.stop_filter.flush())
        now = time.monotonic()
        started = seq.stream.submitted_at
        seq.stream.finish(
            GenerationResult(
                finish_reason=reason,
                text=seq.stop_filter.text[: seq.stop_filter.emitted],
                prompt_tokens=len(seq.prompt_ids),
                completion_tokens=len(seq.generated),
                time_to_first_token_ms=(seq.first_token_at - started) * 1000 if seq.first_token_at else None,
                total_ms=(now - started) * 1000,
            )
        )
        seq.layers = None
        return True


def _eos_ids(*candidates: int | list[int] | None) -> frozenset[int]:
    ids: set[int] = set()
    for candidate in candidates:
        if isinstance(candidate, int):
            ids.add(candidate)
        elif candidate:
            ids.update(candidate)
    return frozenset(ids)


def _before_stop(text: str, stop_strings: tuple[str, ...]) -> str:
    """The text an answer shows: up to its first stop string (what follows one is never shown)."""
    ends = [index for stop in stop_strings if stop and (index := text.find(stop)) != -1]
    return text[: min(ends)] if ends else text


def _sample(
    torch: Any,
    logits: Any,
    sampling: SamplingSettings,
    previous: list[int],
    generator: Any,
    forbidden: frozenset[int] = frozenset(),
) -> int | None:
    """The next token, or None when every token is forbidden."""
    if sampling.repetition_penalty != 1.0 and previous:
        seen = torch.tensor(sorted(set(previous)))
        values = logits[seen]
        logits[seen] = torch.where(
            values > 0, values / sampling.repetition_penalty, values * sampling.repetition_penalty
        )
    if forbidden:
        logits[torch.tensor(sorted(forbidden))] = float("-inf")
        if not bool(torch.isfinite(logits).any()):
            return None
    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.min_p > 0:
        probs = probs.masked_fill(probs < sampling.min_p * probs.max(), 0.0)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > sampling.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
