"""Real `brandbot worker` processes on a real Redis: crash recovery, draining, bad payloads, metrics."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from brandbot import keys
from brandbot.contract import (
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    ErrorKind,
    FinishReason,
    GenerationRequest,
    NoticeEvent,
    Platform,
    ReplyEvent,
    ReplyTarget,
    Role,
    StartEvent,
    Turn,
    Usage,
    UserRef,
    parse_reply_event,
)
from brandbot.queue import JOB_FUNCTION, RequestQueue
from brandbot.settings import Settings
from tests.conftest import TEST_REDIS_URL, WorkerProcess, free_port
from worker.replies import ReplyPublisher

# Fast recovery settings so the crash test does not wait RQ's usual minutes.
FAST_RECOVERY = {"job_heartbeat_ttl_seconds": 3, "recovery_interval_seconds": 1.0}

LONG_PERSONA = """
display_name: Long-winded
model: default
system_prompt: You answer at length.
sampling:
  temperature: 0
  max_new_tokens: 1500
"""


@pytest.fixture
def long_persona(prompts_dir: Path) -> str:
    (prompts_dir / "personas" / "longwinded.yaml").write_text(LONG_PERSONA)
    return "longwinded"


def a_request(text: str, persona: str = "default") -> GenerationRequest:
    return GenerationRequest(
        target=ReplyTarget(platform=Platform.TERMINAL, channel_id="terminal"),
        user=UserRef(id="tester", display_name="Tess"),
        persona=persona,
        turns=[Turn(role=Role.USER, content=text)],
    )


def events_of(client: redis.Redis, request_id: str) -> list[ReplyEvent]:
    return [
        parse_reply_event(fields[b"event"]) for _id, fields in client.xrange(keys.reply_stream(request_id))
    ]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def enqueue(settings: Settings, *requests: GenerationRequest) -> None:
    async def go() -> None:
        queue = RequestQueue.from_settings(settings)
        for request in requests:
            await queue.enqueue(request, model="default")
        await queue.close()

    asyncio.run(go())


def dones(client: redis.Redis, request_id: str) -> list[DoneEvent]:
    return [e for e in events_of(client, request_id) if isinstance(e, DoneEvent)]


def streaming(client: redis.Redis, request_id: str) -> bool:
    return any(isinstance(e, DeltaEvent) for e in events_of(client, request_id))


def test_answer_streams_start_deltas_done_and_keeps_text_out_of_logs(
    worker_process: WorkerProcess, redis_client: redis.Redis, settings: Callable[..., Settings]
) -> None:
    request = a_request("my secret question about payroll")
    enqueue(settings(), request)
    wait_for(lambda: bool(dones(redis_client, request.request_id)), 30, "the answer")
    events = events_of(redis_client, request.request_id)
    assert isinstance(events[0], StartEvent) and events[0].attempt == 1
    [done] = [e for e in events if isinstance(e, DoneEvent)]
    assert "".join(e.text for e in events if isinstance(e, DeltaEvent)) == done.text
    assert done.usage.completion_tokens > 0
    assert 0 < redis_client.ttl(keys.reply_stream(request.request_id)) <= settings().retention_seconds
    assert "secret question" not in worker_process.log()
    assert request.request_id in worker_process.log()


def test_a_retry_of_a_request_answered_before_its_worker_died_is_not_answered_again(
    worker_process: WorkerProcess, redis_client: redis.Redis, settings: Callable[..., Settings]
) -> None:
    # A worker killed between publishing `done` and RQ recording the job as finished: RQ retries it.
    request = a_request("hello again")
    answered = DoneEvent(
        attempt=1,
        text="the first answer",
        finish_reason=FinishReason.STOP,
        usage=Usage(prompt_tokens=1, completion_tokens=3, total_ms=5.0),
    )
    ReplyPublisher(redis_client, retention_seconds=60).publish(
        request.request_id, StartEvent(attempt=1), DeltaEvent(attempt=1, text="the first answer"), answered
    )
    enqueue(settings(), request)
    job = Job.fetch(request.request_id, connection=redis_client, serializer=JSONSerializer)
    wait_for(lambda: job.get_status(refresh=True) == "finished", 30, "the job to finish")
    assert job.return_value() == {"already_answered": True}
    assert events_of(redis_client, request.request_id)[-1] == answered
    assert len(events_of(redis_client, request.request_id)) == 3


def test_killed_worker_requests_are_retried_and_answered_exactly_once(
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    settings: Callable[..., Settings],
    long_persona: str,
) -> None:
    doomed = start_worker(**FAST_RECOVERY)
    requests = [a_request(f"hello {i}", long_persona) for i in range(3)]
    enqueue(settings(), *requests)
    wait_for(lambda: all(streaming(redis_client, r.request_id) for r in requests), 30, "generation to start")
    doomed.stop(signal.SIGKILL)
    # Greedy answers of random weights end at random lengths: some may have finished before the kill.
    cut_off = [r for r in requests if not dones(redis_client, r.request_id)]
    assert cut_off, "every answer finished before the kill"
    start_worker(**FAST_RECOVERY)
    for request in requests:
        wait_for(lambda r=request: bool(dones(redis_client, r.request_id)), 90, "the retried answer")  # type: ignore[misc]
    time.sleep(1.0)  # any duplicate would have been published by now
    for request in requests:
        [done] = dones(redis_client, request.request_id)
        starts = [e.attempt for e in events_of(redis_client, request.request_id) if isinstance(e, StartEvent)]
        assert starts == ([1, 2] if request in cut_off else [1])
        assert done.attempt == starts[-1]


def test_sigterm_lets_running_answers_finish(
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    settings: Callable[..., Settings],
    long_persona: str,
) -> None:
    worker = start_worker(drain_grace_seconds=60)
    running = [a_request(f"hello {i}", long_persona) for i in range(2)]
    enqueue(settings(), *running)
    wait_for(lambda: all(streaming(redis_client, r.request_id) for r in running), 30, "generation to start")
    assert worker.stop(signal.SIGTERM, timeout=60) == 0
    for request in running:
        [done] = dones(redis_client, request.request_id)
        assert done.attempt == 1 and done.finish_reason is not FinishReason.CANCELLED
    assert "draining" in worker.log()


def test_sigterm_past_the_grace_period_requeues_unfinished_answers(
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    settings: Callable[..., Settings],
    long_persona: str,
) -> None:
    leaving = start_worker(drain_grace_seconds=0.1)
    requests = [a_request(f"hello {i}", long_persona) for i in range(3)]
    enqueue(settings(), *requests)
    wait_for(lambda: all(streaming(redis_client, r.request_id) for r in requests), 30, "generation to start")
    assert leaving.stop(signal.SIGTERM, timeout=60) == 0
    requeued = [r for r in requests if not dones(redis_client, r.request_id)]
    assert requeued, "every answer finished within the grace period"
    assert "requeueing unfinished requests" in leaving.log()
    start_worker()
    for request in requests:
        wait_for(lambda r=request: bool(dones(redis_client, r.request_id)), 60, "the requeued answer")  # type: ignore[misc]
        [done] = dones(redis_client, request.request_id)
        assert done.attempt == (2 if request in requeued else 1)


def test_malformed_payload_fails_with_a_reason_and_the_worker_lives_on(
    worker_process: WorkerProcess, redis_client: redis.Redis, settings: Callable[..., Settings]
) -> None:
    queue = Queue(
        keys.model_queue("default"),
        connection=redis.Redis.from_url(TEST_REDIS_URL),
        serializer=JSONSerializer,
    )
    bad = queue.enqueue(
        JOB_FUNCTION, {"request_id": "bad1", "turns": "not a list"}, job_id="bad1", retry=None
    )
    registry = FailedJobRegistry(queue=queue)
    wait_for(lambda: "bad1" in registry.get_job_ids(), 30, "the job to fail")
    failed = Job.fetch(bad.id, connection=queue.connection, serializer=JSONSerializer)
    assert "payload does not match the contract" in (failed.exc_info or "")
    [error] = [e for e in events_of(redis_client, "bad1") if isinstance(e, ErrorEvent)]
    assert error.kind is ErrorKind.BAD_REQUEST
    good = a_request("still there?")
    enqueue(settings(), good)
    wait_for(lambda: bool(dones(redis_client, good.request_id)), 30, "a later good request")
    assert worker_process.process.poll() is None


def test_cancel_flag_stops_generation_with_a_partial_answer(
    long_persona: str,
    worker_process: WorkerProcess,
    redis_client: redis.Redis,
    settings: Callable[..., Settings],
) -> None:
    requests = [a_request(f"hello {i}", long_persona) for i in range(4)]
    enqueue(settings(), *requests)
    wait_for(lambda: all(streaming(redis_client, r.request_id) for r in requests), 30, "generation to start")
    for request in requests:
        redis_client.set(keys.cancel_flag(request.request_id), 1, ex=60)
    running = [r for r in requests if not dones(redis_client, r.request_id)]
    assert running, "every answer finished before the cancel"
    for request in running:
        wait_for(lambda r=request: bool(dones(redis_client, r.request_id)), 10, "the cancelled answer")  # type: ignore[misc]
    cancelled = [d for r in running for d in dones(redis_client, r.request_id)]
    assert any(d.finish_reason is FinishReason.CANCELLED for d in cancelled)
    assert all(d.usage.completion_tokens < 1500 for d in cancelled)


def test_question_longer_than_the_context_is_cut_and_the_user_told(
    worker_process: WorkerProcess, redis_client: redis.Redis, settings: Callable[..., Settings]
) -> None:
    request = a_request("please help " * 3000)
    enqueue(settings(), request)
    wait_for(lambda: bool(dones(redis_client, request.request_id)), 30, "the answer")
    notices = [e for e in events_of(redis_client, request.request_id) if isinstance(e, NoticeEvent)]
    [done] = dones(redis_client, request.request_id)
    cut_by_length = ["length"] if done.finish_reason is FinishReason.LENGTH else []
    assert [n.code for n in notices] == ["question_trimmed", *cut_by_length]
    assert done.usage.prompt_tokens < 2048


def test_metrics_and_status_show_the_live_worker(
    start_worker: Callable[..., WorkerProcess], redis_client: redis.Redis, settings: Callable[..., Settings]
) -> None:
    port = free_port()
    start_worker(metrics_port=port)
    request = a_request("count me")
    enqueue(settings(), request)
    wait_for(lambda: bool(dones(redis_client, request.request_id)), 30, "the answer")
    wait_for(lambda: "brandbot_tokens_generated_total" in scrape(port), 10, "metrics")
    metrics = scrape(port)
    assert 'brandbot_requests_total{model="default",outcome="done"' in metrics
    assert "brandbot_time_to_first_token_seconds_bucket" in metrics
    from brandbot.status import collect_status

    status = collect_status(redis_client)
    [record] = status["workers"]
    assert record["model"] == "default" and record["engine"] == "transformers" and record["slots"] == 4
    assert [q["queue"] for q in status["queues"]] == [keys.model_queue("default")]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_answers_nobody_can_rate_leave_no_copy_of_the_conversation(
    worker_process: WorkerProcess, redis_client: redis.Redis, settings: Callable[..., Settings]
) -> None:
    unrated = a_request("a question asked where nobody can rate")
    rated = a_request("a question asked where people rate").model_copy(update={"keep_for_rating": True})
    enqueue(settings(), unrated, rated)
    wait_for(lambda: bool(dones(redis_client, unrated.request_id)), 30, "the unrated answer")
    wait_for(lambda: bool(dones(redis_client, rated.request_id)), 30, "the rated answer")
    assert redis_client.exists(keys.feedback(unrated.request_id)) == 0
    assert redis_client.exists(keys.feedback(rated.request_id)) == 1
    assert 0 < redis_client.ttl(keys.feedback(rated.request_id)) <= settings().retention_seconds
