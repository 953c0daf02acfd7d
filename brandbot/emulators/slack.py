"""A local Slack for tests: the Web API over HTTP and Socket Mode over a websocket, on 127.0.0.1.

The real clients talk to it unchanged: ``AsyncWebClient(token, base_url=emulator.api_url)`` for the Web API,
and slack_bolt's ``AsyncSocketModeHandler`` (slack_sdk's aiohttp ``SocketModeClient``) for Socket Mode, since
``apps.connections.open`` hands out a ``ws://`` URL of this server. Tests drive it with ``send_event`` /
``send_interactive``, then assert on ``calls``, ``acks`` and the message store (``messages_in``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

TEXT_LIMIT = 40_000  # chat.postMessage `text`
MARKDOWN_LIMIT = 12_000  # `markdown_text`, per call (also per chat.appendStream chunk)
JSON_FIELDS = ("blocks", "attachments", "metadata", "chunks", "prompts")  # JSON-encoded when sent as a form
Params = dict[str, Any]


class SlackError(Exception):
    """Raised inside a Web API handler: answered as ``{"ok": false, "error": error}``."""

    def __init__(self, error: str, status: int = 200, headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.error, self.status, self.headers = error, status, headers or {}


@dataclass
class Call:
    method: str
    params: Params
    at: float  # time.monotonic() on arrival
    headers: dict[str, str]


@dataclass
class Ack:
    envelope_id: str
    at: float  # time.monotonic() on arrival
    payload: dict[str, Any] | None  # the optional response payload sent with the ack


@dataclass
class Message:
    channel: str
    ts: str
    text: str = ""
    user: str | None = None
    bot_id: str | None = None
    thread_ts: str | None = None
    blocks: list[Any] | None = None
    markdown_text: str | None = None
    metadata: dict[str, Any] | None = None
    recipient: str | None = None  # chat.postEphemeral's `user`
    streaming: bool = False  # between chat.startStream and chat.stopStream
    chunks: list[dict[str, Any]] = field(default_factory=list)  # non-markdown stream chunks (task updates..)
    reactions: dict[str, list[str]] = field(default_factory=dict)  # name -> users
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier {text, blocks, markdown_text}

    def snapshot(self) -> dict[str, Any]:
        return {"text": self.text, "blocks": self.blocks, "markdown_text": self.markdown_text}


def ts_key(ts: str) -> int:
    """A message ts as an integer of microseconds, for ordering."""
    seconds, _, fraction = ts.partition(".")
    return int(seconds) * 1_000_000 + int((fraction + "000000")[:6])


class SlackEmulator:
    def __init__(
        self,
        *,
        team_id: str = "T0001",
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        app_token: str = "xapp-test",
        bot_token: str = "xoxb-test",
        app_id: str = "A0001",
        scopes: str = "app_mentions:read,channels:history,chat:write,im:history,reactions:write,users:read",
    ) -> None:
        self.team_id, self.bot_user_id, self.bot_id, self.app_id = team_id, bot_user_id, bot_id, app_id
        self.app_token, self.bot_token, self.scopes = app_token, bot_token, scopes
        self.api_url = ""
        self.calls: dict[str, list[Call]] = {}
        self.acks: dict[str, Ack] = {}
        self.envelopes: list[dict[str, Any]] = []  # everything sent down the sockets, in order
        self.ephemerals: list[Message] = []
        self.deleted: list[Message] = []
        self.users: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, dict[str, Any]] = {}  # conversations.info overrides per channel id
        self.assistant_status: dict[tuple[str, str], str] = {}  # (channel_id, thread_ts) -> status
        self.assistant_titles: dict[tuple[str, str], str] = {}
        self.suggested_prompts: dict[tuple[str, str], list[Any]] = {}
        self.connections_total = 0  # websocket connections ever accepted (each got a hello)
        self.latency: dict[str, float] = {}  # seconds a Web API method takes to answer (a slow Slack)
        self.held: dict[str, asyncio.Event] = {}  # a Web API method answers once its event is set
        # A Web API method does its work, then answers once its event is set (an answer lost in a crash).
        self.answer_held: dict[str, asyncio.Event] = {}
        # Slack sends each envelope down one of an app's connections; False: down every one (replicas that
        # all hear every event, the worst case for de-duplication).
        self.spread_envelopes = False
        self.envelopes_per_connection: dict[int, int] = {}  # connection number -> envelopes sent down it
        self._messages: dict[tuple[str, str], Message] = {}
        self._failures: dict[str, list[SlackError]] = {}
        self._sockets: dict[web.WebSocketResponse, web.Request] = {}
        self._numbers: dict[web.WebSocketResponse, int] = {}  # each connection's number, from 1
        self._tickets: set[str] = set()
        self._last_ts = 1_700_000_000_000_000
        self._event_seq = 0
        self._port = 0
        self._runner: web.AppRunner | None = None
        self.add_user(bot_user_id, "bot", is_bot=True)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        self.api_url = f"http://127.0.0.1:{self._port}/api/"

    async def stop(self) -> None:
        await self.drop_connections(abort=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SlackEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ inspection and setup

    def calls_to(self, method: str) -> list[Call]:
        return list(self.calls.get(method, []))

    def messages_in(self, channel: str, thread_ts: str | None = None) -> list[Message]:
        """Current messages of a channel by ts: all of them, or one thread's parent and replies."""
        found = [
            m
            for (ch, _), m in self._messages.items()
            if ch == channel and (thread_ts is None or thread_ts in (m.ts, m.thread_ts))
        ]
        return sorted(found, key=lambda m: ts_key(m.ts))

    def connected_clients(self) -> int:
        """Socket Mode connections open now."""
        return len(self._sockets)

    def all_messages(self) -> list[Message]:
        """Every current message of every channel, in no particular order."""
        return list(self._messages.values())

    def add_user(self, user_id: str, name: str, *, real_name: str = "", **extra: Any) -> dict[str, Any]:
        """Register a user for users.info (``extra`` keys go into the user object)."""
        real = real_name or name.title()
        self.users[user_id] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "real_name": real,
            "is_bot": False,
            "profile": {"display_name": name, "real_name": real},
            **extra,
        }
        return self.users[user_id]

    def add_user_message(
        self, *, channel: str, user: str, text: str, thread_ts: str | None = None, ts: str | None = None
    ) -> Message:
        """Pretend a human posted (no event is sent; see ``send_user_message``)."""
        if ts is not None:
            self._last_ts = max(self._last_ts, ts_key(ts))
        msg = Message(channel, ts or self._next_ts(), text=text, user=user, thread_ts=thread_ts)
        self._messages[(channel, msg.ts)] = msg
        return msg

    def fail_next(
        self,
        method: str,
        error: str,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` calls to ``method`` answer ``{"ok": false, "error": error}``."""
        self._failures.setdefault(method, []).extend(SlackError(error, status, headers) for _ in range(times))

    @property
    def open_connections(self) -> int:
        """Socket Mode connections open now."""
        return len(self._sockets)

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109
        what: str = "",
    ) -> None:
        """Poll ``predicate`` until true; on timeout fail with what was asked and a summary of the state."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                counts = {m: len(c) for m, c in self.calls.items()}
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what or predicate}; "
                    f"calls: {counts}; open sockets: {len(self._sockets)}; acks: {len(self.acks)}"
                )
            await asyncio.sleep(0.01)

    async def wait_for_client(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until a Socket Mode client is connected (and has been sent its hello)."""
        await self.wait_until(lambda: bool(self._sockets), timeout, "a socket mode client to connect")

    async def wait_for_ack(self, envelope_id: str, timeout: float = 5.0) -> float:  # noqa: ASYNC109
        await self.wait_until(lambda: envelope_id in self.acks, timeout, f"the ack of envelope {envelope_id}")
        return self.acks[envelope_id].at

    # ------------------------------------------------------------------ socket mode

    def build_event_payload(self, event: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
        """The ``event_callback`` body Slack sends for an event (over Socket Mode or HTTP)."""
        self._event_seq += 1
        event = {"event_ts": event.get("ts") or self._next_ts(), **event}
        return {
            "token": "verification-token",
            "team_id": self.team_id,
            "api_app_id": self.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{self._event_seq:08d}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }

    async def send_envelope(
        self,
        type_: str,
        payload: dict[str, Any],
        *,
        envelope_id: str | None = None,
        accepts_response_payload: bool = False,
        **extra: Any,
    ) -> str:
        """Send one envelope to every connected client (waiting for one first); returns its envelope_id."""
        await self.wait_for_client()
        envelope = {
            "envelope_id": envelope_id or str(uuid.uuid4()),
            "payload": payload,
            "type": type_,
            "accepts_response_payload": accepts_response_payload,
            **extra,
        }
        self.envelopes.append(envelope)
        if self.spread_envelopes:
            await self._send_to_one(envelope)
        else:
            await self._broadcast(envelope)
        return str(envelope["envelope_id"])

    async def send_event(
        self,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
        envelope_id: str | None = None,
    ) -> str:
        payload = self.build_event_payload(event, event_id=event_id)
        return await self.send_envelope(
            "events_api",
            payload,
            envelope_id=envelope_id,
            retry_attempt=retry_attempt,
            retry_reason=retry_reason,
        )

    async def send_user_message(
        self,
        *,
        channel: str,
        user: str,
        text: str,
        thread_ts: str | None = None,
        event_type: str = "message",
        channel_type: str = "channel",
    ) -> tuple[Message, str]:
        """A human posts (stored, so conversations.replies sees it) and the app gets the event."""
        msg = self.add_user_message(channel=channel, user=user, text=text, thread_ts=thread_ts)
        event: dict[str, Any] = {"type": event_type, "user": user, "text": text, "channel": channel}
        event |= {"ts": msg.ts, "team": self.team_id, "event_ts": msg.ts}
        if event_type == "message":
            event["channel_type"] = channel_type
        if thread_ts:
            event["thread_ts"] = thread_ts
        return msg, await self.send_event(event)

    async def send_interactive(self, payload: dict[str, Any]) -> str:
        base = {"team": {"id": self.team_id, "domain": "emulated"}, "api_app_id": self.app_id, "token": "vt"}
        payload = {**base, "is_enterprise_install": False, **payload}
        accepts = payload.get("type") in ("view_submission", "block_suggestion")
        return await self.send_envelope("interactive", payload, accepts_response_payload=accepts)

    async def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Slack's polite ``disconnect`` message: the client opens a new connection itself."""
        await self._broadcast({"type": "disconnect", "reason": reason, "debug_info": {"host": "emulator"}})

    async def drop_connections(self, *, abort: bool = False) -> None:
        """Close every socket without warning (close frame, or with ``abort`` a TCP reset)."""
        sockets, self._sockets = self._sockets, {}
        for ws, request in sockets.items():
            if abort and request.transport is not None:
                request.transport.abort()
            else:
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)

    async def _send_to_one(self, frame: dict[str, Any]) -> None:
        """Down the next connection in turn (as Slack spreads events over an app's connections)."""
        sockets = list(self._sockets)
        ws = sockets[len(self.envelopes) % len(sockets)]
        try:
            await ws.send_str(json.dumps(frame))
        except ConnectionError:
            self._sockets.pop(ws, None)
            return
        number = self._numbers[ws]
        self.envelopes_per_connection[number] = self.envelopes_per_connection.get(number, 0) + 1

    async def _broadcast(self, frame: dict[str, Any]) -> None:
        for ws in list(self._sockets):
            try:
                await ws.send_str(json.dumps(frame))
            except ConnectionError:
                self._sockets.pop(ws, None)

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("ticket") not in self._tickets:
            raise web.HTTPUnauthorized(text="unknown ticket")
        ws = web.WebSocketResponse(timeout=1.0)
        await ws.prepare(request)
        self.connections_total += 1
        hello = {
            "type": "hello",
            "num_connections": len(self._sockets) + 1,
            "debug_info": {"host": "emulator", "build_number": 1, "approximate_connection_time": 18060},
            "connection_info": {"app_id": self.app_id},
        }
        await ws.send_str(json.dumps(hello))
        self._sockets[ws] = request
        self._numbers[ws] = self.connections_total
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    if isinstance(data, dict) and data.get("envelope_id"):
                        eid = str(data["envelope_id"])
                        self.acks.setdefault(eid, Ack(eid, time.monotonic(), data.get("payload")))
        finally:
            self._sockets.pop(ws, None)
        return ws

    # ------------------------------------------------------------------ HTTP Events API

    async def post_http_event(
        self,
        url: str,
        body: dict[str, Any] | str,
        *,
        signing_secret: str,
        timestamp: int | None = None,
        bad_signature: bool = False,
        retry_num: int | None = None,
    ) -> tuple[int, str]:
        """POST a body to an app as Slack would, signed with v0=HMAC-SHA256("v0:{ts}:{body}").

        A dict is sent as JSON (Events API); a str is sent as-is as a form (e.g. ``payload=...``).
        """
        raw = json.dumps(body) if isinstance(body, dict) else body
        ts = str(int(time.time()) if timestamp is None else timestamp)
        digest = hmac.new(signing_secret.encode(), f"v0:{ts}:{raw}".encode(), hashlib.sha256).hexdigest()
        if bad_signature:
            digest = digest[::-1]
        form = "application/x-www-form-urlencoded"
        headers = {
            "Content-Type": "application/json" if isinstance(body, dict) else form,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": f"v0={digest}",
        }
        if retry_num is not None:
            headers |= {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"}
        async with aiohttp.ClientSession() as session, session.post(url, data=raw, headers=headers) as resp:
            return resp.status, await resp.text()

    # ------------------------------------------------------------------ Web API

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: Params = dict(request.query)
        try:
            if request.method == "POST" and request.can_read_body:
                if request.content_type == "application/json":
                    params.update(await request.json())
                else:
                    params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        except ValueError:
            return web.json_response({"ok": False, "error": "invalid_json"})
        for key in JSON_FIELDS:
            if isinstance(params.get(key), str):
                with contextlib.suppress(ValueError):
                    params[key] = json.loads(params[key])
        call = Call(method, params, time.monotonic(), dict(request.headers))
        self.calls.setdefault(method, []).append(call)
        if self.latency.get(method):
            await asyncio.sleep(self.latency[method])
        if method in self.held:
            await self.held[method].wait()
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else params.get("token")
        try:
            if self._failures.get(method):
                raise self._failures[method].pop(0)
            if not token:
                raise SlackError("not_authed")
            if token != (self.app_token if method == "apps.connections.open" else self.bot_token):
                raise SlackError("invalid_auth")
            handler: Callable[[Params], Params] | None = getattr(
                self, "_web_" + method.replace(".", "_"), None
            )
            if handler is None:
                raise SlackError("unknown_method")
            extra_headers = {"x-oauth-scopes": self.scopes} if method == "auth.test" else {}
            result = handler(params)
            if method in self.answer_held:
                await self.answer_held[method].wait()
            return web.json_response({"ok": True, **result}, headers=extra_headers)
        except SlackError as e:
            return web.json_response({"ok": False, "error": e.error}, status=e.status, headers=e.headers)

    def _next_ts(self) -> str:
        self._last_ts += 100
        return f"{self._last_ts // 1_000_000}.{self._last_ts % 1_000_000:06d}"

    @staticmethod
    def _need(p: Params, name: str, error: str = "invalid_arguments") -> str:
        value = p.get(name)
        if not value:
            raise SlackError(error)
        return str(value)

    def _find(self, p: Params, ts_param: str = "ts", *, own: str = "") -> Message:
        msg = self._messages.get((self._need(p, "channel", "channel_not_found"), str(p.get(ts_param))))
        if msg is None:
            raise SlackError("message_not_found")
        if own and msg.user != self.bot_user_id:
            raise SlackError(own)
        return msg

    @staticmethod
    def _content(p: Params, *, required: bool) -> Params:
        """text / blocks / markdown_text of a post or update, with Slack's checks."""
        text, blocks, markdown = p.get("text") or "", p.get("blocks") or None, p.get("markdown_text")
        if markdown and (text or blocks):
            raise SlackError("markdown_text_conflict")
        if len(text) > TEXT_LIMIT or len(markdown or "") > MARKDOWN_LIMIT:
            raise SlackError("msg_too_long")
        if required and not (text or blocks or markdown or p.get("attachments")):
            raise SlackError("no_text")
        return {"text": str(text), "blocks": blocks, "markdown_text": markdown or None}

    def render(self, msg: Message) -> dict[str, Any]:
        """A message as the Web API returns it."""
        out: dict[str, Any] = {"type": "message", "ts": msg.ts, "text": msg.text or msg.markdown_text or ""}
        out |= {"team": self.team_id}
        if msg.user:
            out["user"] = msg.user
        if msg.bot_id:
            out |= {"bot_id": msg.bot_id, "app_id": self.app_id}
        if msg.blocks is not None:
            out["blocks"] = msg.blocks
        if msg.metadata:
            out["metadata"] = msg.metadata
        if msg.thread_ts:
            out["thread_ts"] = msg.thread_ts
        elif replies := [m for m in self.messages_in(msg.channel, msg.ts) if m.thread_ts == msg.ts]:
            out |= {"thread_ts": msg.ts, "reply_count": len(replies), "latest_reply": replies[-1].ts}
        if msg.reactions:
            out["reactions"] = [{"name": n, "users": u, "count": len(u)} for n, u in msg.reactions.items()]
        return out

    def _web_auth_test(self, p: Params) -> Params:
        return {
            "url": "https://emulated.slack.com/",
            "team": "Emulated Team",
            "user": "bot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _web_apps_connections_open(self, p: Params) -> Params:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"url": f"ws://127.0.0.1:{self._port}/socket?ticket={ticket}&app_id={self.app_id}"}

    def _bot_message(self, p: Params, **fields: Any) -> Message:
        channel = self._need(p, "channel", "channel_not_found")
        msg = Message(channel, self._next_ts(), user=self.bot_user_id, bot_id=self.bot_id, **fields)
        msg.thread_ts, msg.metadata = p.get("thread_ts") or None, p.get("metadata")
        return msg

    def _web_chat_postMessage(self, p: Params) -> Params:
        msg = self._bot_message(p, **self._content(p, required=True))
        self._messages[(msg.channel, msg.ts)] = msg
        return {"channel": msg.channel, "ts": msg.ts, "message": self.render(msg)}

    def _web_chat_postEphemeral(self, p: Params) -> Params:
        recipient = self._need(p, "user", "user_not_found")
        msg = self._bot_message(p, recipient=recipient, **self._content(p, required=True))
        self.ephemerals.append(msg)
        return {"message_ts": msg.ts}

    def _web_chat_update(self, p: Params) -> Params:
        """Replaces the fields given; markdown_text replaces the whole content (and text/blocks drop it)."""
        msg = self._find(p, own="cant_update_message")
        new = self._content(p, required=False)
        msg.history.append(msg.snapshot())
        if new["markdown_text"]:
            msg.text, msg.blocks, msg.markdown_text = "", None, new["markdown_text"]
        else:
            msg.text = new["text"] if "text" in p else msg.text
            msg.blocks = new["blocks"] if "blocks" in p else msg.blocks
            msg.markdown_text = None
        if "metadata" in p:
            msg.metadata = p["metadata"]
        return {"channel": msg.channel, "ts": msg.ts, "text": msg.text, "message": self.render(msg)}

    def _web_chat_delete(self, p: Params) -> Params:
        msg = self._find(p, own="cant_delete_message")
        self.deleted.append(self._messages.pop((msg.channel, msg.ts)))
        return {"channel": msg.channel, "ts": msg.ts}

    def _web_chat_startStream(self, p: Params) -> Params:
        msg = self._bot_message(p, streaming=True, markdown_text="", recipient=p.get("recipient_user_id"))
        msg.thread_ts = self._need(p, "thread_ts")
        self._stream(msg, p)
        msg.history.clear()
        self._messages[(msg.channel, msg.ts)] = msg
        return {"channel": msg.channel, "ts": msg.ts}

    def _web_chat_appendStream(self, p: Params) -> Params:
        msg = self._find(p, own="message_not_owned_by_app")
        self._stream(msg, p)
        return {"channel": msg.channel, "ts": msg.ts}

    def _web_chat_stopStream(self, p: Params) -> Params:
        msg = self._find(p, own="message_not_owned_by_app")
        self._stream(msg, p)
        if p.get("blocks"):
            msg.blocks = p["blocks"]
        msg.metadata = p.get("metadata") or msg.metadata
        msg.streaming = False
        return {"channel": msg.channel, "ts": msg.ts, "message": self.render(msg)}

    @staticmethod
    def _stream(msg: Message, p: Params) -> None:
        if not msg.streaming:
            raise SlackError("message_not_in_streaming_state")
        text = p.get("markdown_text") or ""
        if len(text) > MARKDOWN_LIMIT:
            raise SlackError("msg_too_long")
        chunks = p.get("chunks") or []
        text += "".join(c.get("text", "") for c in chunks if c.get("type") == "markdown_text")
        others = [c for c in chunks if c.get("type") != "markdown_text"]
        if text or others:
            msg.history.append(msg.snapshot())
            msg.markdown_text = (msg.markdown_text or "") + text
            msg.chunks.extend(others)

    def _web_conversations_replies(self, p: Params) -> Params:
        root = self._messages.get((self._need(p, "channel", "channel_not_found"), str(p.get("ts"))))
        if root is None:
            raise SlackError("thread_not_found")
        thread = self.messages_in(root.channel, root.thread_ts or root.ts)
        limit = max(1, min(int(p.get("limit") or 1000), 1000))
        start = 0
        if cursor := p.get("cursor"):
            try:
                after = ts_key(base64.urlsafe_b64decode(str(cursor)).decode().removeprefix("next_ts:"))
            except ValueError as e:
                raise SlackError("invalid_cursor") from e
            start = next((i for i, m in enumerate(thread) if ts_key(m.ts) >= after), len(thread))
        page, rest = thread[start : start + limit], thread[start + limit :]
        next_cursor = base64.urlsafe_b64encode(f"next_ts:{rest[0].ts}".encode()).decode() if rest else ""
        return {
            "messages": [self.render(m) for m in page],
            "has_more": bool(rest),
            "response_metadata": {"next_cursor": next_cursor},
        }

    def _web_conversations_info(self, p: Params) -> Params:
        cid = self._need(p, "channel", "channel_not_found")
        im = cid.startswith("D")
        base: dict[str, Any] = {
            "id": cid,
            "name": "general",
            "is_channel": not im,
            "is_im": im,
            "is_private": im,
        }
        base |= {"is_member": True, "created": 1_700_000_000}
        return {"channel": {**base, **self.channels.get(cid, {})}}

    def _web_users_info(self, p: Params) -> Params:
        if p.get("user") not in self.users:
            raise SlackError("user_not_found")
        return {"user": self.users[str(p["user"])]}

    def _web_bots_info(self, p: Params) -> Params:
        if p.get("bot") not in (None, self.bot_id):
            raise SlackError("bot_not_found")
        bot = {"id": self.bot_id, "deleted": False, "name": "bot", "updated": 1_700_000_000}
        return {"bot": {**bot, "app_id": self.app_id, "user_id": self.bot_user_id, "icons": {}}}

    def _web_reactions_add(self, p: Params) -> Params:
        msg = self._find(p, "timestamp")
        users = msg.reactions.setdefault(self._need(p, "name", "invalid_name"), [])
        if self.bot_user_id in users:
            raise SlackError("already_reacted")
        users.append(self.bot_user_id)
        return {}

    def _thread_key(self, p: Params) -> tuple[str, str]:
        return self._need(p, "channel_id", "channel_not_found"), self._need(p, "thread_ts")

    def _web_assistant_threads_setStatus(self, p: Params) -> Params:
        self.assistant_status[self._thread_key(p)] = str(p.get("status", ""))
        return {}

    def _web_assistant_threads_setTitle(self, p: Params) -> Params:
        self.assistant_titles[self._thread_key(p)] = self._need(p, "title")
        return {}

    def _web_assistant_threads_setSuggestedPrompts(self, p: Params) -> Params:
        self.suggested_prompts[self._thread_key(p)] = list(p.get("prompts") or [])
        return {}
