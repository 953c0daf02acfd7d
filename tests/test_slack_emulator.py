"""The Slack emulator against the real slack_sdk / slack_bolt clients (no mocks on the client side)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from brandbot.emulators.slack import SlackEmulator

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def slack() -> AsyncIterator[SlackEmulator]:
    emulator = SlackEmulator()
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


def web_client(slack: SlackEmulator, **kwargs: Any) -> AsyncWebClient:
    return AsyncWebClient(token=slack.bot_token, base_url=slack.api_url, **kwargs)


@asynccontextmanager
async def on_socket_mode(slack: SlackEmulator, app: AsyncApp) -> AsyncIterator[None]:
    handler = AsyncSocketModeHandler(app, slack.app_token, ping_interval=1)
    await handler.connect_async()
    try:
        await slack.wait_for_client()
        yield
    finally:
        await handler.close_async()


@asynccontextmanager
async def socket_mode_app(slack: SlackEmulator) -> AsyncIterator[list[str]]:
    """A Bolt app on Socket Mode that answers every mention in its thread; yields the bot user ids it saw."""
    app = AsyncApp(client=web_client(slack))
    seen: list[str] = []

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Any, context: Any) -> None:
        seen.append(context.bot_user_id)
        await say(text=f"hi <@{event['user']}>", thread_ts=event["ts"])

    async with on_socket_mode(slack, app):
        yield seen


async def mention_and_get_reply(slack: SlackEmulator, text: str) -> None:
    parent, envelope_id = await slack.send_user_message(
        channel="C1", user="U1", text=text, event_type="app_mention"
    )
    assert await slack.wait_for_ack(envelope_id) <= time.monotonic()
    await slack.wait_until(lambda: len(slack.messages_in("C1", parent.ts)) == 2, what="the bot's reply")
    reply = slack.messages_in("C1", parent.ts)[1]
    assert (reply.text, reply.user, reply.bot_id, reply.thread_ts) == ("hi <@U1>", "UBOT", "BBOT", parent.ts)


async def test_bolt_socket_mode_app_gets_mention_acks_and_replies(slack: SlackEmulator) -> None:
    async with socket_mode_app(slack) as seen:
        await mention_and_get_reply(slack, "<@UBOT> hello")
    assert seen == ["UBOT"]  # Bolt learned its identity from auth.test
    assert len(slack.calls_to("auth.test")) == 1
    assert len(slack.calls_to("apps.connections.open")) == 1
    post = slack.calls_to("chat.postMessage")[0]
    assert post.headers["Authorization"] == "Bearer xoxb-test"
    assert post.params["channel"] == "C1"


@pytest.mark.parametrize("how", ["close", "abort", "disconnect_message"])
async def test_socket_mode_client_reconnects_and_keeps_receiving(slack: SlackEmulator, how: str) -> None:
    async with socket_mode_app(slack):
        await mention_and_get_reply(slack, "<@UBOT> before")
        if how == "disconnect_message":
            await slack.send_disconnect()
        else:
            await slack.drop_connections(abort=how == "abort")
        await slack.wait_until(lambda: slack.connections_total == 2, what="a second connection")
        assert len(slack.calls_to("apps.connections.open")) == 2  # a fresh URL for the new connection
        await mention_and_get_reply(slack, "<@UBOT> after")


async def test_block_action_button_is_acked_and_handled(slack: SlackEmulator) -> None:
    app = AsyncApp(client=web_client(slack))

    @app.action("approve")
    async def approve(ack: Any, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        who = body["user"]["id"]
        await client.chat_update(channel=body["channel"]["id"], ts=body["message"]["ts"], text=f"ok <@{who}>")

    button = {"type": "button", "action_id": "approve", "text": {"type": "plain_text", "text": "Approve"}}
    blocks = [{"type": "actions", "block_id": "b1", "elements": [button]}]
    posted = await web_client(slack).chat_postMessage(channel="C1", text="approve?", blocks=blocks)
    action = {**button, "block_id": "b1", "value": "yes", "action_ts": "1700000099.000001"}
    payload = {
        "type": "block_actions",
        "user": {"id": "U1", "name": "alice"},
        "channel": {"id": "C1", "name": "general"},
        "container": {"type": "message", "message_ts": posted["ts"], "channel_id": "C1"},
        "message": posted["message"],
        "actions": [action],
        "trigger_id": "trigger-1",
    }
    async with on_socket_mode(slack, app):
        envelope_id = await slack.send_interactive(payload)
        await slack.wait_for_ack(envelope_id)
        await slack.wait_until(lambda: slack.messages_in("C1")[0].text == "ok <@U1>", what="the update")
    [msg] = slack.messages_in("C1")
    assert msg.blocks == blocks  # chat.update without blocks keeps them, like Slack
    assert msg.history == [{"text": "approve?", "blocks": blocks, "markdown_text": None}]
    assert slack.envelopes[-1]["type"] == "interactive"


async def test_fail_next_ratelimited_is_a_429_slack_api_error(slack: SlackEmulator) -> None:
    client = web_client(slack)
    slack.fail_next("chat.postMessage", "ratelimited", status=429, headers={"Retry-After": "1"})
    with pytest.raises(SlackApiError) as caught:
        await client.chat_postMessage(channel="C1", text="hello")
    assert caught.value.response.status_code == 429
    assert caught.value.response["error"] == "ratelimited"
    assert caught.value.response.headers["Retry-After"] == "1"
    assert slack.messages_in("C1") == []

    # The failure was used up; and a client with slack_sdk's rate-limit handler waits Retry-After and retries.
    patient = web_client(slack, retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)])
    slack.fail_next("chat.postMessage", "ratelimited", status=429, headers={"Retry-After": "1"})
    await patient.chat_postMessage(channel="C1", text="hello")
    first, second = slack.calls_to("chat.postMessage")[1:]
    assert second.at - first.at >= 0.9
    assert [m.text for m in slack.messages_in("C1")] == ["hello"]


async def test_conversations_replies_paginates_with_cursor(slack: SlackEmulator) -> None:
    client = web_client(slack)
    parent = slack.add_user_message(channel="C1", user="U1", text="root")
    for i in range(3):
        slack.add_user_message(channel="C1", user="U2", text=f"r{i}", thread_ts=parent.ts)
    slack.add_user_message(channel="C1", user="U1", text="elsewhere")  # not in the thread
    await client.chat_postMessage(channel="C1", thread_ts=parent.ts, text="bot reply")

    pages = [
        [m["text"] for m in page["messages"]]
        async for page in await client.conversations_replies(channel="C1", ts=parent.ts, limit=2)
    ]
    assert pages == [["root", "r0"], ["r1", "r2"], ["bot reply"]]
    calls = slack.calls_to("conversations.replies")
    assert calls[0].params.get("cursor") is None and all(c.params["cursor"] for c in calls[1:])
    first = (await client.conversations_replies(channel="C1", ts=parent.ts))["messages"][0]
    assert (first["reply_count"], first["thread_ts"]) == (4, parent.ts)
    with pytest.raises(SlackApiError) as caught:
        await client.conversations_replies(channel="C1", ts="1.000001")
    assert caught.value.response["error"] == "thread_not_found"


async def test_post_http_event_is_signed_like_slack(slack: SlackEmulator) -> None:
    secret = "s3cret"
    verifier = SignatureVerifier(secret)
    app = AsyncApp(client=web_client(slack), signing_secret=secret)
    mentions: list[str] = []

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Any) -> None:
        mentions.append(event["text"])
        await say("got it")

    seen: list[bool] = []
    bolt = app.web_app()  # Bolt's own aiohttp adapter, which checks X-Slack-Signature

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        body, headers = await request.text(), request.headers
        signature, timestamp = headers["X-Slack-Signature"], headers["X-Slack-Request-Timestamp"]
        seen.append(verifier.is_valid(body, timestamp, signature))
        return await handler(request)

    bolt.middlewares.append(check)
    runner = web.AppRunner(bolt, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/slack/events"
    event = {"type": "app_mention", "user": "U1", "text": "<@UBOT> hi", "ts": "1700000001.000100"}
    body = slack.build_event_payload({**event, "channel": "C9"})
    try:
        status, _ = await slack.post_http_event(url, body, signing_secret=secret)
        assert status == 200
        assert (await slack.post_http_event(url, body, signing_secret=secret, bad_signature=True))[0] == 401
        stale = int(time.time()) - 600
        assert (await slack.post_http_event(url, body, signing_secret=secret, timestamp=stale))[0] == 401
        assert (await slack.post_http_event(url, body, signing_secret="wrong"))[0] == 401
        challenge = {"type": "url_verification", "token": "t", "challenge": "abc123"}
        status, text = await slack.post_http_event(url, challenge, signing_secret=secret, retry_num=1)
        assert (status, json.loads(text)) == (200, {"challenge": "abc123"})
        await slack.wait_until(lambda: bool(slack.messages_in("C9")), what="the HTTP app's reply")
    finally:
        await runner.cleanup()
    assert seen == [True, False, False, False, True]
    assert mentions == ["<@UBOT> hi"]
    assert [m.text for m in slack.messages_in("C9")] == ["got it"]


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
async def test_web_api_message_store_and_errors(slack: SlackEmulator) -> None:
    client = web_client(slack)

    async def error_of(call: Any) -> str:
        with pytest.raises(SlackApiError) as caught:
            await call
        return str(caught.value.response["error"])

    posted = await client.chat_postMessage(channel="C1", blocks=[{"type": "divider"}], text="fallback")
    ts = posted["ts"]
    await client.chat_update(channel="C1", ts=ts, markdown_text="**edited**")
    [msg] = slack.messages_in("C1")
    assert (msg.markdown_text, msg.text, msg.blocks) == ("**edited**", "", None)
    assert msg.history == [{"text": "fallback", "blocks": [{"type": "divider"}], "markdown_text": None}]
    later = await client.chat_postMessage(channel="C1", text="second")
    assert float(later["ts"]) > float(ts)

    assert await error_of(client.chat_postMessage(channel="C1", text="a", markdown_text="b")) == (
        "markdown_text_conflict"
    )
    assert await error_of(client.chat_postMessage(channel="C1", text="x" * 40_001)) == "msg_too_long"
    assert await error_of(client.chat_postMessage(channel="C1", markdown_text="x" * 12_001)) == "msg_too_long"
    assert await error_of(client.chat_postMessage(channel="C1")) == "no_text"
    assert await error_of(client.chat_update(channel="C1", ts="1.000002", text="x")) == "message_not_found"
    assert await error_of(client.api_call("pins.add", params={"channel": "C1"})) == "unknown_method"
    stranger = AsyncWebClient(token="xoxb-bad", base_url=slack.api_url)
    assert await error_of(stranger.auth_test()) == "invalid_auth"
    assert await error_of(client.apps_connections_open(app_token=slack.bot_token)) == "invalid_auth"
    assert len(slack.calls_to("pins.add")) == 1

    await client.chat_delete(channel="C1", ts=ts)
    assert [m.text for m in slack.messages_in("C1")] == ["second"]
    await client.chat_postEphemeral(channel="C1", user="U1", text="psst")
    assert [(m.recipient, m.text) for m in slack.ephemerals] == [("U1", "psst")]

    start = await client.chat_startStream(channel="C1", thread_ts=later["ts"], markdown_text="Hel")
    await client.chat_appendStream(channel="C1", ts=start["ts"], markdown_text="lo")
    divider = [{"type": "divider"}]
    await client.chat_stopStream(channel="C1", ts=start["ts"], markdown_text="!", blocks=divider)
    streamed = slack.messages_in("C1", later["ts"])[-1]
    assert (streamed.markdown_text, streamed.streaming, streamed.thread_ts) == ("Hello!", False, later["ts"])
    assert await error_of(client.chat_appendStream(channel="C1", ts=start["ts"], markdown_text="more")) == (
        "message_not_in_streaming_state"
    )

    slack.add_user("U1", "alice", real_name="Alice A")
    user = (await client.users_info(user="U1"))["user"]
    assert (user["name"], user["profile"]["real_name"]) == ("alice", "Alice A")
    assert await error_of(client.users_info(user="U404")) == "user_not_found"
    slack.channels["C2"] = {"name": "random"}
    assert (await client.conversations_info(channel="C1"))["channel"]["name"] == "general"
    assert (await client.conversations_info(channel="C2"))["channel"]["name"] == "random"
    await client.assistant_threads_setStatus(channel_id="D1", thread_ts="1.000001", status="is thinking...")
    assert slack.assistant_status == {("D1", "1.000001"): "is thinking..."}
    await client.reactions_add(channel="C1", timestamp=later["ts"], name="eyes")
    assert slack.messages_in("C1")[0].reactions == {"eyes": ["UBOT"]}
