"""The Slack app: bolt listeners for questions and buttons, on Socket Mode or the HTTP Events API.

Listeners only classify the event and hand it to the conversation core (`bots.conversation`), so bolt's
ack goes out at once and the answer runs as a task of its own.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bots.access import AccessRules
from bots.conversation import Conversations, EnqueueObserver
from bots.lifecycle import serve_until_signalled
from bots.relay import ChannelPacer
from bots.slack.adapter import SlackAdapter
from bots.slack.blocks import FEEDBACK_BAD_ACTION, FEEDBACK_GOOD_ACTION, STOP_ACTION
from bots.slack.controls import Controls
from bots.slack.events import from_mention, from_message, slack_id
from bots.slack.http_mode import serve_http
from brandbot.feedback import FeedbackStore
from brandbot.health import Readiness, probe_client, serve_ops
from brandbot.heap import freeze_startup_heap
from brandbot.logs import get_logger
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.queue import RequestQueue
from brandbot.settings import Settings, SlackMode

log = get_logger(__name__)

RATE_LIMIT_RETRIES = 3
"""slack_sdk waits out `429 Retry-After` this many times before the sink sees `ratelimited`."""


class SlackApp(AsyncApp):
    """A bolt `AsyncApp` with brandbot's listeners, plus the conversation core that answers."""

    conversations: Conversations
    adapter: SlackAdapter
    web_session: aiohttp.ClientSession | None = None
    connected: Callable[[], bool] = staticmethod(lambda: False)  # set by the transport once it serves

    async def start_background(self) -> None:
        """Share one connection pool among Web API calls; renew leases and resume unfinished answers."""
        if self.client.session is None:
            # slack_sdk otherwise opens a connection (and a TLS handshake with Slack) per call.
            self.web_session = aiohttp.ClientSession()
            self.client.session = self.web_session
        self.conversations.start_housekeeping()

    async def shutdown(self) -> None:
        await self.conversations.shutdown()
        if self.web_session is not None:
            self.client.session = None
            await self.web_session.close()
            self.web_session = None


def no_access_rules() -> AccessRules:
    return AccessRules()


def build_slack_app(
    *,
    settings: Settings,
    queue: RequestQueue,
    prompts: LivePromptLibrary,
    pacer: ChannelPacer | None = None,
    access: Callable[[], AccessRules] = no_access_rules,
    on_enqueued: EnqueueObserver | None = None,
) -> SlackApp:
    """The Slack app with every listener registered; the caller picks the transport.

    ```python
    app = build_slack_app(settings=settings, queue=queue, prompts=prompts, access=lambda: rules)
    await app.start_background()
    await AsyncSocketModeHandler(app, app_token).start_async()
    ```
    """
    settings.require("slack_bot_token")
    assert settings.slack_bot_token is not None
    client = AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=str(settings.slack_api_url),
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(),
            AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
            AsyncServerErrorRetryHandler(),
        ],
    )
    secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
    app = SlackApp(client=client, signing_secret=secret, request_verification_enabled=secret is not None)
    app.adapter = SlackAdapter(client=client, settings=settings, redis=queue.redis)
    app.conversations = Conversations(
        adapter=app.adapter,
        settings=settings,
        queue=queue,
        prompts=prompts,
        access=access,
        pacer=pacer,
        on_enqueued=on_enqueued,
    )
    controls = Controls(
        client=client,
        queue=queue,
        feedback=FeedbackStore(queue.redis, retention_seconds=settings.retention_seconds),
        access=access,
    )
    _listen_for_questions(app, prompts)
    _listen_for_buttons(app, controls)
    _drop_other_events(app)
    return app


