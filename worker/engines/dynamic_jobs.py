"""What the ExLlama engines share: one thread drives the library's dynamic generator (jobs in, `iterate()`,
results routed to each request's stream), with cancel, deadline, close and a dying thread handled once.

An engine subclass loads its model and generator, then calls `_start_job_loop()`; it supplies how text is
tokenized (`_encode`), how a job is made (`_new_job`), how many tokens a job has made (`_new_tokens`), how
one result is read (`_route`) and what `close` frees (`_release`).
"""

from __future__ import annotations

import importlib
import itertools
import queue
import threading
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

from brandbot.contract import FinishReason
from brandbot.errors import EngineDied, EngineLoadError
from brandbot.logs import get_logger
from worker.engines.base import Engine, GenerationResult, GenerationStream, SamplingSettings

log = get_logger(__name__)

IDLE_WAIT_SECONDS = 0.05
"""With nothing to generate, how long the thread waits for a new request before looking again."""

CLOSE_WAIT_SECONDS = 30.0
"""How long `close` waits for the generation thread to stop."""


def import_torch(library: str) -> Any:
    try:
        import torch
    except ImportError:
        raise EngineLoadError(f"the GPU engine needs torch and {library}: pip install '.[gpu]'") from None
    return torch


def import_gpu_library(library: str, *submodules: str) -> Any:
    """Import `library` (which builds or loads its CUDA extension now) or say in one line what to do."""
    try:
        module = importlib.import_module(library)
        for submodule in submodules:
            importlib.import_module(f"{library}.{submodule}")
    except ImportError as error:
        if (error.name or "").split(".")[0] == library:
            raise EngineLoadError(
                f"{library} is not installed: pip install '.[gpu]' (or use BRANDBOT_ENGINE=transformers)"
            ) from None
        raise EngineLoadError(f"{library} cannot be imported ({error}): pip install '.[gpu]'") from None
    except Exception as error:
        first_line = f"{type(error).__name__}: {error}".splitlines()[0]
        raise EngineLoadError(
            f"{library}'s CUDA extension failed to build or load ({first_line}):"
            " check that the CUDA toolkit matches torch's CUDA version"
        ) from None
    return module


@dataclass
class QueuedRequest:
    stream: GenerationStream
    sampling: SamplingSettings
    input_ids: Any  # torch.LongTensor of shape (1, prompt_tokens), on the CPU as the job requires
    prompt_tokens: int
    max_new_tokens: int
    job: Any = None
    parts: list[str] = field(default_factory=list)
    first_token_at: float | None = None


class DynamicJobEngine(Engine):
    """An engine whose library runs many jobs at once in a generator stepped by one thread."""

    _generator: Any

    def _start_job_loop(self) -> None:
        self._incoming: queue.SimpleQueue[QueuedRequest] = queue.SimpleQueue()
        self._active: dict[int, QueuedRequest] = {}
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._closed = False
        self._accepting = True
        self._accepting_lock = threading.Lock()
        self._start_generation_thread(self._run)

    # -- what each library does its own way ----------------------------------------------------------
    @abstractmethod
    def _encode(self, text: str) -> Any:
        """Token ids of `text` as a (1, n) tensor; special tokens count as one (the template renders BOS)."""

    @abstractmethod
    def _new_job(self, request: QueuedRequest, key: int) -> Any:
        """The library's job for `request`, identified by `key` in its results."""

    @abstractmethod
    def _new_tokens(self, request: QueuedRequest) -> int:
        """Tokens the request's job has generated so far."""

    @abstractmethod
    def _route(self, result: dict[str, Any]) -> None:
        """Apply one result of `iterate()` to its request (`_emit` text, `_finish` at the end)."""

    @abstractmethod
    def _release(self) -> None:
        """Free the generator and the model (the generation thread has stopped)."""

    # -- Engine interface ----------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return int(self._encode(text).shape[-1])

    def submit(self, prompt: str, sampling: SamplingSettings, *, deadline_seconds: float) -> GenerationStream:
        stream = GenerationStream(deadline_seconds)
        input_ids = self._encode(prompt)
        prompt_tokens = int(input_ids.shape[-1])
        room = self.context_length - prompt_tokens
        if prompt_tokens == 0 or room < 1:
            stream.fail(ValueError(f"prompt of {prompt_tokens} tokens does not fit {self.context_length}"))
            return stream
        # The generators cap an answer to the cache's room, not to the model's context window.
        max_new = max(1, min(sampling.max_new_tokens, room))
        with self._accepting_lock:  # once the engine thread has stopped, nothing may wait in the queue
            if self.failure is not None:
                stream.fail(EngineDied(self.failure))
                return stream
            if not self._accepting:
                stream.fail(self._closed_error())
                return stream
            self._incoming.put(QueuedRequest(stream, sampling, input_ids, prompt_tokens, max_new))
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
        self._thread.join(timeout=CLOSE_WAIT_SECONDS)
        if self._thread.is_alive():  # stuck in a CUDA call: freeing the model under it would crash
            log.warning("engine thread did not stop; model left loaded", engine=self.name)
            return
        self._release()

    def _closed_error(self) -> RuntimeError:
        return RuntimeError(f"the {self.name} engine is closed")

    # -- the generation thread -----------------------------------------------------------------------
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
        for key in list(self._active):
            self._finish(key, FinishReason.CANCELLED, self._new_tokens(self._active[key]))
        self._refuse_waiting(self._closed_error())

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
                request.job = self._new_job(request, key)
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
        self._finish(key, reason, self._new_tokens(request))

    @staticmethod
    def _emit(request: QueuedRequest, text: str) -> None:
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
