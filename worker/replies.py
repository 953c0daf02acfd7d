"""Appending reply events to a request's Redis stream (which expires with the retention period), riding out
a Redis restart: events that cannot be written wait, in order, and go out once Redis answers again."""

from __future__ import annotations

import time
from typing import Any

import redis

from brandbot import keys
from brandbot.connections import REDIS_OUTAGE
from brandbot.contract import DoneEvent, ErrorEvent, ReplyEvent, parse_reply_event, reply_event_adapter
from brandbot.errors import RepliesUnpublishable

PUBLISH_OUTAGE_SECONDS = 30.0
"""How long a reply waits for Redis to come back (a restart with append-only persistence) before giving up."""

PUBLISH_RETRY_SECONDS = 0.5
"""While Redis is unavailable, how often writing is tried again."""


def redis_unavailable(error: redis.RedisError) -> bool:
    """True when Redis cannot take writes for now (down, silent, full, read-only), not for a wrong command."""
    return isinstance(error, REDIS_OUTAGE)


class ReplyPublisher:
    def __init__(
        self,
        connection: redis.Redis,
        *,
        retention_seconds: int,
        outage_seconds: float = PUBLISH_OUTAGE_SECONDS,
    ) -> None:
        self._redis = connection
        self._retention = retention_seconds
        self.outage_seconds = outage_seconds

    def publish(self, request_id: str, *events: ReplyEvent) -> str:
        """Append events in order, all or none, in one round trip; returns the last entry's id."""
        stream = keys.reply_stream(request_id)
        with self._redis.pipeline(transaction=True) as pipe:
            for event in events:
                pipe.xadd(stream, {"event": reply_event_adapter.dump_json(event)})
            pipe.expire(stream, self._retention)
            results = pipe.execute()
        return keys.as_text(results[-2])

    def last_entry(self, request_id: str) -> tuple[str, bytes] | None:
        entries: Any = self._redis.xrevrange(keys.reply_stream(request_id), count=1)
        if not entries:
            return None
        entry_id, fields = entries[0]
        return keys.as_text(entry_id), fields.get(b"event", b"")

    def answered(self, request_id: str) -> bool:
        """True when an attempt already ended this request's stream with its answer or its error."""
        last = self.last_entry(request_id)
        return last is not None and isinstance(parse_reply_event(last[1]), DoneEvent | ErrorEvent)

    def cancel_requested(self, request_id: str) -> bool:
        return bool(self._redis.exists(keys.cancel_flag(request_id)))

    def writer(self, request_id: str) -> ReplyWriter:
        return ReplyWriter(self, request_id)


class ReplyWriter:
    """One request's events on their way to Redis, in order, each exactly once, across Redis outages.

    `send` never waits for Redis: events that cannot be written yet are kept and go out with the next
    write. `send_and_wait` returns once everything is written. Both raise `RepliesUnpublishable` once
    Redis has been unavailable for `outage_seconds`. A write whose answer was lost (Redis went away
    mid-reply) is checked against the stream before being sent again, so no event is published twice.
    """

    def __init__(self, publisher: ReplyPublisher, request_id: str) -> None:
        self._publisher = publisher
        self.request_id = request_id
        self._unsent: list[ReplyEvent] = []
        self._in_doubt = 0  # how many of `_unsent` were in a write whose outcome is unknown
        self._last_id: str | None = None
        self.unavailable_since: float | None = None
        self._next_try = 0.0

    def send(self, *events: ReplyEvent) -> bool:
        """Write `events` (and any kept ones) now if Redis can take them; False if they are kept for later."""
        self._unsent.extend(events)
        if not self._unsent:
            return True
        now = time.monotonic()
        if self.unavailable_since is not None and now < self._next_try:
            return False
        try:
            self._settle_doubt()
            if self._unsent:
                self._in_doubt = len(self._unsent)
                self._last_id = self._publisher.publish(self.request_id, *self._unsent)
            self._unsent.clear()
            self._in_doubt = 0
        except redis.RedisError as error:
            self._note_outage(error, now)
            return False
        self.unavailable_since = None
        return True

    def _note_outage(self, error: redis.RedisError, now: float) -> None:
        """Remember since when Redis has been unavailable; give up once that outlasts `outage_seconds`."""
        if not redis_unavailable(error):
            raise error
        self.unavailable_since = self.unavailable_since or now
        self._next_try = now + PUBLISH_RETRY_SECONDS
        if now - self.unavailable_since >= self._publisher.outage_seconds:
            raise RepliesUnpublishable(
                f"Redis unavailable for {self._publisher.outage_seconds:.0f} s ({type(error).__name__})"
            ) from None

    def answered_before(self) -> bool:
        """True when an earlier attempt already gave the final event; waits out a Redis outage like `send`.

        A worker can be killed after publishing `done` but before RQ records the job as finished; RQ then
        retries it, and this check keeps the asker from getting the answer twice.
        """
        while True:
            try:
                answered = self._publisher.answered(self.request_id)
            except redis.RedisError as error:
                self._note_outage(error, time.monotonic())
                time.sleep(PUBLISH_RETRY_SECONDS)
                continue
            self.unavailable_since = None
            return answered

    def send_and_wait(self, *events: ReplyEvent) -> None:
        while not self.send(*events):
            events = ()
            time.sleep(PUBLISH_RETRY_SECONDS)

    def _settle_doubt(self) -> None:
        """Drop the events of a lost-answer write if the stream shows that it went through."""
        if not self._in_doubt:
            return
        last = self._publisher.last_entry(self.request_id)
        written = reply_event_adapter.dump_json(self._unsent[self._in_doubt - 1])
        if last is not None and last[0] != self._last_id and last[1] == written:
            self._last_id = last[0]
            del self._unsent[: self._in_doubt]
        self._in_doubt = 0
