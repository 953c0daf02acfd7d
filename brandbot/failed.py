"""`brandbot failed`: jobs RQ gave up on (each model queue's `FailedJobRegistry`): list, show, requeue, purge.

Run as the Redis `admin` user (deploy/redis/users.acl): the `status` user may not read job hashes, and no
tier's own user should be lent to an operator's hands. Jobs are read with the worker's `AdmittedJob`
class and RQ's JSON serializer: a forged hash is shown as refused, never unpickled or imported.

Text stays out by default: a job's question and its traceback (whose last line may quote input) are shown
only with `--show-text`. The error's kind (the exception type) is always shown, and its one-line summary
when it comes from brandbot's or RQ's own exceptions, whose messages never carry users' text.

What a requeue means for the chat: when RQ gave up on a job the asker was already told it failed, and the
front-end stopped relaying it. A requeued job runs again as a new attempt (attempt number one higher)
and writes its reply stream, where `brandbot failed show` and any reader of the stream see the outcome;
the chat message is not changed. It is for checking that a fix works (a worker restarted with a repaired
model or prompt file) and for jobs whose asker is told by other means — not a silent re-answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC
from typing import Any

import redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from brandbot import keys
from brandbot.errors import BrandbotError
from brandbot.queue import JOB_FUNCTION
from worker.admission import AdmittedJob

SAFE_SUMMARY_PREFIXES = ("brandbot.", "rq.", "refused:")
"""Failure summaries written by brandbot or RQ themselves: they name ids and fields, never users' text."""


class FailedJobError(BrandbotError):
    """A failed-job command that cannot be done (unknown id, a job that is not brandbot's reply job)."""


@dataclass(frozen=True)
class FailedJob:
    id: str
    queue: str
    failed_at: str | None
    kind: str
    summary: str | None  # None: the summary may quote input; shown with --show-text only
    attempts: int | None
    persona: str | None
    platform: str | None
    refused: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_queues(connection: redis.Redis) -> list[Queue]:
    """Every model queue, known to RQ or only by a failed-job registry of its name."""
    names: Any = connection.smembers(Queue.redis_queues_keys)
    prefix = Queue.redis_queue_namespace_prefix
    found = {keys.as_text(n).removeprefix(prefix) for n in names}
    failed_prefix = FailedJobRegistry.key_template.format("")
    pattern = FailedJobRegistry.key_template.format(keys.model_queue("*"))
    found |= {keys.as_text(key).removeprefix(failed_prefix) for key in connection.scan_iter(match=pattern)}
    return [
        Queue(name, connection=connection, serializer=JSONSerializer, job_class=AdmittedJob)
        for name in sorted(found)
        if name.startswith(keys.model_queue(""))
    ]


def registry(queue: Queue) -> FailedJobRegistry:
    return FailedJobRegistry(queue=queue, job_class=AdmittedJob, serializer=JSONSerializer)


def failure_record(job: Job) -> tuple[str | None, str | None]:
    """The failure's traceback and when it was recorded."""
    try:
        result = job.latest_result()
    except Exception:  # a result that does not decode: the hash's own fields still tell something
        result = None
    if result is not None and result.type == result.Type.FAILED:
        return result.exc_string, result.created_at.isoformat() if result.created_at else None
    ended = job.ended_at.replace(tzinfo=UTC).isoformat() if job.ended_at else None
    return job._exc_info or None, ended


def kind_and_summary(exc_string: str | None) -> tuple[str, str | None, str | None]:
    """(kind, safe summary or None, whole last line) of a failure's traceback text."""
    lines = [line for line in (exc_string or "").strip().splitlines() if line.strip()]
    if not lines:
        return "unknown", None, None
    last = lines[-1].strip()
    if last.startswith("refused:"):
        return "refused", last, last
    qualified, _, message = last.partition(":")
    kind = qualified.rsplit(".", 1)[-1] if " " not in qualified else "unknown"
    safe = last.startswith(SAFE_SUMMARY_PREFIXES)
    return kind, (message.strip() or kind) if safe else None, last


