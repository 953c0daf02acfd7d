"""What one job does: validate the request, render the prompt, generate, and stream the reply to Redis."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import ValidationError

from brandbot import messages
from brandbot.contract import (
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    ErrorKind,
    FinishReason,
    GenerationRequest,
    NoticeEvent,
    StartEvent,
    Usage,
)
from brandbot.errors import BadRequestPayload, EngineDied, RepliesUnpublishable, TemplateError
from brandbot.feedback import FeedbackRecorder
from brandbot.logs import get_logger
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.promptfiles.models import Persona
from brandbot.templating import ChatTemplate
from brandbot.usage import ENGINE, UsageGroup, UsageRecorder, generation_counts
from worker.adapter_match import AdapterMatcher
from worker.engines.base import Engine, GenerationStream, SamplingSettings
from worker.leak_guard import LeakGuard
from worker.metrics import WorkerMetrics
from worker.prompt_builder import build_prompt, prompt_variables, system_message
from worker.replies import ReplyPublisher, ReplyWriter

log = get_logger(__name__)

DELTA_BATCH_SECONDS = 0.05
"""Deltas arriving within this window go out as one stream entry (fewer Redis writes, same latency)."""

CANCEL_POLL_SECONDS = 0.25
"""How often a running job checks its cancel flag; a cancel takes effect within about this long."""

ENGINE_STOP_WAIT_SECONDS = 10.0
"""After a cancel, how long to wait for the engine to let the request go (it does within one step)."""


class RequeueRequested(Exception):
    """The worker is shutting down before this job finished; RQ retries it on another worker.

    `started` tells whether the user saw any of this attempt (then the retry is a new attempt).
    """

    def __init__(self, reason: str, *, started: bool) -> None:
        super().__init__(reason)
        self.started = started


@dataclass
class ReplyService:
    engine: Engine
    template: ChatTemplate
    prompts: LivePromptLibrary
    publisher: ReplyPublisher
    metrics: WorkerMetrics
    company: str
    deadline_seconds: float
    feedback: FeedbackRecorder | None = None
    adapters: AdapterMatcher = field(default_factory=lambda: AdapterMatcher(served=None))
    usage: UsageRecorder | None = None
    model_name: str = "default"
    _streams: dict[str, GenerationStream] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    draining: bool = False

    def start_draining(self) -> None:
        """Take no new requests (a job picked up from now on is requeued untouched)."""
        self.draining = True

    def abort_all(self) -> None:
        """Stop every running generation (end of the shutdown grace period); their jobs are requeued."""
        with self._lock:
            for stream in self._streams.values():
                stream.cancel()

    def run(self, payload: Any, *, attempt: int, max_attempts: int) -> dict[str, Any]:
        try:
            request = GenerationRequest.model_validate(payload)
        except ValidationError as error:
            request_id = payload.get("request_id") if isinstance(payload, dict) else None
            fields = sorted({".".join(map(str, e["loc"])) for e in error.errors()})
            if isinstance(request_id, str) and len(request_id) <= 64:
                self.publisher.publish(
                    request_id,
                    ErrorEvent(attempt=attempt, kind=ErrorKind.BAD_REQUEST, message=messages.BAD_REQUEST),
                )
            self.metrics.outcome("error", ErrorKind.BAD_REQUEST)
            raise BadRequestPayload(
                f"payload does not match the contract; bad fields: {', '.join(fields)}"
            ) from None
        if self.draining:
            raise RequeueRequested("worker is shutting down", started=False)
        if self.engine.failure is not None:  # this process is about to exit: another worker answers
            raise RequeueRequested(self.engine.failure, started=False)
        bound = log.bind(request_id=request.request_id, attempt=attempt, persona=request.persona)
        replies = self.publisher.writer(request.request_id)
        if replies.answered_before():
            bound.info("already answered by an earlier attempt, not answering again")
            return {"already_answered": True}
        replies.send_and_wait(StartEvent(attempt=attempt))
        library = self.prompts.current()  # one snapshot for the whole request, whatever reloads meanwhile
        persona = library.persona(request.persona)
        if persona is None:
            return self._fail(request, attempt, ErrorKind.PERSONA, messages.PERSONA_UNAVAILABLE, bound)
        mismatch = self.adapters.mismatch(persona, library)
        if mismatch is not None:  # never the base model's voice for a persona that asked for its fine-tune
            bound.error("persona's fine-tune not served by this worker", reason=mismatch)
            return self._fail(request, attempt, ErrorKind.PERSONA, messages.FINE_TUNE_UNAVAILABLE, bound)
        try:
            built = build_prompt(
                request,
                persona,
                template=self.template,
                count_tokens=self.engine.count_tokens,
                context_length=self.engine.context_length,
                company=self.company,
            )
        except TemplateError as error:
            # An exception, not its text: the text may quote the question; brandbot.logs shows its type.
            bound.error("prompt template failed", error=error)
            return self._fail(request, attempt, ErrorKind.PERSONA, messages.PERSONA_UNAVAILABLE, bound)
        for code, text in built.notices:
            replies.send(NoticeEvent(attempt=attempt, code=code, message=text))
        sampling = SamplingSettings(
            temperature=persona.sampling.temperature,
            top_p=persona.sampling.top_p,
            top_k=persona.sampling.top_k,
            min_p=persona.sampling.min_p,
            repetition_penalty=persona.sampling.repetition_penalty,
            max_new_tokens=built.max_new_tokens,
            stop_strings=tuple(persona.stop),
            banned_phrases=tuple(persona.banned_phrases),
            seed=request.seed,
        )
        deadline = request.limits.deadline_seconds or self.deadline_seconds
        stream = self.engine.submit(built.text, sampling, deadline_seconds=deadline)
        guard = LeakGuard(built.confidential_text) if built.confidential_text else None
        with self._lock:
            self._streams[request.request_id] = stream
        self.metrics.job_started()
        try:
            tail = self._relay(replies, attempt, stream, guard)
        except EngineDied as died:  # not this question's fault: another worker answers it
            raise RequeueRequested(str(died), started=True) from None
        except RepliesUnpublishable:
            self._stop_generation(stream)  # nobody can see it: free the engine's place for others
            bound.warning("redis unavailable too long, generation stopped")
            self.metrics.outcome("error", "unpublishable")
            raise
        except Exception as error:
            self._stop_generation(stream)
            bound.error("generation failed", error_type=type(error).__name__)
            self.metrics.outcome("error", ErrorKind.ENGINE)
            return self._fail(request, attempt, ErrorKind.ENGINE, messages.GENERATION_FAILED, bound)
        finally:
            with self._lock:
                self._streams.pop(request.request_id, None)
            self.metrics.job_ended()
        result = stream.result if guard is None or stream.result is None else guard.screened(stream.result)
        assert result is not None
        shutdown_cut = result.finish_reason is FinishReason.CANCELLED and self.draining
        if shutdown_cut and attempt < max_attempts and not self._cancel_requested(request.request_id):
            raise RequeueRequested("worker shut down mid-generation", started=True)
        usage = Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            time_to_first_token_ms=result.time_to_first_token_ms,
            total_ms=result.total_ms,
        )
        # Stored before `done` goes out, so a rating given the moment the answer shows finds it.
        self._record_for_feedback(request, persona, result.text, bound)
        done = DoneEvent(attempt=attempt, text=result.text, finish_reason=result.finish_reason, usage=usage)
        if result.finish_reason is FinishReason.LENGTH:
            tail.append(NoticeEvent(attempt=attempt, code="length", message=messages.CUT_BY_LENGTH))
        replies.send_and_wait(*tail, done)
        self.metrics.finished(result)
        self._record_usage(request, usage, bound)
        bound.info(
            "reply done",
            finish_reason=result.finish_reason.value,
            prompt_tokens=result.prompt_tokens,
            tokens=result.completion_tokens,
            ttft_ms=round(result.time_to_first_token_ms or 0),
            ms=round(result.total_ms),
        )
        return {"finish_reason": result.finish_reason.value, "completion_tokens": result.completion_tokens}

    def _record_for_feedback(
        self, request: GenerationRequest, persona: Persona, answer: str, bound: Any
    ) -> None:
        """Keep the answer (for the retention period) so a 👍/👎 can be attached and exported later.

        Only when the front-end asked for it: a copy of a conversation nobody can rate is kept for nothing.
        """
        if self.feedback is None or not request.keep_for_rating:
            return
        try:
            self.feedback.record_answer(
                request.request_id,
                persona=persona.name,
                system_prompt=system_message(
                    persona, prompt_variables(request, persona, company=self.company)
                ),
                turns=[{"role": turn.role.value, "content": turn.content} for turn in request.turns],
                answer=answer,
                platform=request.target.platform.value,
            )
        except redis.RedisError as error:
            bound.warning("answer not kept for feedback", error_type=type(error).__name__)

    def _record_usage(self, request: GenerationRequest, usage: Usage, bound: Any) -> None:
        """Count this generation's tokens and time for `brandbot usage` (after the answer went out)."""
        if self.usage is None:
            return
        group = UsageGroup(
            platform=request.target.platform.value,
            channel=request.target.channel_id,
            persona=request.persona,
            model=self.model_name,
        )
        try:
            self.usage.record(ENGINE, group, generation_counts(usage))
        except redis.RedisError as error:
            bound.warning("usage not counted", error_type=type(error).__name__)

    def _relay(
        self, replies: ReplyWriter, attempt: int, stream: GenerationStream, guard: LeakGuard | None = None
    ) -> list[DeltaEvent | NoticeEvent]:
        """Publish deltas as they come (batched a little); return the last batch, to go out with `done`.

        A confidential persona's `guard` holds back what may quote its instructions and stops a quote.
        While Redis is unavailable, generation goes on and deltas are kept (`ReplyWriter`), until the
        outage outlasts what a reply may wait.
        """
        pending: list[str] = []
        next_flush = time.monotonic() + DELTA_BATCH_SECONDS
        next_cancel_check = time.monotonic() + CANCEL_POLL_SECONDS
        while True:
            delta = stream.next_delta(timeout=DELTA_BATCH_SECONDS)
            now = time.monotonic()
            if delta and guard is not None:
                delta = guard.feed(delta)
                if guard.leaked:
                    stream.cancel()
            if delta:
                pending.append(delta)
            if delta is None:
                pending.append(guard.finish() if guard is not None else "")
                text = "".join(pending)
                return [DeltaEvent(attempt=attempt, text=text)] if text else []
            if pending and now >= next_flush:
                replies.send(DeltaEvent(attempt=attempt, text="".join(pending)))
                pending.clear()
                next_flush = now + DELTA_BATCH_SECONDS
            if now >= next_cancel_check:
                next_cancel_check = now + CANCEL_POLL_SECONDS
                if self._cancel_requested(replies.request_id):
                    stream.cancel()

    def _stop_generation(self, stream: GenerationStream) -> None:
        """Cancel and wait (bounded) until the engine has let the request go."""
        stream.cancel()
        give_up_at = time.monotonic() + ENGINE_STOP_WAIT_SECONDS
        try:
            while stream.next_delta(timeout=0.1) is not None and time.monotonic() < give_up_at:
                pass
        except Exception:
            return  # the stream ended in an error: the engine has let it go all the same

    def _cancel_requested(self, request_id: str) -> bool:
        try:
            return self.publisher.cancel_requested(request_id)
        except redis.RedisError:  # unknown while Redis is away; checked again on the next poll
            return False

    def _fail(
        self, request: GenerationRequest, attempt: int, kind: ErrorKind, text: str, bound: Any
    ) -> dict[str, Any]:
        self.publisher.writer(request.request_id).send_and_wait(
            ErrorEvent(attempt=attempt, kind=kind, message=text)
        )
        bound.warning("reply failed", kind=kind.value)
        return {"error": kind.value}
