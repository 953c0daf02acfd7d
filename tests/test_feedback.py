"""Answers kept for the retention period, rated with 👍/👎, exported as chat JSONL for fine-tuning."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from brandbot import keys
from brandbot.feedback import FeedbackRecorder, FeedbackStore, RatingFilter
from tests.conftest import REPO, TEST_REDIS_URL

RETENTION = 3600


@pytest.fixture
def recorder(redis_client: redis.Redis) -> FeedbackRecorder:
    return FeedbackRecorder(redis_client, retention_seconds=RETENTION)


@pytest.fixture
async def store(redis_client: redis.Redis) -> AsyncIterator[FeedbackStore]:
    connection = redis.asyncio.Redis.from_url(TEST_REDIS_URL)
    yield FeedbackStore(connection, retention_seconds=RETENTION)
    await connection.aclose()


def brandbot(*args: str, cwd: Path, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRANDBOT_")}
    return subprocess.run(
        [sys.executable, "-m", "brandbot.cli", *args],
        env={**env, "PYTHONPATH": str(REPO), "BRANDBOT_REDIS_URL": redis_url},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_until_gone(client: redis.Redis, key: str) -> None:
    """Expiry is Redis's job: wait for it to happen, without timing it."""
    while client.exists(key):
        time.sleep(0.01)


def record(
    recorder: FeedbackRecorder, request_id: str, *, persona: str = "support", answer: str = "Sure!"
) -> None:
    recorder.record_answer(
        request_id,
        persona=persona,
        system_prompt=f"You are {persona}.",
        turns=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": f"question {request_id}"},
        ],
        answer=answer,
        platform="slack",
    )


async def export_lines(store: FeedbackStore, rating: RatingFilter) -> list[dict[str, Any]]:
    buffer = io.StringIO()
    count = await store.export(buffer, rating=rating)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert count == len(lines)
    return sorted(lines, key=lambda line: str(line["messages"][-2]["content"]))


def test_answer_is_stored_with_the_retention_period(
    recorder: FeedbackRecorder, redis_client: redis.Redis
) -> None:
    record(recorder, "req1")
    ttl = redis_client.ttl(keys.feedback("req1"))
    assert 0 < ttl <= RETENTION


async def test_rating_is_attached_and_exported_as_chat_messages(
    recorder: FeedbackRecorder, store: FeedbackStore
) -> None:
    record(recorder, "req1", answer="Here is how.")
    assert await store.rate("req1", rating=1, user_id="U1") is True
    [line] = await export_lines(store, RatingFilter.GOOD)
    assert line == {
        "messages": [
            {"role": "system", "content": "You are support."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "question req1"},
            {"role": "assistant", "content": "Here is how."},
        ],
        "rating": 1,
        "persona": "support",
    }


async def test_rating_filter_good_bad_all_and_ties_left_out(
    recorder: FeedbackRecorder, store: FeedbackStore
) -> None:
    for request_id in ("a-good", "b-bad", "c-tie", "d-unrated"):
        record(recorder, request_id)
    await store.rate("a-good", rating=1, user_id="U1")
    await store.rate("b-bad", rating=-1, user_id="U1")
    await store.rate("b-bad", rating=-1, user_id="U2")
    await store.rate("c-tie", rating=1, user_id="U1")
    await store.rate("c-tie", rating=-1, user_id="U2")

    def asked(lines: list[dict[str, Any]]) -> list[tuple[str, int]]:
        return [(line["messages"][-2]["content"], line["rating"]) for line in lines]

    assert asked(await export_lines(store, RatingFilter.GOOD)) == [("question a-good", 1)]
    assert asked(await export_lines(store, RatingFilter.BAD)) == [("question b-bad", -1)]
    assert asked(await export_lines(store, RatingFilter.ALL)) == [
        ("question a-good", 1),
        ("question b-bad", -1),
    ]


