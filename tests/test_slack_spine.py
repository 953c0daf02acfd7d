"""The spine: a Slack mention goes front-end → Redis/RQ → real worker → tiny model → back into its thread."""

from __future__ import annotations

import logging
import time

import redis

from bots.slack.blocks import STOP_ACTION
from brandbot import keys, messages
from brandbot.contract import DoneEvent, parse_reply_event
from tests.conftest import SlackBot, WorkerProcess, length_note
from tests.slack_fixtures import buttons, is_final_answer, settled, visible

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
        return bool(replies) and bool(done_events(redis_client)) and all(settled(m) for m in replies)

    await slack.wait_until(answered, timeout=60)
    posts = slack.calls_to("chat.postMessage")
    # The placeholder says it is thinking and carries the Stop button while the answer is written.
    assert posts[0].params["text"] == messages.THINKING and STOP_ACTION in [
        element["action_id"] for element in posts[0].params["blocks"][-1]["elements"]
    ]
    assert posts[0].params["thread_ts"] == question.ts and posts[0].params["channel"] == "C100"
    [done] = done_events(redis_client).values()
    [reply] = slack_bot.bot_messages("C100", question.ts)
    assert visible(reply) == (done.text.strip() or "…") + length_note(done) and is_final_answer(reply)
    finals = slack.calls_to("chat.stopStream") or slack.calls_to("chat.update")
    assert finals and finals[-1].params["ts"] == reply.ts and buttons(reply)
    log.info(
        "mention to placeholder %.0f ms, to final message %.0f ms",
        (posts[0].at - sent_at) * 1000,
        (finals[-1].at - sent_at) * 1000,
    )
    print(
        f"\nspine latency: placeholder {(posts[0].at - sent_at) * 1000:.0f} ms, "
        f"final {(finals[-1].at - sent_at) * 1000:.0f} ms"
    )
