"""Answers kept for the retention period so users can rate them, and the rated ones exported for fine-tuning.

One Redis hash per answered request (`brandbot:feedback:<request id>`), expiring with the retention
period like every other key that holds conversation text:

- `record`: the conversation as JSON (system prompt as rendered, the turns, the answer);
- `vote:<user id>`: `1` or `-1`, one per person, so re-rating replaces and a removed reaction can be undone.

The worker records (sync client); front-ends rate and the CLI exports (async client).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Literal

import redis
import redis.asyncio
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from brandbot import keys
from brandbot.logs import get_logger

log = get_logger(__name__)

RECORD_FIELD = "record"
VOTE_PREFIX = "vote:"
SCAN_BATCH = 500
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # as in the contract: nothing else names a key

# Set a vote only on a record that still exists: a rating must never recreate an expired conversation.
_VOTE_IF_STORED = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


class RatingFilter(StrEnum):
    GOOD = "good"
    BAD = "bad"
    ALL = "all"


class FeedbackRecord(BaseModel):
    """One answered request as the model saw it (the system prompt rendered, not the template)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    request_id: str
    persona: str
    platform: str
    system_prompt: str
    turns: list[dict[str, str]] = Field(description="The conversation before the answer: role and content.")
    answer: str
    recorded_at: float = Field(description="Unix time the answer was stored.")

    def chat_messages(self) -> list[dict[str, str]]:
        """The conversation in the chat format fine-tuning tools read."""
        turns = [{"role": turn["role"], "content": turn["content"]} for turn in self.turns]
        return [
            {"role": "system", "content": self.system_prompt},
            *turns,
            {"role": "assistant", "content": self.answer},
        ]


class FeedbackRecorder:
    """The worker's side: keep each `done` answer for the retention period.

    ```python
    recorder = FeedbackRecorder(connection, retention_seconds=settings.retention_seconds)
    recorder.record_answer(request.request_id, persona="support", system_prompt=text, turns=turns,
                           answer=result.text, platform="slack")
    ```
    """

    def __init__(self, connection: redis.Redis, *, retention_seconds: int) -> None:
        self._redis = connection
        self._retention = retention_seconds

    def record_answer(
        self,
        request_id: str,
        *,
        persona: str,
        system_prompt: str,
        turns: list[dict[str, str]],
        answer: str,
        platform: str,
    ) -> None:
        record = FeedbackRecord(
            request_id=request_id,
            persona=persona,
            platform=platform,
            system_prompt=system_prompt,
            turns=[{"role": str(turn["role"]), "content": str(turn["content"])} for turn in turns],
            answer=answer,
            recorded_at=time.time(),
        )
        key = keys.feedback(request_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key, RECORD_FIELD, record.model_dump_json())
        pipe.expire(key, self._retention)
        pipe.execute()


class FeedbackStore:
    """The front-ends' and the CLI's side: attach 👍/👎 to a stored answer, export the rated ones.

    ```python
    store = FeedbackStore(queue.redis, retention_seconds=settings.retention_seconds)
    await store.rate(request_id, rating=1, user_id="U123")
    count = await store.export(Path("rated.jsonl"), rating=RatingFilter.GOOD)
    ```
    """

    def __init__(self, connection: redis.asyncio.Redis, *, retention_seconds: int) -> None:
        self._redis = connection
        self._retention = retention_seconds

    async def rate(self, request_id: str, *, rating: Literal[1, -1], user_id: str) -> bool:
        """Record one person's rating; False if the answer is no longer stored (or never was)."""
        if rating not in (1, -1):
            raise ValueError("rating must be 1 or -1")
        return await self._set_vote(request_id, user_id, str(rating))

    async def unrate(self, request_id: str, *, user_id: str) -> bool:
        """Withdraw one person's rating (a removed reaction); False if the answer is no longer stored."""
        if not REQUEST_ID.match(request_id):
            return False
        removed: Any = await self._redis.hdel(keys.feedback(request_id), VOTE_PREFIX + user_id)
        return bool(removed)

    async def _set_vote(self, request_id: str, user_id: str, value: str) -> bool:
        if not REQUEST_ID.match(request_id):
            return False
        stored: Any = await self._redis.eval(
            _VOTE_IF_STORED, 1, keys.feedback(request_id), VOTE_PREFIX + user_id, value
        )
        return bool(stored)

    async def rated(
        self, rating: RatingFilter = RatingFilter.ALL
    ) -> AsyncIterator[tuple[FeedbackRecord, int]]:
        """Stored answers with a net rating matching `rating`, still within the retention period."""
        oldest = time.time() - self._retention  # the policy now, even if a key was stored under a longer one
        async for key in self._redis.scan_iter(match=keys.feedback("*"), count=SCAN_BATCH):
            fields: Any = await self._redis.hgetall(key)
            parsed = _parse(fields, keys.as_text(key))
            if parsed is None:
                continue
            record, score = parsed
            if record.recorded_at < oldest or score == 0:
                continue  # expired by policy, unrated, or as many 👍 as 👎
            if rating is RatingFilter.ALL or (score > 0) == (rating is RatingFilter.GOOD):
                yield record, 1 if score > 0 else -1

    async def export(self, destination: Path | IO[str], *, rating: RatingFilter = RatingFilter.GOOD) -> int:
        """Write rated conversations as chat-format JSONL; returns how many were written."""
        if isinstance(destination, Path):
            file = await asyncio.to_thread(_open_private, destination)
            with file:
                return await self._write(file, rating)
        return await self._write(destination, rating)

    async def _write(self, file: IO[str], rating: RatingFilter) -> int:
        count = 0
        async for record, score in self.rated(rating):
            line = {"messages": record.chat_messages(), "rating": score, "persona": record.persona}
            file.write(json.dumps(line, ensure_ascii=False) + "\n")
            count += 1
        file.flush()
        return count


def _open_private(path: Path) -> IO[str]:
    """Conversations are people's words: the export is readable by its owner only."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return open(descriptor, "w", encoding="utf-8")


def _parse(fields: dict[Any, Any], key: str) -> tuple[FeedbackRecord, int] | None:
    """The record and the sum of its votes; None (and a log line with the key only) if unreadable."""
    values = {keys.as_text(name): keys.as_text(value) for name, value in fields.items()}
    raw = values.get(RECORD_FIELD)
    if raw is None:
        return None  # votes without a record cannot happen through this module; skip, don't guess
    try:
        record = FeedbackRecord.model_validate_json(raw)
    except ValidationError:
        log.warning("unreadable feedback record skipped", key=key)
        return None
    score = sum(
        int(value) for name, value in values.items() if name.startswith(VOTE_PREFIX) and value in ("1", "-1")
    )
    return record, score
