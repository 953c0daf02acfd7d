"""A real `brandbot worker` keeps its slots alive, fits its engine's concurrency, exits when the engine dies.

Faults that cannot be provoked from outside on a CPU come from `worker.faults` (test-only `BRANDBOT_TEST_*`
variables read by the worker's entry point): a slow slot start-up, an engine that runs one request at a time
(ExLlamaV2 without flash-attn), an engine whose generation thread dies.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis
from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from brandbot import keys
from brandbot.contract import ErrorEvent, StartEvent
from brandbot.settings import Settings
from tests.conftest import WorkerProcess
from tests.test_worker_process import (
    FAST_RECOVERY,
    a_request,
    dones,
    enqueue,
    events_of,
    streaming,
    wait_for,
)
from worker.faults import ENGINE_BATCH_LIMIT, KILL_ENGINE_THREAD_AT_IN_FLIGHT, SLOT_START_DELAY

MEDIUM_PERSONA = """
display_name: Medium
model: default
system_prompt: You answer in a paragraph.
sampling:
  temperature: 0
  max_new_tokens: 300
"""


def heartbeats(client: redis.Redis) -> list[dict[str, str]]:
    records = []
    for name in client.smembers(keys.WORKERS_SET):
        record = client.hgetall(keys.worker_heartbeat(keys.as_text(name)))
        if record:
            records.append({keys.as_text(k): keys.as_text(v) for k, v in record.items()})
    return records


def rq_workers(client: redis.Redis) -> list[Worker]:
    queue = Queue(keys.model_queue("default"), connection=client, serializer=JSONSerializer)
    return Worker.all(queue=queue)


def worker_of(client: redis.Redis, request_id: str) -> str:
    """The process part of the slot name that ran a job (`host.pid.random.slotN` → `host.pid.random`)."""
    job = Job.fetch(request_id, connection=client, serializer=JSONSerializer)
    return (job.worker_name or "").rsplit(".slot", 1)[0]


def test_every_slot_survives_a_slow_start_and_answers(
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    settings: Callable[..., Settings],
) -> None:
    start_worker(worker_concurrency=4, env={SLOT_START_DELAY: "0.05"})
    requests = [a_request(f"hello {i}") for i in range(4)]
    enqueue(settings(), *requests)
    for request in requests:
        wait_for(lambda r=request: bool(dones(redis_client, r.request_id)), 60, "every answer")  # type: ignore[misc]
    assert len(rq_workers(redis_client)) == 4
    [record] = heartbeats(redis_client)
    assert record["live_slots"] == "4" and record["slots"] == "4"


def test_a_one_at_a_time_engine_gets_one_slot_and_another_worker_takes_the_next_questions(
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    settings: Callable[..., Settings],
    prompts_dir: Path,
) -> None:
    (prompts_dir / "personas" / "medium.yaml").write_text(MEDIUM_PERSONA)
    first = start_worker(worker_concurrency=4, env={ENGINE_BATCH_LIMIT: "1"})
    assert "slots=1" in first.log()
    requests = [a_request(f"hello {i}", "medium") for i in range(6)]
    enqueue(settings(), *requests)
    wait_for(lambda: streaming(redis_client, requests[0].request_id), 30, "the first answer to start")
    queue = Queue(keys.model_queue("default"), connection=redis_client, serializer=JSONSerializer)
    assert queue.count >= 4, "a one-at-a-time engine's worker took several questions at once"
    start_worker(worker_concurrency=4, env={ENGINE_BATCH_LIMIT: "1"})
    for request in requests:
        wait_for(lambda r=request: bool(dones(redis_client, r.request_id)), 180, "every answer")  # type: ignore[misc]
    assert len({worker_of(redis_client, r.request_id) for r in requests}) == 2
    assert len(rq_workers(redis_client)) == 2


def test_engine_death_exits_non_zero_and_its_questions_are_answered_by_another_worker(
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    settings: Callable[..., Settings],
    prompts_dir: Path,
) -> None:
    (prompts_dir / "personas" / "medium.yaml").write_text(MEDIUM_PERSONA)
    dying = start_worker(env={KILL_ENGINE_THREAD_AT_IN_FLIGHT: "2"}, **FAST_RECOVERY)
    requests = [a_request(f"hello {i}", "medium") for i in range(2)]
    enqueue(settings(), *requests)
    assert dying.process.wait(timeout=60) != 0
    assert "engine" in dying.log().splitlines()[-1]
    start_worker(**FAST_RECOVERY)
    for request in requests:
        wait_for(lambda r=request: bool(dones(redis_client, r.request_id)), 120, "the retried answer")  # type: ignore[misc]
    for request in requests:
        events = events_of(redis_client, request.request_id)
        assert not [e for e in events if isinstance(e, ErrorEvent)]
        [done] = dones(redis_client, request.request_id)
        assert done.attempt == max(e.attempt for e in events if isinstance(e, StartEvent))
