"""CPU engine (transformers + torch): development, the offline demo and the test suite.

One generation thread steps every active sequence one token at a time, round-robin, each with its own
KV cache: many conversations progress together and all stream, while the model is only ever called from
that one thread.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brandbot.contract import FinishReason
from brandbot.errors import EngineLoadError
from worker.engines.base import Engine, GenerationResult, GenerationStream, SamplingSettings, StopStringFilter

IDLE_WAIT_SECONDS = 0.05


@dataclass
class _Sequence:
    stream: GenerationStream
    sampling: SamplingSettings
    prompt_ids: list[int]
    stop_filter: StopStringFilter
    generator: Any
    generated: list[int] = field(default_factory=list)
    cache: Any = None
    first_token_at: float | None = None


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, model_dir: Path, *, concurrency: int) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
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
        except (OSError, ValueError) as error:
            raise EngineLoadError(f"cannot load the model in {model_dir}: {error}".splitlines()[0]) from None
        config = self._model.config
        self.context_length = int(getattr(config, "max_position_embeddings", 2048))
        self.max_concurrency = concurrency
        self.mode = f"round-robin stepping, {concurrency} sequences at once"
        self._stop_ids = _eos_ids(config.eos_token_id, self._tokenizer.eos_token_id)
        self._incoming: collections.deque[_Sequence] = collections.deque()
        self._active: list[_Sequence] = []
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="engine-transformers", daemon=True)
        self._thread.start()

    # -- Engine interface ------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def submit(self, prompt: str, sampling: SamplingSettings, *, deadline_seconds: float) -> GenerationStream:
        stream = GenerationStream(deadline_seconds)
        generator = self._torch.Generator()
        generator.manual_seed(sampling.seed if sampling.seed is not None else int(time.time_ns() % 2**31))
        self._incoming.append(
            _Sequence(
                stream=stream,
                sampling=sampling,
                prompt_ids=self._tokenizer.encode(prompt, add_special_tokens=False),
                stop_filter=StopStringFilter(sampling.stop_strings),
                generator=generator,
            )
        )
        self._wake.set()
        return stream

    def in_flight(self) -> int:
        return len(self._active) + len(self._incoming)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)

    # -- the generation thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed:
            while self._incoming and len(self._active) < self.max_concurrency:
                self._active.append(self._incoming.popleft())
            if not self._active:
                self._wake.wait(IDLE_WAIT_SECONDS)
                self._wake.clear()
                continue
            for sequence in list(self._active):
                try:
                    done = self._step(sequence)
                except Exception as error:  # one bad sequence must not take the others down
                    sequence.stream.fail(error)
                    done = True
                if done:
                    self._active.remove(sequence)

    def _step(self, seq: _Sequence) -> bool:
        """Advance one sequence by one token; True when it has finished."""
        if seq.stream.cancelled:
            return self._finish(seq, FinishReason.CANCELLED)
        if time.monotonic() >= seq.stream.deadline_at:
            return self._finish(seq, FinishReason.DEADLINE)
        torch = self._torch
        with torch.inference_mode():
            if seq.cache is None:
                inputs = torch.tensor([seq.prompt_ids])
            else:
                inputs = torch.tensor([[seq.generated[-1]]])
            output = self._model(input_ids=inputs, cache=seq.cache, use_cache=True)
            seq.cache = output.cache
            token = _sample(torch, output.logits[0, -1].float(), seq.sampling, seq.generated, seq.generator)
        if seq.first_token_at is None:
            seq.first_token_at = time.monotonic()
        if token in self._stop_ids:
            return self._finish(seq, FinishReason.STOP)
        seq.generated.append(token)
        text = str(self._tokenizer.decode(seq.generated, skip_special_tokens=True))
        seq.stream.put_delta(seq.stop_filter.feed(text))
        if seq.stop_filter.stopped:
            return self._finish(seq, FinishReason.STOP)
        if len(seq.generated) >= seq.sampling.max_new_tokens:
            return self._finish(seq, FinishReason.LENGTH)
        if len(seq.prompt_ids) + len(seq.generated) >= self.context_length:
            return self._finish(seq, FinishReason.LENGTH)
        return False

    def _finish(self, seq: _Sequence, reason: FinishReason) -> bool:
        if reason is not FinishReason.STOP or not seq.stop_filter.stopped:
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
        seq.cache = None
        return True


def _eos_ids(*candidates: int | list[int] | None) -> frozenset[int]:
    ids: set[int] = set()
    for candidate in candidates:
        if isinstance(candidate, int):
            ids.add(candidate)
        elif candidate:
            ids.update(candidate)
    return frozenset(ids)


def _sample(torch: Any, logits: Any, sampling: SamplingSettings, previous: list[int], generator: Any) -> int:
    if sampling.repetition_penalty != 1.0 and previous:
        seen = torch.tensor(sorted(set(previous)))
        values = logits[seen]
        logits[seen] = torch.where(
            values > 0, values / sampling.repetition_penalty, values * sampling.repetition_penalty
        )
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
