"""The engine interface every backend implements, and the streaming plumbing they share.

An engine owns one model and one generation thread (the only caller of the model). `submit` hands it a
rendered prompt and returns a `GenerationStream`: text deltas as they are decoded, then a final
`GenerationResult`. A stream can be cancelled from any thread; the engine also enforces the deadline
itself, because a Python timeout cannot interrupt a CUDA call. A request's deadline runs from the moment
the engine admits it into its batch, not from `submit`: time spent waiting for a place is not generation.

If the generation thread dies, every stream in the engine fails with `EngineDied` (none waits forever),
later submissions fail at once, and `failure` says why, so the worker can exit for a restart.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from brandbot.contract import FinishReason
from brandbot.errors import EngineDied
from brandbot.logs import get_logger

log = get_logger(__name__)


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
    banned_phrases: tuple[str, ...] = ()
    """Never generated (case-insensitive, across token boundaries): enforced while decoding, not after."""
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


def _nothing() -> None:
    pass


class GenerationStream:
    """Deltas of one generation, readable from a thread (`for delta in stream`) or a coroutine (`async for`).

    After iteration ends, `result` holds the final record.
    """

    def __init__(self, deadline_seconds: float) -> None:
        self.submitted_at = time.monotonic()
        self.admitted_at: float | None = None
        self.deadline_seconds = deadline_seconds
        # Until admitted, the same allowance bounds the wait for a place in the batch.
        self.deadline_at = self.submitted_at + deadline_seconds
        self.result: GenerationResult | None = None
        self.error: BaseException | None = None
        self._cancelled = threading.Event()
        self._items: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.on_progress: Callable[[], None] = _nothing
        """Called from the generation thread at each delta and at the end (the stall watchdog's clock)."""

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
    def admit(self) -> None:
        """The engine starts generating this request now: its deadline starts now."""
        self.admitted_at = time.monotonic()
        self.deadline_at = self.admitted_at + self.deadline_seconds

    def put_delta(self, text: str) -> None:
        self.on_progress()
        if text:
            self._items.put(text)

    def finish(self, result: GenerationResult) -> None:
        self.on_progress()
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
    """Requests really generated at once (the batch); more wait inside the engine. The worker runs no more
    job slots than this, so a request it cannot start waits in the queue for another worker instead."""

    _failure: str | None = None
    _thread: threading.Thread | None = None

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

    @property
    def failure(self) -> str | None:
        """Why this engine can generate nothing more (its generation thread died), or None."""
        return self._failure

    def declare_stalled(self, reason: str) -> None:
        """From outside the generation thread: it is stuck, so this engine generates nothing more; every
        stream ends with `EngineDied` (their questions are retried elsewhere) and `failure` says why."""
        if self._failure is None:
            self._failure = reason
            self._fail_every_stream(EngineDied(reason))

    @property
    def generation_thread(self) -> threading.Thread | None:
        return self._thread

    # -- for engines: the generation thread's life --------------------------------------------------
    def _start_generation_thread(self, loop: Callable[[], None]) -> None:
        """Run `loop` (which returns once the engine closes) in the one thread that calls the model."""
        self._thread = threading.Thread(
            target=self._run_generation_thread, args=(loop,), name=f"engine-{self.name}", daemon=True
        )
        self._thread.start()

    def _run_generation_thread(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException as error:  # whatever ended the thread, no stream may wait for it forever
            frame = traceback.extract_tb(error.__traceback__)[-1]
            self._failure = f"the {self.name} engine's generation thread died ({type(error).__name__})"
            # Where it died, not the error's text: that may quote the prompt.
            log.critical(
                "engine generation thread died",
                error_type=type(error).__name__,
                where=f"{frame.filename}:{frame.lineno} in {frame.name}",
            )
            self._fail_every_stream(EngineDied(self._failure))

    @abstractmethod
    def _fail_every_stream(self, error: EngineDied) -> None:
        """End every stream generating or waiting in the engine with `error`, and refuse new ones.

        Called once, from the dying generation thread; `submit` must not queue a stream after it (check
        `failure` under the same lock this method holds).
        """
