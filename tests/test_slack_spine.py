"""The spine: a Slack mention goes front-end → Redis/RQ → real worker → tiny model → back into its thread."""

from __future__ import annotations

import logging
import time

import redis

from bots.relay import STREAMING_CURSOR
from brandbot import keys, messages
from brandbot.contract import DoneEvent, parse_reply_event
from tests.conftest import SlackBot, WorkerProcess

log = logging.getLogger("brandbot.tests")


def done_events(client: redis.Redis) -> dict[str, DoneEvent]:
    found = {}
    for key in client.scan_iter(match=keys.reply_stream("*")):
        for _id, fields in client.xrange(key):
            event = parse_reply_event(fields[b"event"])
            if isinstance(event, DoneEvent):
                found[key.decode()] = event
    return found


async def test_mention_gets_placeholder_then_streamed_final_answer_in_thread(
    slack_bot: SlackBot, worker_process: WorkerProcess, redis_client: redis.Redis
) -> None:
    slack = slack_bot.emulator
    sent_at = time.monotonic()
    question, envelope = await slack.send_user_message(
        channel="C100",
        user="U200",
        text=f"<@{slack.bot_user_id}> how do I reset my password?",
        event_type="app_mention",
    )
    await slack.wait_for_ack(envelope)

    def answered() -> bool:
        replies = slack_bot.bot_messages("C100", question.ts)
        return (
            bool(replies)
            and bool(done_events(redis_client))
            and not any(
                (m.markdown_text or "").endswith(STREAMING_CURSOR) or m.markdown_text == messages.THINKING
                for m in replies
            )
        )

    await slack.wait_until(answered, timeout=60)
    posts = slack.calls_to("chat.postMessage")
    updates = slack.calls_to("chat.update")
    assert posts[0].params["markdown_text"] == messages.THINKING
    assert posts[0].params["thread_ts"] == question.ts and posts[0].params["channel"] == "C100"
    [done] = done_events(redis_client).values()
    [reply] = slack_bot.bot_messages("C100", question.ts)
    assert reply.markdown_text == (done.text.strip() or "…")
    assert updates and updates[-1].params["ts"] == reply.ts
    log.info(
        "mention to placeholder %.0f ms, to final message %.0f ms",
        (posts[0].at - sent_at) * 1000,
        (updates[-1].at - sent_at) * 1000,
    )
    print(
        f"\nspine latency: placeholder {(posts[0].at - sent_at) * 1000:.0f} ms, "
        f"final {(updates[-1].at - sent_at) * 1000:.0f} ms"
    )
