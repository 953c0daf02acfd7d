"""Appending reply events to a request's Redis stream, which expires with the retention period."""

from __future__ import annotations

import redis

from brandbot import keys
from brandbot.contract import ReplyEvent, reply_event_adapter


class ReplyPublisher:
    def __init__(self, connection: redis.Redis, *, retention_seconds: int) -> None:
        self._redis = connection
        self._retention = retention_seconds

    def publish(self, request_id: str, *events: ReplyEvent) -> None:
        """Append events in order, in one round trip."""
        stream = keys.reply_stream(request_id)
        with self._redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(stream, {"event": reply_event_adapter.dump_json(event)})
            pipe.expire(stream, self._retention)
            pipe.execute()

    def cancel_requested(self, request_id: str) -> bool:
        return bool(self._redis.exists(keys.cancel_flag(request_id)))
