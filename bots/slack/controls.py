"""The buttons on an answer and the assistant thread's welcome: Stop, 👍/👎, suggested prompts.

Stop cancels the generation (the worker ends the answer marked "Stopped"); only the asker or an admin
may press it. A rating is stored against the request id for the feedback export, one vote per person.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.access import AccessRules, Asker, check_access, is_admin
from bots.slack.blocks import FEEDBACK_GOOD_ACTION, parse_stop_value
from bots.slack.notices import whisper
from brandbot import keys, messages
from brandbot.errors import QueueUnavailable
from brandbot.feedback import FeedbackStore
from brandbot.logs import get_logger
from brandbot.queue import RequestQueue
from brandbot.streams import REDIS_OUTAGE

log = get_logger(__name__)

REDIS_ERRORS = (*REDIS_OUTAGE, QueueUnavailable)

ASSISTANT_THREAD_SECONDS = 7 * 86_400
"""How long an assistant thread is remembered as one (its status line and prompts apply there)."""


class Controls:
    """Handlers behind the buttons; each acts for the person who pressed, never for anyone else."""

    def __init__(
        self,
        *,
        client: AsyncWebClient,
        queue: RequestQueue,
        feedback: FeedbackStore,
        access: Callable[[], AccessRules],
    ) -> None:
        self.client = client
        self.queue = queue
        self.feedback = feedback
        self.access = access

    async def stop(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        parsed = parse_stop_value(str(action.get("value", "")))
        user_id, channel, thread_ts = _who_and_where(body)
        if parsed is None or not user_id or not channel:
            return
        request_id, asker_id = parsed
        if user_id != asker_id and not is_admin(self.access(), user_id):
            log.info("stop refused", request_id=request_id, user_id=user_id)
            await whisper(
                self.client,
                channel=channel,
                user=user_id,
                text=messages.SLACK_STOP_NOT_YOURS,
                thread_ts=thread_ts,
            )
            return
        try:
            await self.queue.cancel(request_id)
        except REDIS_ERRORS:
            await whisper(
                self.client,
                channel=channel,
                user=user_id,
                text=messages.QUEUE_UNREACHABLE,
                thread_ts=thread_ts,
            )
            return
        log.info("stop requested", request_id=request_id, user_id=user_id)

    async def rate(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        user_id, channel, thread_ts = _who_and_where(body)
        request_id = str(action.get("value", ""))
        if not user_id or not channel or not request_id:
            return
        if check_access(self.access(), Asker(user_id=user_id, channel_id=channel)) is not None:
            return  # someone not allowed to use the bot does not train it either
        rating: Literal[1, -1] = 1 if action.get("action_id") == FEEDBACK_GOOD_ACTION else -1
        try:
            stored = await self.feedback.rate(request_id, rating=rating, user_id=user_id)
        except REDIS_ERRORS:
            stored = False
        log.info("answer rated", request_id=request_id, rating=rating, stored=stored)
        text = messages.FEEDBACK_THANKS if stored else messages.FEEDBACK_EXPIRED
        await whisper(self.client, channel=channel, user=user_id, text=text, thread_ts=thread_ts)

    async def welcome(self, event: dict[str, Any]) -> None:
        """`assistant_thread_started`: remember the thread and offer a few prompts to start with."""
        thread = event.get("assistant_thread") or {}
        channel, thread_ts, user_id = thread.get("channel_id"), thread.get("thread_ts"), thread.get("user_id")
        if not channel or not thread_ts:
            return
        rules = self.access()
        if user_id and check_access(rules, Asker(str(user_id), str(channel), is_direct_message=True)):
            return  # the questions would be refused: offering prompts would only mislead
        try:
            await self.queue.redis.set(
                keys.slack_assistant_thread(channel, thread_ts), b"1", ex=ASSISTANT_THREAD_SECONDS
            )
        except REDIS_ERRORS:
            log.warning("redis unreachable, assistant thread not remembered")
        prompts = [{"title": title, "message": text} for title, text in messages.SLACK_SUGGESTED_PROMPTS]
        try:
            await self.client.assistant_threads_setSuggestedPrompts(
                channel_id=channel,
                thread_ts=thread_ts,
                title=messages.SLACK_SUGGESTED_PROMPTS_TITLE,
                prompts=prompts,
            )
        except SlackApiError as error:
            log.info("suggested prompts not set", error=error.response.get("error"))


def _who_and_where(body: dict[str, Any]) -> tuple[str, str, str | None]:
    """The presser, the channel, and the thread of the message the button sits on."""
    user_id = str((body.get("user") or {}).get("id") or "")
    container = body.get("container") or {}
    channel = str((body.get("channel") or {}).get("id") or container.get("channel_id") or "")
    message = body.get("message") or {}
    thread_ts = message.get("thread_ts") or container.get("thread_ts") or message.get("ts")
    return user_id, channel, thread_ts