async def test_one_vote_per_person_changing_and_withdrawing_it(
    recorder: FeedbackRecorder, store: FeedbackStore
) -> None:
    record(recorder, "req1")
    await store.rate("req1", rating=1, user_id="U1")
    await store.rate("req1", rating=1, user_id="U1")  # a second 👍 by the same person counts once
    await store.rate("req1", rating=-1, user_id="U2")
    assert await export_lines(store, RatingFilter.ALL) == []  # one each way: a tie
    assert await store.unrate("req1", user_id="U2") is True
    assert [line["rating"] for line in await export_lines(store, RatingFilter.ALL)] == [1]


async def test_rating_an_unknown_or_expired_answer_is_refused_and_creates_nothing(
    recorder: FeedbackRecorder, store: FeedbackStore, redis_client: redis.Redis
) -> None:
    assert await store.rate("never-recorded", rating=1, user_id="U1") is False
    assert redis_client.exists(keys.feedback("never-recorded")) == 0
    record(recorder, "req1")
    redis_client.pexpire(keys.feedback("req1"), 1)
    await asyncio.to_thread(wait_until_gone, redis_client, keys.feedback("req1"))
    assert await store.rate("req1", rating=1, user_id="U1") is False
    assert redis_client.exists(keys.feedback("req1")) == 0
    assert await export_lines(store, RatingFilter.ALL) == []


async def test_rating_keeps_the_original_expiry(
    recorder: FeedbackRecorder, store: FeedbackStore, redis_client: redis.Redis
) -> None:
    record(recorder, "req1")
    redis_client.expire(keys.feedback("req1"), 100)
    await store.rate("req1", rating=1, user_id="U1")
    assert 0 < redis_client.ttl(keys.feedback("req1")) <= 100  # a rating never extends retention


async def test_hostile_request_ids_name_no_other_key(store: FeedbackStore, redis_client: redis.Redis) -> None:
    redis_client.hset("brandbot:feedback:x:y", "record", "{}")
    assert await store.rate("x:y", rating=1, user_id="U1") is False
    assert await store.rate("*", rating=1, user_id="U1") is False
    assert redis_client.hkeys("brandbot:feedback:x:y") == [b"record"]


async def test_export_holds_only_what_the_current_retention_policy_allows(
    recorder: FeedbackRecorder, redis_client: redis.Redis
) -> None:
    record(recorder, "old")
    record(recorder, "new")
    # "old" was stored two hours ago under a longer policy; the policy is one hour now.
    raw = json.loads(redis_client.hget(keys.feedback("old"), "record"))  # type: ignore[arg-type]
    raw["recorded_at"] = time.time() - 7200
    redis_client.hset(keys.feedback("old"), "record", json.dumps(raw))
    connection = redis.asyncio.Redis.from_url(TEST_REDIS_URL)
    try:
        store = FeedbackStore(connection, retention_seconds=3600)
        for request_id in ("old", "new"):
            assert await store.rate(request_id, rating=1, user_id="U1")
        lines = await export_lines(store, RatingFilter.ALL)
    finally:
        await connection.aclose()
    assert [line["messages"][-2]["content"] for line in lines] == ["question new"]


async def test_export_command_writes_a_private_jsonl_file(
    recorder: FeedbackRecorder, store: FeedbackStore, tmp_path: Path
) -> None:
    record(recorder, "req1", persona="engineering")
    await store.rate("req1", rating=1, user_id="U1")
    output = tmp_path / "good.jsonl"
    result = await asyncio.to_thread(
        brandbot,
        "feedback",
        "export",
        str(output),
        "--rating",
        "good",
        cwd=tmp_path,
        redis_url=TEST_REDIS_URL,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"wrote 1 rated conversation (good) to {output}\n"
    [line] = [json.loads(text) for text in output.read_text().splitlines()]
    assert line["persona"] == "engineering" and line["messages"][0]["role"] == "system"
    assert stat.S_IMODE(output.stat().st_mode) == 0o600


def test_export_command_without_redis_is_one_line(tmp_path: Path) -> None:
    result = brandbot("feedback", "export", "-", cwd=tmp_path, redis_url="redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert result.stderr == "brandbot: cannot reach Redis at BRANDBOT_REDIS_URL; is it running?\n"
