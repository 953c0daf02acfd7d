"""A burst's intake scripts share pipelines: right answers for each question, few connections, and Redis
errors reach each caller (who retries) instead of hanging it."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio

from bots.access import RateLimit, RateLimiter
from bots.inflight import InflightRequests
from bots.relay_book import RelayBook
from bots.script_batch import ScriptBatcher
from brandbot import keys
from tests.conftest import PrivateRedis

CLIENT_NAME = "script-batch-test"


def front_end_client(url: str) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(url, client_name=CLIENT_NAME, max_connections=64)


def connections_named(url: str) -> int:
    return sum(1 for client in redis.Redis.from_url(url).client_list() if client["name"] == CLIENT_NAME)


async def test_a_burst_of_intakes_is_screened_right_over_one_connection(private_redis: PrivateRedis) -> None:
    connection = front_end_client(private_redis.url)
    scripts = ScriptBatcher(connection)
    book = RelayBook(connection, platform="slack", retention_seconds=60, scripts=scripts)
    limiter = RateLimiter(connection, scripts=scripts)
    limit = RateLimit(questions_per_minute=6, burst=2)

    async def intake(question: int, delivery: int) -> tuple[bool, float]:
        fresh = await book.take((f"msg:C1:{question}",), f"req-{question}-{delivery}", {"model": "m"})
        return fresh, await limiter.acquire("slack", f"U{question % 10}", limit) if fresh else -1.0

    # 200 questions from 10 people, each delivered three times (Slack's retries and twin events).
    deliveries = [(q, d) for d in range(3) for q in range(200)]
    outcomes = await asyncio.gather(*(intake(q, d) for q, d in deliveries))

    taken_questions = [q for (q, _), (taken, _) in zip(deliveries, outcomes, strict=True) if taken]
    assert sorted(taken_questions) == list(range(200)), "each question taken once, whichever delivery won"
    waits = [wait for taken, wait in outcomes if taken]
    assert sum(1 for wait in waits if wait == 0.0) == 10 * 2, "each person's burst of two, no more"
    assert all(wait > 0 for wait in waits if wait != 0.0)
    assert connections_named(private_redis.url) == 1, "one pipeline at a time, not a connection per question"
    await connection.aclose()


async def test_a_bursts_in_flight_records_are_saved_right_over_one_connection(
    private_redis: PrivateRedis,
) -> None:
    """Each placeholder that goes up changes its answer's in-flight record: a burst's saves share pipelines
    (each was a transaction of its own, on a connection of its own from the pool)."""
    connection = front_end_client(private_redis.url)
    book = RelayBook(connection, platform="slack", retention_seconds=60)
    ids = [f"req-{n}" for n in range(300)]
    assert all(await asyncio.gather(*(book.take((f"msg:C1:{n}",), ids[n], {"v": 0}) for n in range(300))))
    await asyncio.gather(*(book.record(request_id, {"v": 1, "head": request_id}) for request_id in ids))

    records = await InflightRequests(connection, platform="slack", retention_seconds=60).all()
    assert records == {request_id: {"v": 1, "head": request_id} for request_id in ids}
    assert connections_named(private_redis.url) == 1
    ttl = await connection.ttl(keys.inflight_record("slack", ids[0]))
    assert 0 < ttl <= 60  # still expires with the retention
    await connection.aclose()


async def test_scripts_redis_forgot_are_loaded_again(private_redis: PrivateRedis) -> None:
    connection = front_end_client(private_redis.url)
    book = RelayBook(connection, platform="slack", retention_seconds=60)
    assert await book.take(("msg:C1:1",), "req-1", {"model": "m"})
    await connection.script_flush()  # as after a restart without persistence of scripts
    taken = await asyncio.gather(
        *(book.take((f"msg:C1:{n}",), f"req-{n}-again", {"model": "m"}) for n in range(1, 6))
    )
    assert taken == [False, True, True, True, True]
    await connection.aclose()


async def test_a_burst_meeting_a_stopped_redis_gets_the_error_and_the_next_call_works(
    private_redis: PrivateRedis,
) -> None:
    connection = front_end_client(private_redis.url)
    book = RelayBook(connection, platform="slack", retention_seconds=60)
    private_redis.stop()
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(book.take((f"msg:C1:{n}",), f"req-{n}", {"model": "m"}) for n in range(20)),
            return_exceptions=True,
        ),
        timeout=30,
    )
    assert all(isinstance(outcome, redis.RedisError) for outcome in outcomes), outcomes
    private_redis.start()
    assert await book.take(("msg:C1:1",), "req-1", {"model": "m"})
    await connection.aclose()


async def test_a_caller_that_gives_up_does_not_disturb_the_others(private_redis: PrivateRedis) -> None:
    connection = front_end_client(private_redis.url)
    book = RelayBook(connection, platform="slack", retention_seconds=60)
    impatient = asyncio.create_task(book.take(("msg:C1:0",), "req-0", {"model": "m"}))
    others = [
        asyncio.create_task(book.take((f"msg:C1:{n}",), f"req-{n}", {"model": "m"})) for n in range(1, 4)
    ]
    impatient.cancel()
    assert await asyncio.gather(*others) == [True, True, True]
    with pytest.raises(asyncio.CancelledError):
        await impatient
    await connection.aclose()
