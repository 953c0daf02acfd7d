"""Which RQ jobs a worker runs: `worker.job.generate_reply` with one JSON request, and nothing else.

Anything that can write to Redis can put a job hash on a model queue, and RQ turns names read from that
hash into code: the function (`Job.func`), success/failure/stopped callbacks, and webhooks (outbound
HTTP); dependencies are honoured only at enqueue time, so a hash pushed by hand runs regardless.
`AdmittedJob` (the worker's RQ `job_class`) reads the raw hash before RQ parses any of it. A job that
names anything else, or that RQ could not parse, is restored as an empty shell carrying its `refusal`;
`fail_refused` records it as failed without importing, unpickling or calling anything. Its hooks
resolve to nothing on every RQ path, registry cleanup of abandoned jobs included.

The payload's match with the contract is checked by the job itself, first thing (`ReplyService.run`),
so that the person who asked is told their request was malformed.

Checked against rq 3.0 (pinned `rq>=3.0,<3.1`): a new RQ version may add fields that name code.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Mapping
from typing import Any

from rq.job import Job, JobStatus
from rq.queue import Queue

from brandbot.logs import get_logger
from brandbot.queue import JOB_FUNCTION

log = get_logger(__name__)

REFUSED_JOB_TTL_SECONDS = 3600
"""How long a refused job's (emptied) record stays in the failed registry for an operator to see."""

HOOK_FIELDS = (
    "success_callback_name",
    "failure_callback_name",
    "stopped_callback_name",
    "webhooks",
    "dependency_id",
    "dependency_ids",
)
"""Job hash fields that make RQ import a function, send an HTTP request, or wait on another job."""


def refusal(raw: Mapping[str, bytes]) -> str | None:
    """Why the job hash `raw` (field names decoded, values raw) must not run; None when it may.

    The reason names fields, never their values (they may hold anything, users' text included).
    """
    for field in HOOK_FIELDS:
        if raw.get(field, b"") not in (b"", b"[]"):
            return f"the job names a hook ({field})"
    data = raw.get("data", b"")
    with contextlib.suppress(zlib.error):  # RQ reads uncompressed data too
        data = zlib.decompress(data)
    try:
        call = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        return "the job's data is not JSON"
    if not (isinstance(call, list) and len(call) == 4):
        return "the job's data is not a function call"
    function, instance, args, kwargs = call
    if function != JOB_FUNCTION or instance is not None:
        return "the job names another function"
    if not (isinstance(args, list) and len(args) == 1 and isinstance(args[0], dict) and kwargs == {}):
        return "the job's arguments are not one request"
    return None


class AdmittedJob(Job):
    """An RQ job that can only ever be the reply job; see the module docstring."""

    refusal: str | None = None

    def restore(self, raw_data: Any) -> None:
        raw = {_text(name): value for name, value in raw_data.items()}
        self.refusal = refusal(raw)
        if self.refusal is None:
            try:
                super().restore(raw_data)
                return
            except Exception:  # any field RQ cannot parse (a forged status, date or number)
                self.refusal = "the job record is unreadable"
        # The shell keeps only a status, so registry cleanup can still retire it.
        status = _text(raw.get("status", b""))
        known = status in {member.value for member in JobStatus}
        super().restore({b"data": b"", b"status": status.encode() if known else b"queued"})

    @property
    def func(self) -> Any:
        if self.refusal is not None or self.func_name != JOB_FUNCTION:
            raise PermissionError(f"job {self.id} was refused")
        return super().func

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: str | JobStatus, *, exc_string: str | None = None) -> None:
        """Never: a worker talks to Redis only."""


def fail_refused(job: Job, queue: Queue) -> bool:
    """Record a refused job as failed, its record emptied; True if `job` was refused (else nothing done)."""
    reason = getattr(job, "refusal", None)
    if reason is None:
        return False
    log.warning("job refused", job_id=job.id, reason=reason)
    job.origin = queue.name
    with queue.connection.pipeline() as pipeline:
        pipeline.delete(job.key)  # whatever the forged hash carried goes; the failed record is rebuilt
        pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
        job.set_status(JobStatus.FAILED, pipeline=pipeline)
        queue.failed_job_registry.add(
            job, ttl=REFUSED_JOB_TTL_SECONDS, exc_string=f"refused: {reason}", pipeline=pipeline
        )
        pipeline.execute()
    return True


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
