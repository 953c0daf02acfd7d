"""A real `brandbot worker` keeps its slots alive, fits its engine's concurrency, exits when the engine dies.

Faults that cannot be provoked from outside on a CPU come from `worker.faults` (test-only `BRANDBOT_TEST_*`
variables read by the worker's entry point): a slow slot start-up, an engine that runs one request at a time
(ExLlamaV2 without flash-attn), an engine whose generation thread dies.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from brandbot import keys
from brandbot.contract import DeltaEvent, ErrorEvent, StartEvent
from brandbot.settings import Settings
from tests.conftest import PrivateRedis, WorkerProcess, free_port
from tests.test_worker_process import (
    FAST_RECOVERY,
    a_request,
    dones,
    enqueue,
    events_of,
    long_persona,  # noqa: F401 — a fixture
    scrape,
    streaming,
    wait_for,
)
from worker.faults import (
    DIE_ON_PROMPT_TEXT,
    ENGINE_BATCH_LIMIT,
    KILL_ENGINE_THREAD_AT_IN_FLIGHT,
    PUBLISH_OUTAGE,
    SLOT_START_DELAY,
    STALL_ON_PROMPT_TEXT,
)

OUTAGE_WINDOW_SECONDS = 1.0
"""What a reply may wait for Redis in the long-outage test (30 s in production): answers still run then."""

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
    # On an idle machine the first worker may have answered the lot while the second started: questions
    # asked now, with both up, show that the next one goes to the idle worker instead of waiting.
    later = [a_request(f"hello again {i}", "medium") for i in range(6)]
    enqueue(settings(), *later)
    requests += later
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


def start_worker_on(
    start_worker: Callable[..., WorkerProcess], server: PrivateRedis, **overrides: object
) -> WorkerProcess:
    worker = start_worker(wait=False, redis_url=server.url, **overrides)
    client = redis.Redis.from_url(server.url)
    wait_for(lambda: bool(heartbeats(client)) or worker.process.poll() is not None, 60, "the worker")
    assert worker.process.poll() is None, worker.log()
    return worker


def engine_requests(port: int) -> float:
    """The worker's `brandbot_engine_requests` gauge; -1 when a scrape fails (polled again)."""
    try:
        metrics = scrape(port)
    except OSError:  # e.g. reset while the worker is busy: the next poll asks again
        return -1
    for line in metrics.splitlines():
        if line.startswith("brandbot_engine_requests{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no brandbot_engine_requests metric")


def test_a_redis_restart_mid_answer_ends_in_one_complete_answer_and_the_worker_serves_on(
    start_worker: Callable[..., WorkerProcess],
    settings: Callable[..., Settings],
    prompts_dir: Path,
    durable_redis: PrivateRedis,
) -> None:
    (prompts_dir / "personas" / "medium.yaml").write_text(MEDIUM_PERSONA)
    worker = start_worker_on(start_worker, durable_redis)
    client = redis.Redis.from_url(durable_redis.url)
    on_private = settings(redis_url=durable_redis.url)
    request = a_request("hello 0", "medium")
    enqueue(on_private, request)
    wait_for(lambda: streaming(client, request.request_id), 30, "the answer to start")
    durable_redis.stop()
    time.sleep(3)  # a restart of a few seconds, while the worker goes on generating
    durable_redis.start()
    wait_for(lambda: bool(dones(client, request.request_id)), 90, "the answer to finish")
    events = events_of(client, request.request_id)
    [done] = dones(client, request.request_id)
    assert [e.attempt for e in events if isinstance(e, StartEvent)] == [1] and done.attempt == 1
    assert "".join(e.text for e in events if isinstance(e, DeltaEvent)) == done.text
    following = a_request("and another thing")
    enqueue(on_private, following)
    wait_for(lambda: bool(dones(client, following.request_id)), 60, "the next answer")
    assert worker.process.poll() is None


