"""The front-end's queue client under load: many answers relayed at once from one process."""

from __future__ import annotations

import asyncio

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from brandbot import keys
from brandbot.contract import DeltaEvent, GenerationRequest, Platform, ReplyTarget, Role, Turn, UserRef
from brandbot.errors import QueueUnavailable
from brandbot.queue import JOB_FUNCTION, RequestQueue
from brandbot.settings import Settings
from tests.conftest import TEST_REDIS_URL, PrivateRedis
from worker.replies import ReplyPublisher


async def test_hundreds_of_answers_can_be_followed_at_once(redis_client: redis.Redis) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, redis_url=TEST_REDIS_URL, retention_seconds=60, generation_deadline_seconds=10
    )
    queue = RequestQueue.from_settings(settings)
    publisher = ReplyPublisher(redis_client, retention_seconds=60)
    request_ids = [f"load{i}" for i in range(300)]

    async def follow(request_id: str) -> str:
        async for _id, event in queue.events(request_id, block_ms=200):
            if isinstance(event, DeltaEvent):
                return event.text
        raise AssertionError("stream ended")

    readers = [asyncio.create_task(follow(request_id)) for request_id in request_ids]
    await asyncio.sleep(0.5)  # every reader is now blocked on its own stream, holding a connection
    for request_id in request_ids:
        publisher.publish(request_id, DeltaEvent(text=f"answer {request_id}"))
    texts = await asyncio.wait_for(asyncio.gather(*readers), timeout=30)
    assert texts == [f"answer {request_id}" for request_id in request_ids]
    await queue.close()


async def test_a_worker_whose_slots_all_died_is_not_counted_alive(redis_client: redis.Redis) -> None:
    settings = Settings(_env_file=None, redis_url=TEST_REDIS_URL)  # type: ignore[call-arg]
    queue = RequestQueue.from_settings(settings)
    records = {
        "serving": {"model": "default", "live_slots": "2"},
        "restarting-its-slots": {"model": "default", "live_slots": "0"},
        "other-model": {"model": "big", "live_slots": "4"},
        "older-worker": {"model": "default"},
    }
    for name, record in records.items():
        redis_client.hset(keys.worker_heartbeat(name), mapping=record)
        redis_client.sadd(keys.WORKERS_SET, name)
    assert await queue.workers_alive("default") == 2
    assert await queue.workers_alive("big") == 1
    await queue.close()


def a_question(number: int, channel: str) -> GenerationRequest:
    return GenerationRequest(
        target=ReplyTarget(platform=Platform.SLACK, channel_id=channel),
        user=UserRef(id=f"U{number % 7}"),
        persona="default",
        turns=[Turn(role=Role.USER, content=f"question {number}")],
    )


async def test_a_burst_is_queued_once_each_in_order_with_right_positions_in_few_transactions(
    private_redis: PrivateRedis,
) -> None:
    settings = Settings(_env_file=None, redis_url=private_redis.url)  # type: ignore[call-arg]
    queue = RequestQueue.from_settings(settings)
    client = redis.Redis.from_url(private_redis.url)
    waiting = [a_question(i, "C0") for i in range(3)]
    for request in waiting:  # questions already queued before the burst
        await queue.enqueue(request, model="default")
    exec_calls_before = client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
    commands_before = sum(stat["calls"] for stat in client.info("commandstats").values())

    burst = [a_question(i, f"C{i % 5}") for i in range(300)]
    big = [a_question(1000 + i, "C9") for i in range(20)]
    placed = await asyncio.gather(
        *(queue.enqueue(request, model="big" if request in big else "default") for request in [*burst, *big])
    )

    # One transaction per batch, not per question (RQ's own writes included).
    exec_calls = client.info("commandstats")["cmdstat_exec"]["calls"] - exec_calls_before
    assert exec_calls <= 3, exec_calls
    # Three commands a job (its hash, its expiry, its place in the queue): RQ's bookkeeping that changes
    # nothing for a new job without dependencies is left out (it doubled the write).
    commands = sum(stat["calls"] for stat in client.info("commandstats").values()) - commands_before
    assert commands <= 3 * 320 + 20, commands
    # Every question once, in the order it was taken in, on its model's queue.
    default_ids = Queue(keys.model_queue("default"), connection=client).get_job_ids()
    big_ids = Queue(keys.model_queue("big"), connection=client).get_job_ids()
    assert default_ids == [r.request_id for r in [*waiting, *burst]]
    assert big_ids == [r.request_id for r in big]
    # Each knows how many wait before it.
    assert [p.ahead for p in placed] == [3 + i for i in range(300)] + list(range(20))
    assert [p.request_id for p in placed] == [r.request_id for r in [*burst, *big]]
    # Ordinary RQ jobs, as workers and RQ's tools expect them.
    job = Job.fetch(burst[7].request_id, connection=client, serializer=JSONSerializer)
    assert job.func_name == JOB_FUNCTION and job.get_status() == "queued"
    assert job.description == f"reply {burst[7].request_id}" and job.retries_left == 1
    assert GenerationRequest.model_validate(job.args[0]) == burst[7]
    assert job.origin == keys.model_queue("default") and job.enqueued_at is not None
    assert 0 < client.ttl(job.key) <= settings.retention_seconds  # conversation text expires
    await queue.close()


async def test_a_burst_meeting_a_stopped_redis_gets_a_clear_error_for_each_question(
    private_redis: PrivateRedis,
) -> None:
    settings = Settings(_env_file=None, redis_url=private_redis.url)  # type: ignore[call-arg]
    queue = RequestQueue.from_settings(settings)
    private_redis.stop()
    outcomes = await asyncio.gather(
        *(queue.enqueue(a_question(i, "C1"), model="default") for i in range(20)), return_exceptions=True
    )
    assert all(isinstance(outcome, QueueUnavailable) for outcome in outcomes), outcomes
    private_redis.start()
    placed = await queue.enqueue(a_question(99, "C1"), model="default")  # the queue serves again
    assert placed.ahead == 0
    await queue.close()


async def test_a_question_queued_while_redis_restarts_is_queued_once_when_it_is_back(
    private_redis: PrivateRedis,
) -> None:
    settings = Settings(_env_file=None, redis_url=private_redis.url)  # type: ignore[call-arg]
    queue = RequestQueue.from_settings(settings)
    private_redis.stop()
    question = a_question(1, "C1")
    queued = asyncio.create_task(queue.enqueue(question, model="default"))
    await asyncio.sleep(1.5)  # a restart, shorter than the ride-out
    private_redis.start()
    placed = await asyncio.wait_for(queued, timeout=30)
    client = redis.Redis.from_url(private_redis.url)
    assert placed.ahead == 0
    assert Queue(keys.model_queue("default"), connection=client).get_job_ids() == [question.request_id]
    await queue.close()
