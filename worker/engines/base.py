"""The engine interface every backend implements, and the streaming plumbing they share.

An engine owns one model and one generation thread (the only caller of the model). `submit` hands it a
rendered prompt and returns a `GenerationStream`: text deltas as they are decoded, then a final
`GenerationResult`. A stream can be cancelled from any thread; the engine also enforces the deadline
itself, because a Python timeout cannot interrupt a CUDA call.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from brandbot.contract import FinishReason


@dataclass(frozen=True)
class SamplingSettings:
    """Explicit sampler settings: engines' own defaults are not neutral, so every field is always passed."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class GenerationResult:
    finish_reason: FinishReason
    text: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float | None
    total_ms: float


_END = object()


class GenerationStream:
    """Deltas of one generation, readable from a thread (`for delta in stream`) or a coroutine (`async for`).

    After iteration ends, `result` holds the final record.
    """

    def __init__(self, deadline_seconds: float) -> None:
        self.submitted_at = time.monotonic()
        self.deadline_at = self.submitted_at + deadline_seconds
        self.result: GenerationResult | None = None
        self.error: BaseException | None = None
        self._cancelled = threading.Event()
        self._items: queue.SimpleQueue[object] = queue.SimpleQueue()

    # -- consumer side --------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the engine to stop; it ends the stream with `FinishReason.CANCELLED` within one step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self._items.get()
            if item is _END:
                if self.error is not None:
                    raise self.error
                return
            assert isinstance(item, str)
            yield item

    def next_delta(self, timeout: float) -> str | None:
        """One delta, `""` if none arrived within `timeout`, or None at the end (lets callers poll flags)."""
        try:
            item = self._items.get(timeout=timeout)
        except queue.Empty:
            return ""
        if item is _END:
            if self.error is not None:
                raise self.error
            return None
        assert isinstance(item, str)
        return item

    async def __aiter__(self) -> AsyncIterator[str]:
        while (delta := await asyncio.to_thread(self.next_delta, 0.25)) is not None:
            if delta:
                yield delta

    # -- engine side -----------------------------------------------------------------------------------
    def put_delta(self, text: str) -> None:
        if text:
            self._items.put(text)

    def finish(self, result: GenerationResult) -> None:
        self.result = result
        self._items.put(_END)

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._items.put(_END)


@dataclass
class StopStringFilter:
    """Holds back text that may be the start of a stop string, so a stop string never reaches the user."""

    stop_strings: tuple[str, ...]
    text: str = ""
    emitted: int = 0
    stopped: bool = field(default=False, init=False)

    def feed(self, full_text: str) -> str:
        """Give the whole decoded text so far; get back the new text that is safe to show."""
        self.text = full_text
        for stop in self.stop_strings:
            index = full_text.find(stop)
            if index != -1:
                self.text = full_text[:index]
                self.stopped = True
        safe_end = len(self.text)
        if not self.stopped:
            # An incomplete UTF-8 sequence decodes to U+FFFD until its last byte arrives.
            while safe_end and self.text[safe_end - 1] == "\ufffd":
                safe_end -= 1
            for stop in self.stop_strings:
                for keep in range(min(len(stop) - 1, safe_end), 0, -1):
                    if self.text[safe_end - keep : safe_end] == stop[:keep]:
                        safe_end -= keep
                        break
        delta = self.text[self.emitted : max(safe_end, self.emitted)]
        self.emitted = max(safe_end, self.emitted)
        return delta

    def flush(self) -> str:
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta


class Engine(ABC):
    """One loaded model serving many generations at once."""

    name: str
    mode: str  # e.g. "paged, continuous batching" — logged at start and in the worker's heartbeat
    context_length: int
    max_concurrency: int

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for `text` (a rendered prompt includes its special tokens)."""

    @abstractmethod
    def submit(self, prompt: str, sampling: SamplingSettings, *, deadline_seconds: float) -> GenerationStream:
        """Queue a generation; text arrives on the returned stream."""

    @abstractmethod
    def close(self) -> None:
        """Stop the generation thread and free the model."""

    def in_flight(self) -> int:
        return 0
