"""The RQ job function every request runs (`worker.job.generate_reply`), with JSON in and out."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from rq import get_current_job

from brandbot.errors import BadRequestPayload
from worker.service import ReplyService, RequeueRequested

current_service: ContextVar[ReplyService] = ContextVar("brandbot_reply_service")
"""Set by each job thread of `brandbot worker` to the process's one loaded model and its helpers."""


def generate_reply(request: dict[str, Any]) -> dict[str, Any]:
    """Answer one `GenerationRequest` (as JSON), streaming reply events to Redis; returns a usage summary."""
    job = get_current_job()
    max_attempts = int(job.meta.get("max_attempts", 1)) if job else 1
    attempt = max_attempts - (job.retries_left or 0) if job else 1
    try:
        return current_service.get().run(request, attempt=attempt, max_attempts=max_attempts)
    except BadRequestPayload:
        if job is not None:
            job.retries_left = 0  # a malformed payload will not get better on another worker
        raise
    except RequeueRequested as requeue:
        if job is not None and not requeue.started:
            job.retries_left = (job.retries_left or 0) + 1  # nothing was shown: not a new attempt
        raise
