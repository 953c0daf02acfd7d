"""The front-end's queue client under load: many answers relayed at once from one process."""

from __future__ import annotations

import asyncio

import redis

from brandbot import keys
from brandbot.contract import DeltaEvent
from brandbot.queue import RequestQueue
from brandbot.settings import Settings
from tests.conftest import TEST_REDIS_URL
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
