"""Every Redis key holding conversation text expires within the retention period, RQ's keys included."""

from __future__ import annotations

import redis

from tests.conftest import SlackBot, WorkerProcess
from tests.slack_fixtures import settled

QUESTION_MARK = "zebra-quokka-7731"
"""A string no key may hold past the retention period (nor without an expiry)."""


def value_of(client: redis.Redis, key: bytes) -> bytes:
    """Everything a key holds, whatever its type, as one byte string to search."""
    kind = client.type(key)
    if kind == b"string":
        return client.get(key) or b""
    if kind == b"hash":
        return b" ".join(k + b"=" + v for k, v in client.hgetall(key).items())
    if kind == b"list":
        return b" ".join(client.lrange(key, 0, -1))
    if kind == b"set":
        return b" ".join(client.smembers(key))
    if kind == b"zset":
        return b" ".join(member for member, _score in client.zrange(key, 0, -1, withscores=True))
    if kind == b"stream":
        return b" ".join(k + b"=" + v for _id, fields in client.xrange(key) for k, v in fields.items())
    raise AssertionError(f"a key of an unexpected type: {key!r} ({kind!r})")


async def test_after_an_exchange_only_expiring_keys_hold_conversation_text(
    slack_bot: SlackBot, worker_process: WorkerProcess, redis_client: redis.Redis
) -> None:
    slack = slack_bot.emulator
    question, envelope = await slack.send_user_message(
        channel="C100",
        user="U200",
        text=f"<@{slack.bot_user_id}> {QUESTION_MARK}: how many vacation days do I get?",
        event_type="app_mention",
    )
    await slack.wait_for_ack(envelope)

    def answered() -> bool:
        replies = slack_bot.bot_messages("C100", question.ts)
        return bool(replies) and all(settled(m) for m in replies)

    await slack.wait_until(answered, timeout=60)
    retention = slack_bot.settings.retention_seconds
    usage_retention = slack_bot.settings.usage_retention_days * 86_400
    holding_text, too_long, never_expiring = [], [], []
    for key in redis_client.scan_iter():
        ttl = redis_client.ttl(key)
        # Usage counters (counts and ids, never text) are kept for their own period.
        kept_for = usage_retention if key.startswith(b"brandbot:usage:") else retention
        if ttl > kept_for or (ttl < 0 and key.startswith(b"brandbot:usage:")):
            too_long.append((key, ttl))
        if QUESTION_MARK.encode() in value_of(redis_client, key):
            holding_text.append(key)
            if ttl < 0:
                never_expiring.append(key)
    assert holding_text, "the scan found the question nowhere: it searches the wrong way"
    assert never_expiring == [], "keys holding conversation text never expire"
    assert too_long == [], "keys outlive the retention period"
    assert not [key for key in holding_text if key.startswith(b"brandbot:usage:")], "usage counters hold text"