def describe(job: Job, queue: str) -> tuple[FailedJob, str | None, dict[str, Any] | None]:
    """The job's row, its traceback, and its request (None when refused)."""
    exc_string, failed_at = failure_record(job)
    kind, summary, _ = kind_and_summary(exc_string)
    refused = getattr(job, "refusal", None) is not None
    request: dict[str, Any] | None = None
    if not refused and job.args and isinstance(job.args[0], dict):
        request = job.args[0]
    attempts = None
    if not refused:
        max_attempts = int(job.meta.get("max_attempts", 1))
        attempts = max_attempts - (job.retries_left or 0)
    target = (request or {}).get("target")
    row = FailedJob(
        id=job.id,
        queue=queue,
        failed_at=failed_at,
        kind=kind,
        summary=summary,
        attempts=attempts,
        persona=_text_or_none((request or {}).get("persona")),
        platform=_text_or_none(target.get("platform") if isinstance(target, dict) else None),
        refused=refused,
    )
    return row, exc_string, request


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and len(value) <= 64 else None


def list_failed(connection: redis.Redis) -> list[FailedJob]:
    rows = []
    for queue in model_queues(connection):
        failed = registry(queue)
        # Read the raw ids: `get_job_ids` cleans the registry up first (moving and deleting jobs).
        ids: Any = connection.zrange(failed.key, 0, -1)
        for job_id in (keys.as_text(i) for i in ids):
            job = fetch_job(connection, job_id)
            if job is None:
                rows.append(FailedJob(job_id, queue.name, None, "expired", None, None, None, None, False))
                continue
            rows.append(describe(job, queue.name)[0])
    return sorted(rows, key=lambda row: row.failed_at or "")


def fetch_job(connection: redis.Redis, job_id: str) -> Job | None:
    try:
        return AdmittedJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def find(connection: redis.Redis, job_id: str) -> tuple[Queue, Job]:
    """The failed job `job_id` and its queue; `FailedJobError` when no registry holds it."""
    for queue in model_queues(connection):
        if connection.zscore(registry(queue).key, job_id) is not None:
            job = fetch_job(connection, job_id)
            if job is None:
                raise FailedJobError(f"failed job {job_id} has expired (its record is gone); purge it")
            return queue, job
    raise FailedJobError(f"no failed job {job_id} (`brandbot failed list` shows them)")


def requeue(connection: redis.Redis, job_id: str) -> int:
    """Put the failed job back on its queue as a new attempt; returns that attempt's number."""
    queue, job = find(connection, job_id)
    reason = getattr(job, "refusal", None)
    if reason is not None or job.func_name != JOB_FUNCTION:
        raise FailedJobError(f"job {job_id} is not a reply job ({reason or job.func_name}); it is not run")
    # A new attempt: attempt = max_attempts - retries_left, so the number goes up by one.
    job.meta["max_attempts"] = int(job.meta.get("max_attempts", 1)) + 1
    job.save_meta()
    connection.delete(keys.cancel_flag(job_id))  # a stop asked of the old attempt must not stop this one
    try:
        registry(queue).requeue(job)
    except InvalidJobOperation:
        raise FailedJobError(f"job {job_id} left the failed jobs meanwhile") from None
    return int(job.meta["max_attempts"]) - (job.retries_left or 0)


def purge(connection: redis.Redis, job_id: str) -> None:
    """Delete the failed job, its results and its reply stream."""
    for queue in model_queues(connection):
        failed = registry(queue)
        if connection.zscore(failed.key, job_id) is None:
            continue
        connection.zrem(failed.key, job_id)
        job = fetch_job(connection, job_id)
        if job is not None:
            job.delete(remove_from_queue=False)
        connection.delete(keys.reply_stream(job_id))
        return
    raise FailedJobError(f"no failed job {job_id} (`brandbot failed list` shows them)")
