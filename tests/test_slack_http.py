"""The HTTP Events API transport: signed requests are answered like Socket Mode events; forged or
replayed ones are refused before any listener sees them."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable

import redis

from bots.slack.blocks import FEEDBACK_GOOD_ACTION
from brandbot import messages
from brandbot.emulators.slack import SlackEmulator
from brandbot.settings import Settings
from tests.slack_fixtures import (
    MODEL_QUEUE,
    SIGNING_SECRET,
    answer_with,
    button_value,
    is_final_answer,
    scripted_worker,
    slack_running,
)

ANSWER = "Answered over HTTP."


async def test_http_mode_passes_url_verification_and_answers_signed_events_once(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    slack = slack_emulator
    base = settings()
    async with (
        slack_running(slack, base, slack_mode="http") as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER)) as taken,
    ):
        challenge = {"type": "url_verification", "token": "t", "challenge": "c-123"}
        status, body = await slack.post_http_event(bot.http_url, challenge, signing_secret=SIGNING_SECRET)
        assert (status, json.loads(body)) == (200, {"challenge": "c-123"})

        question = slack.add_user_message(channel="C1", user="U1", text=f"<@{slack.bot_user_id}> hi there")
        event = {
            "type": "app_mention",
            "channel": "C1",
            "user": "U1",
            "text": question.text,
            "ts": question.ts,
        }
        payload = slack.build_event_payload(event, event_id="EvHTTP1")
        status, _ = await slack.post_http_event(bot.http_url, payload, signing_secret=SIGNING_SECRET)
        assert status == 200
        # Slack gave up waiting and sends it again, saying so in X-Slack-Retry-Num.
        status, _ = await slack.post_http_event(
            bot.http_url, payload, signing_secret=SIGNING_SECRET, retry_num=1
        )
        assert status == 200
        answer = await bot.wait_for_answer("C1", question.ts)

        # Buttons arrive as signed form posts to the same URL.
        click = {
            "type": "block_actions",
            "user": {"id": "U1"},
            "channel": {"id": "C1"},
            "container": {
                "type": "message",
                "message_ts": answer.ts,
                "channel_id": "C1",
                "thread_ts": question.ts,
            },
            "message": slack.render(answer),
            "actions": [
                {"action_id": FEEDBACK_GOOD_ACTION, "value": button_value(answer, FEEDBACK_GOOD_ACTION)}
            ],
        }
        form = "payload=" + urllib.parse.quote(json.dumps(click))
        status, _ = await slack.post_http_event(bot.http_url, form, signing_secret=SIGNING_SECRET)
        assert status == 200
        await slack.wait_until(lambda: bool(slack.ephemerals), what="the rating's confirmation")

    assert len(taken) == 1 and is_final_answer(answer)
    assert slack.ephemerals[0].recipient == "U1"
    assert slack.ephemerals[0].text in (messages.FEEDBACK_THANKS, messages.FEEDBACK_EXPIRED)


async def test_http_mode_refuses_forged_signatures_and_stale_timestamps(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    async with slack_running(slack, settings(), slack_mode="http") as bot:
        question = slack.add_user_message(channel="C1", user="U1", text=f"<@{slack.bot_user_id}> hi")
        event = {
            "type": "app_mention",
            "channel": "C1",
            "user": "U1",
            "text": question.text,
            "ts": question.ts,
        }
        forged = await slack.post_http_event(
            bot.http_url, slack.build_event_payload(event), signing_secret=SIGNING_SECRET, bad_signature=True
        )
        wrong_secret = await slack.post_http_event(
            bot.http_url, slack.build_event_payload(event), signing_secret="not-the-secret"
        )
        replayed = await slack.post_http_event(
            bot.http_url,
            slack.build_event_payload(event),
            signing_secret=SIGNING_SECRET,
            timestamp=int(time.time()) - 10 * 60,  # a captured request, sent again later
        )
        challenge = await slack.post_http_event(
            bot.http_url, {"type": "url_verification", "challenge": "x"}, signing_secret="nope"
        )

    assert [forged[0], wrong_secret[0], replayed[0], challenge[0]] == [401, 401, 401, 401]
    assert not slack.calls_to("chat.postMessage") and redis_client.llen(MODEL_QUEUE) == 0