def _listen_for_questions(app: SlackApp, prompts: LivePromptLibrary) -> None:
    adapter, conversations = app.adapter, app.conversations

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], body: dict[str, Any], context: Any) -> None:
        received_at = time.perf_counter()
        adapter.bot_user_id = context.bot_user_id
        asked = from_mention(event, body, context.bot_user_id)
        if asked is not None:
            conversations.receive(*adapter.question(asked, received_at=received_at))

    @app.event("message")
    async def on_message(event: dict[str, Any], body: dict[str, Any], context: Any) -> None:
        received_at = time.perf_counter()
        adapter.bot_user_id = context.bot_user_id
        asked = from_message(event, body, context.bot_user_id)
        # `slack.thread_follow_ups` in routing.yaml, read per message so an edit applies at once.
        if asked is not None and (asked.explicit or prompts.current().routing.slack.thread_follow_ups):
            conversations.receive(*adapter.question(asked, received_at=received_at))


def _listen_for_buttons(app: AsyncApp, controls: Controls) -> None:
    @app.action(STOP_ACTION)
    async def on_stop(ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        await controls.stop(body, action)

    @app.action(re.compile(f"^({FEEDBACK_GOOD_ACTION}|{FEEDBACK_BAD_ACTION})$"))
    async def on_rating(ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        await controls.rate(body, action)

    @app.event("assistant_thread_started")
    async def on_assistant_thread(event: dict[str, Any]) -> None:
        await controls.welcome(event)

    @app.event("assistant_thread_context_changed")
    async def on_assistant_context(event: dict[str, Any]) -> None:
        """The user looks at another channel; answers do not depend on it."""


def _drop_other_events(app: AsyncApp) -> None:
    """Registered last: an event no listener above takes is dropped with one line (bolt would log a
    multi-line suggestion for each)."""

    @app.event(re.compile(".*"))
    async def on_other_event(body: dict[str, Any]) -> None:
        log.info("slack event not handled, dropped", event_id=slack_id(body.get("event_id")))


async def run_slack(settings: Settings) -> None:
    """`brandbot slack`: serve Slack (Socket Mode or HTTP, per settings) until interrupted."""
    settings.require("slack_bot_token")
    http = settings.slack_mode == SlackMode.HTTP
    settings.require("slack_signing_secret" if http else "slack_app_token")
    queue = RequestQueue.from_settings(settings)
    prompts = LivePromptLibrary(settings.prompts_dir)
    prompts.start_watching()
    # Read on every question, so an edit to routing.yaml's `slack.access` applies without a restart.
    app = build_slack_app(
        settings=settings, queue=queue, prompts=prompts, access=lambda: prompts.current().routing.slack.access
    )
    log.info("slack front-end starting", mode=str(settings.slack_mode), api=str(settings.slack_api_url))
    readiness = Readiness(redis_client=probe_client(settings))
    readiness.add("slack connected", lambda: app.connected())
    ops = serve_ops(settings, registry=app.conversations.metrics.registry, readiness=readiness)
    await app.start_background()
    freeze_startup_heap()
    try:
        await serve_until_signalled(_serve(app, settings))
    finally:
        if ops is not None:
            await asyncio.to_thread(ops.close)  # waits for its serving loop to notice
        await app.shutdown()
        prompts.stop_watching()
        await queue.close()
        log.info("slack front-end stopped")


async def _serve(app: SlackApp, settings: Settings) -> None:
    """Take events until cancelled, over the configured transport."""
    if settings.slack_mode == SlackMode.HTTP:
        runner = await serve_http(
            app, host=settings.slack_http_host, port=settings.slack_http_port, path=settings.slack_http_path
        )
        app.connected = lambda: True  # listening: Slack's requests can reach it
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
        return
    assert settings.slack_app_token is not None
    token = settings.slack_app_token.get_secret_value()
    handlers = [AsyncSocketModeHandler(app, token) for _ in range(settings.slack_socket_connections)]

    def connected() -> bool:
        return any(_open(handler.client) for handler in handlers)

    app.connected = connected
    try:
        for handler in handlers:
            await handler.connect_async()
        await asyncio.Event().wait()
    finally:
        for handler in handlers:
            await handler.close_async()


def _open(client: Any) -> bool:
    session = client.current_session
    return not client.closed and session is not None and not session.closed
