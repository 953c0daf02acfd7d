"""Slack front-end: slack-bolt `AsyncApp` listeners, Socket Mode transport, replies streamed into threads."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import redis
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bots.relay import ChannelPacer, StreamingEditor, relay_reply
from bots.safety import neutralize_slack_mentions
from brandbot import keys, messages
from brandbot.contract import GenerationRequest, Platform, ReplyTarget, Role, Turn, UserRef
from brandbot.errors import QueueUnavailable
from brandbot.logs import get_logger
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.queue import RequestQueue
from brandbot.settings import Settings

log = get_logger(__name__)

SLACK_MARKDOWN_LIMIT = 12_000
"""Slack's limit for `markdown_text`; longer answers continue in follow-up messages."""

DEDUP_SECONDS = 3600
"""Slack retries for minutes and replays after reconnects; an event id is remembered this long."""

USER_NAME_CACHE_SECONDS = 3600

MENTION = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")


@dataclass
class SlackThreadSink:
    """Writes one reply into a Slack thread with native Markdown (`markdown_text`)."""

    client: AsyncWebClient
    channel: str
    thread_ts: str
    max_chars: int = SLACK_MARKDOWN_LIMIT

    @property
    def channel_key(self) -> str:
        return f"slack:{self.channel}"

    async def post(self, text: str) -> str:
        response = await self.client.chat_postMessage(
            channel=self.channel, thread_ts=self.thread_ts, markdown_text=neutralize_slack_mentions(text)
        )
        return str(response["ts"])

    async def edit(self, message_id: str, text: str) -> None:
        await self.client.chat_update(
            channel=self.channel, ts=message_id, markdown_text=neutralize_slack_mentions(text)
        )

    async def delete(self, message_id: str) -> None:
        await self.client.chat_delete(channel=self.channel, ts=message_id)


class UserNames:
    """Display names from `users.info`, cached (names feed the prompt template)."""

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._cache: dict[str, tuple[float, str]] = {}

    async def display_name(self, user_id: str) -> str:
        cached = self._cache.get(user_id)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            user = (await self._client.users_info(user=user_id))["user"]
        except SlackApiError:
            return ""
        profile = user.get("profile", {})
        name = (
            profile.get("display_name")
            or profile.get("real_name")
            or user.get("real_name")
            or user.get("name", "")
        )
        self._cache[user_id] = (time.monotonic() + USER_NAME_CACHE_SECONDS, name)
        return str(name)


def question_text(text: str, bot_user_id: str | None) -> str:
    """The question without the bot's own mention."""
    return MENTION.sub(lambda m: "" if m.group(1) == bot_user_id else m.group(0), text).strip()


def build_slack_app(
    *, settings: Settings, queue: RequestQueue, prompts: LivePromptLibrary, pacer: ChannelPacer | None = None
) -> AsyncApp:
    """The Slack app with every listener registered; the caller picks the transport.

    ```python
    app = build_slack_app(settings=settings, queue=queue, prompts=prompts)
    await AsyncSocketModeHandler(app, app_token).start_async()
    ```
    """
    settings.require("slack_bot_token")
    assert settings.slack_bot_token is not None
    client = AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=str(settings.slack_api_url),
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=3), AsyncServerErrorRetryHandler()],
    )
    signing_secret = (
        settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
    )
    app = AsyncApp(
        client=client,
        signing_secret=signing_secret,
        request_verification_enabled=signing_secret is not None,
    )
    pacer = pacer or ChannelPacer(settings.edit_interval_seconds)
    names = UserNames(client)

    async def first_time(platform_event_id: str) -> bool:
        """Mark a platform event as seen; False if it was seen before (a retry or a replay)."""
        return bool(
            await queue.redis.set(
                keys.seen_event("slack", platform_event_id), b"1", nx=True, ex=DEDUP_SECONDS
            )
        )

    @app.event("app_mention")
    async def answer_mention(
        event: dict[str, Any], body: dict[str, Any], context: Any, client: AsyncWebClient
    ) -> None:
        if event.get("bot_id") or event.get("user") in (None, context.bot_user_id) or event.get("edited"):
            return
        channel, thread_ts = event["channel"], event.get("thread_ts") or event["ts"]
        sink = SlackThreadSink(client, channel, thread_ts)
        try:
            if not await first_time(str(body.get("event_id") or event["ts"])):
                log.info("duplicate event ignored", event_id=body.get("event_id"))
                return
        except (redis.ConnectionError, redis.TimeoutError) as error:
            log.warning("redis unreachable, request not taken", error=type(error).__name__)
            await sink.post(messages.QUEUE_UNREACHABLE)
            return
        question = question_text(event.get("text", ""), context.bot_user_id)
        if not question:
            await sink.post(messages.EMPTY_MENTION)
            return
        persona = prompts.current().default_persona()
        request = GenerationRequest(
            target=ReplyTarget(
                platform=Platform.SLACK,
                workspace_id=body.get("team_id") or event.get("team"),
                channel_id=channel,
                thread_id=thread_ts,
                message_id=event["ts"],
            ),
            user=UserRef(id=event["user"], display_name=await names.display_name(event["user"])),
            persona=persona.name,
            turns=[Turn(role=Role.USER, content=question)],
        )
        editor = StreamingEditor(sink, pacer)
        await editor.start(messages.THINKING)
        try:
            enqueued = await queue.enqueue(request, model=persona.model)
        except QueueUnavailable:
            log.warning("redis unreachable, request not queued", request_id=request.request_id)
            await editor.finish(messages.QUEUE_UNREACHABLE)
            return
        log.info("request queued", request_id=request.request_id, ahead=enqueued.ahead, chars=len(question))
        if enqueued.ahead:
            await editor.finish(messages.queue_position(enqueued.ahead))
        outcome = await relay_reply(
            queue=queue,
            request_id=request.request_id,
            editor=editor,
            model=persona.model,
            worker_wait_seconds=settings.worker_wait_seconds,
        )
        log.info(
            "reply relayed", request_id=request.request_id, status=outcome.status, chars=len(outcome.text)
        )

    return app


async def run_slack(settings: Settings) -> None:
    """`brandbot slack`: serve Slack in Socket Mode until interrupted."""
    settings.require("slack_bot_token", "slack_app_token")
    assert settings.slack_app_token is not None
    queue = RequestQueue(
        redis_url=settings.redis_url,
        retention_seconds=settings.retention_seconds,
        deadline_seconds=settings.generation_deadline_seconds,
    )
    prompts = LivePromptLibrary(settings.prompts_dir)
    app = build_slack_app(settings=settings, queue=queue, prompts=prompts)
    handler = AsyncSocketModeHandler(app, settings.slack_app_token.get_secret_value())
    log.info("slack front-end starting", mode="socket", api=str(settings.slack_api_url))
    try:
        await handler.start_async()
    finally:
        await queue.close()