def test_redis_gone_longer_than_a_reply_may_wait_frees_the_engine_and_the_worker_lives_on(
    start_worker: Callable[..., WorkerProcess],
    settings: Callable[..., Settings],
    long_persona: str,  # noqa: F811
    durable_redis: PrivateRedis,
) -> None:
    port = free_port()
    worker = start_worker_on(
        start_worker,
        durable_redis,
        metrics_port=port,
        generation_deadline_seconds=600,
        env={PUBLISH_OUTAGE: str(OUTAGE_WINDOW_SECONDS)},
    )
    client = redis.Redis.from_url(durable_redis.url)
    on_private = settings(redis_url=durable_redis.url)
    # Greedy answers of random weights end at random lengths: of six, some are still generating when
    # the outage outlasts what a reply may wait.
    requests = [a_request(f"hello {i}", long_persona) for i in range(6)]
    enqueue(on_private, *requests)
    wait_for(lambda: all(streaming(client, r.request_id) for r in requests), 30, "the answers to start")
    durable_redis.stop()
    let_go = OUTAGE_WINDOW_SECONDS + 30
    wait_for(lambda: engine_requests(port) == 0, let_go, "the engine to let the answers go")
    assert worker.process.poll() is None
    assert "generation stopped" in worker.log()
    # The slot of a stopped answer cannot record the job's end without Redis: RQ's loop in it ends.
    wait_for(lambda: "job slot stopped" in worker.log(), 30, "a slot's RQ loop to end")
    durable_redis.start()
    following = a_request("still there?")
    enqueue(on_private, following)
    wait_for(lambda: bool(dones(client, following.request_id)), 120, "the next answer")
    # The slot whose RQ loop ended while Redis was away (it could not record the job's end) was
    # registered again and restarted: all four serve again.
    wait_for(lambda: "job slot died, restarting it" in worker.log(), 30, "the dead slot's restart")
    wait_for(lambda: [h["live_slots"] for h in heartbeats(client)] == ["4"], 30, "four live slots")
    assert worker.process.poll() is None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_question_a_killed_worker_took_but_never_started_is_answered(
    start_worker: Callable[..., WorkerProcess], redis_client: redis.Redis, settings: Callable[..., Settings]
) -> None:
    request = a_request("hello from the intermediate list")
    enqueue(settings(), request)
    queue_key = Queue.redis_queue_namespace_prefix + keys.model_queue("default")
    # Where a worker SIGKILLed between taking a job and starting it leaves the job: RQ's intermediate list.
    redis_client.lmove(queue_key, f"{queue_key}:intermediate")

    start_worker(**FAST_RECOVERY)

    wait_for(lambda: bool(dones(redis_client, request.request_id)), 60, "the stranded question's answer")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_maintenance_lock_left_by_a_killed_worker_does_not_hold_up_recovery(
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    settings: Callable[..., Settings],
    long_persona: str,  # noqa: F811 - the imported fixture
) -> None:
    doomed = start_worker(**FAST_RECOVERY)
    request = a_request("hello", long_persona)
    enqueue(settings(), request)
    wait_for(lambda: streaming(redis_client, request.request_id), 30, "generation to start")
    doomed.stop(signal.SIGKILL)
    # As if it died while cleaning the registries: RQ's own lock stays for 15 minutes.
    queue = Queue(keys.model_queue("default"), connection=redis_client, serializer=JSONSerializer)
    redis_client.delete(queue.registry_cleaning_key)
    assert queue.acquire_maintenance_lock()

    start_worker(**FAST_RECOVERY)

    wait_for(lambda: bool(dones(redis_client, request.request_id)), 120, "the abandoned question's answer")


@pytest.mark.slow
@pytest.mark.timeout(600)  # hang limit: up to four worker start-ups on a shared CPU
def test_a_poison_question_does_not_spend_the_retries_of_the_questions_beside_it(
    start_worker: Callable[..., WorkerProcess], redis_client: redis.Redis, settings: Callable[..., Settings]
) -> None:
    innocent = [a_request(f"hello {i}") for i in range(3)]
    poison = a_request("this one kills its worker: POISON")
    enqueue(settings(), *innocent, poison)
    deaths = 0
    # Every worker dies on the poison question, each time it is tried; its supervisor starts another.
    while deaths < 4 and not all(dones(redis_client, r.request_id) for r in innocent):
        # Not waited for: it may take the poison question and die before it is seen alive.
        worker = start_worker(wait=False, env={DIE_ON_PROMPT_TEXT: "POISON"}, **FAST_RECOVERY)
        wait_for(
            lambda w=worker: (  # type: ignore[misc]
                w.process.poll() is not None or all(dones(redis_client, r.request_id) for r in innocent)
            ),
            120,
            "the worker to die or answer",
        )
        deaths += worker.process.poll() is not None

    assert all(dones(redis_client, r.request_id) for r in innocent), f"{deaths} worker deaths"
    assert not dones(redis_client, poison.request_id)


@pytest.mark.slow
@pytest.mark.timeout(300)  # hang limit: three worker start-ups on a shared CPU
def test_a_stalled_engine_stops_its_worker_and_its_questions_are_answered_by_another(
    start_worker: Callable[..., WorkerProcess], redis_client: redis.Redis, settings: Callable[..., Settings]
) -> None:
    innocent = a_request("hello")
    stalling = a_request("this one sticks the engine: STALL")
    stalled = start_worker(env={STALL_ON_PROMPT_TEXT: "STALL"}, engine_stall_seconds=3, **FAST_RECOVERY)
    enqueue(settings(), innocent, stalling)

    assert stalled.process.wait(timeout=60) != 0  # a hang limit: without a watchdog it waits for ever
    assert "no progress" in stalled.log()
    start_worker(**FAST_RECOVERY)
    wait_for(lambda: bool(dones(redis_client, innocent.request_id)), 120, "the innocent question's answer")
    wait_for(lambda: bool(dones(redis_client, stalling.request_id)), 120, "the stalling question's answer")


@pytest.mark.timeout(180)
def test_a_worker_asked_to_stop_while_redis_is_away_stops_within_one_slot_wait(
    start_worker: Callable[..., WorkerProcess], private_redis: PrivateRedis
) -> None:
    """Found stopping the soak: eight slots each in RQ's reconnect loop were waited for one after the other,
    16 s each, so SIGTERM took over two minutes (a supervisor would have killed it first)."""
    worker = start_worker_on(start_worker, private_redis, worker_concurrency=8, drain_grace_seconds=1)
    private_redis.stop()
    wait_for(lambda: "could not connect to Redis" in worker.log(), 30, "the slots to lose Redis")

    # A hang limit well under eight slot waits (8 × 16 s), well over one (16 s): not a speed requirement.
    assert worker.stop(signal.SIGTERM, timeout=60) == 0, worker.log()[-2000:]
    assert "stopped" in worker.log()
