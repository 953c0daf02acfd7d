"""The front-end's queue client under load: many answers relayed at once from one process."""

from __future__ import annotations

import asyncio

import redis

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
