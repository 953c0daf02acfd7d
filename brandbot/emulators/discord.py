"""A local Discord (REST + gateway) on 127.0.0.1 that the real discord.py client connects to.

Point discord.py at it, and restore both afterwards::

    discord.http.Route.BASE = emulator.api_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(emulator.gateway_url)

It behaves like Discord where the client can tell: JSON answers with ``Content-Type: application/json``
exactly, error bodies ``{"code", "message"[, "errors"]}``, a ``Via`` header (without one discord.py takes
a 429 for a Cloudflare ban), zlib-stream gateway frames when asked for, sequence numbers, RESUME with replay
of missed dispatches, op 9 for dead sessions, the GUILD_MEMBERS / MESSAGE_CONTENT intents, the 3 s
interaction deadline, message components (buttons, validated as Discord does) and clicks on them
(``click``: a MESSAGE_COMPONENT interaction whose callback may update the message or answer it), and
MESSAGE_CREATE/UPDATE/DELETE echoes of the bot's own messages. Stored messages
carry two emulator-only keys, never sent to the client: ``allowed_mentions_log`` (the ``allowed_mentions``
of the send and of every edit) and ``edit_history`` (earlier versions).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import re
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

JSON = dict[str, Any]
Handler = Callable[["Req", re.Match[str]], Awaitable[web.Response]]
DISCORD_EPOCH_MS = 1420070400000
GUILD_MEMBERS, GUILD_MESSAGES, DIRECT_MESSAGES, MESSAGE_CONTENT = 1 << 1, 1 << 9, 1 << 12, 1 << 15
GUILD_PRESENCES = 1 << 8
PRIVILEGED_INTENTS = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT
ADMINISTRATOR, ALL_PERMISSIONS = 1 << 3, (1 << 53) - 1
# ADD_REACTIONS, VIEW_CHANNEL, SEND_MESSAGES, EMBED_LINKS, ATTACH_FILES, READ_HISTORY, USE_APP_COMMANDS
EVERYONE_PERMISSIONS = (1 << 6) | (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 31)
EPHEMERAL, LOADING = 1 << 6, 1 << 7
PRIVATE_KEYS = ("allowed_mentions_log", "edit_history")
_ids = itertools.count()

# fmt: off
GUILD_DEFAULTS: JSON = {
    "icon": None, "splash": None, "banner": None, "description": None, "features": [],
    "preferred_locale": "en-US", "verification_level": 0, "mfa_level": 0, "nsfw_level": 0, "premium_tier": 0,
    "explicit_content_filter": 0,
    "default_message_notifications": 0, "afk_timeout": 300, "afk_channel_id": None, "system_channel_id": None,
    "system_channel_flags": 0, "unavailable": False, "large": False, "emojis": [], "stickers": [],
    "threads": [], "presences": [], "voice_states": [], "stage_instances": [], "guild_scheduled_events": [],
    "soundboard_sounds": [],
}
CHANNEL_DEFAULTS: JSON = {
    "type": 0, "permission_overwrites": [], "parent_id": None, "topic": None, "nsfw": False,
    "last_message_id": None, "rate_limit_per_user": 0, "flags": 0,
}
ROLE_DEFAULTS: JSON = {"color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}
MEMBER_DEFAULTS: JSON = {"nick": None, "avatar": None, "deaf": False, "mute": False, "flags": 0}
# fmt: on


def snowflake() -> int:
    return ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(_ids) & 0x3FFFFF)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def make_user(user_id: int, username: str, *, bot: bool = False) -> JSON:
    """A user payload as Discord sends it."""
    return {"id": str(user_id), "username": username, "global_name": None if bot else username.title(),
            "discriminator": "0", "avatar": None, "bot": bot, "public_flags": 0}  # fmt: skip


def public(message: JSON) -> JSON:
    """A stored message without the emulator-only keys: what the client is sent."""
    return {k: v for k, v in message.items() if k not in PRIVATE_KEYS}


@dataclass
class Req:
    method: str
    path: str  # relative to api_url, no query string
    query: dict[str, str]
    json: Any  # the decoded body; for multipart bodies the decoded ``payload_json``
    headers: dict[str, str]
    files: dict[str, bytes]  # multipart uploads by filename
    at: float  # time.monotonic()


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str, errors: JSON | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, {"code": code, "message": message}
        if errors is not None:
            self.body["errors"] = errors

    @classmethod
    def form(cls, path: str, code: str, message: str) -> ApiError:
        """Discord's 50035 Invalid Form Body, e.g. ``form("content", "BASE_TYPE_MAX_LENGTH", ...)``."""
        errors: JSON = {"_errors": [{"code": code, "message": message}]}
        for key in reversed(path.split(".")):
            errors = {key: errors}
        return cls(400, 50035, "Invalid Form Body", errors)


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: JSON
    headers: dict[str, str]
    times: int


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    compressor: Any  # a zlib compressobj when the client asked for compress=zlib-stream
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    dropped: bool = False  # closed by drop_connection (not by the client)


@dataclass
class _Session:
    id: str
    intents: int
    shard: list[int] | None
    conn: _Conn | None
    seq: int = 0
    log: list[tuple[int, str]] = field(default_factory=list)  # sent dispatches, for replay on RESUME
    invalid: bool = False  # a RESUME gets op 9 (d=false)
    ended: bool = False  # the client closed it with 1000/1001


@dataclass
class _Interaction:
    payload: JSON
    created: float
    message: JSON | None = None  # the message whose component was clicked (type 3)
    responses: list[JSON] = field(default_factory=list)
    original: JSON | None = None
    followups: list[JSON] = field(default_factory=list)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    hdrs = {"Via": "1.1 google", **(headers or {})}
    if status == 204:
        return web.Response(status=204, headers=hdrs)
    hdrs["Content-Type"] = "application/json"  # discord.py compares it for equality: no charset
    return web.Response(status=status, body=json.dumps(body).encode(), headers=hdrs)


def _option_type(value: Any) -> int:
    """The option type of a Python value: BOOLEAN 5, INTEGER 4, NUMBER 10, else STRING 3."""
    return next((code for kind, code in ((bool, 5), (int, 4), (float, 10)) if isinstance(value, kind)), 3)


class DiscordEmulator:
    def __init__(
        self,
        *,
        application_id: int = 1100000000000000001,
        bot_user_id: int = 1100000000000000001,
        bot_name: str = "brandbot",
        token: str = "discord-test-token",
        heartbeat_interval_ms: int = 41250,
        interaction_ack_deadline: float = 3.0,
        compress: bool = True,
        privileged_intents: int = PRIVILEGED_INTENTS,
    ) -> None:
        self.application_id, self.token, self.compress = application_id, token, compress
        self.bot_user = make_user(bot_user_id, bot_name, bot=True)
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.interaction_ack_deadline = interaction_ack_deadline  # seconds to the first callback, as Discord
        self.privileged_intents = privileged_intents  # enabled in the developer portal; others close 4014
        self.port = 0
        self.requests: list[Req] = []
        self.gateway_log: list[JSON] = []  # every frame a client sent, heartbeats included
        self.connections: list[str] = []  # path + query of every gateway connection
        self.identify_count = self.resume_count = 0
        self.guilds: dict[int, JSON] = {}
        self.channels: dict[int, JSON] = {}
        self.users: dict[int, JSON] = {bot_user_id: self.bot_user}
        self.messages: dict[int, JSON] = {}
        self.commands: dict[int | None, list[JSON]] = {}  # guild id (None: global) -> registered commands
        self._interactions: dict[str, _Interaction] = {}
        self._failures: list[_Failure] = []
        self._slow_answers: list[tuple[str, re.Pattern[str], float]] = []
        self._sessions: list[_Session] = []
        self._conns: set[_Conn] = set()
        self._runner: web.AppRunner | None = None
        webhook_message = r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)/messages/(?P<mid>@original|\d+)"
        routes: list[tuple[str, str, Handler]] = [
            ("GET", r"/users/@me", self._get_me),
            ("POST", r"/users/@me/channels", self._create_dm),
            ("GET", r"/oauth2/applications/@me", self._get_application),
            ("GET", r"/gateway(?:/bot)?", self._get_gateway),
            ("GET PUT", r"/applications/(?P<app>\d+)(?:/guilds/(?P<guild>\d+))?/commands", self._commands),
            ("POST", r"/interactions/(?P<iid>\d+)/(?P<token>[^/]+)/callback", self._callback),
            ("POST", r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)", self._followup),
            ("GET PATCH DELETE", webhook_message, self._webhook_message),
            ("GET", r"/channels/(?P<cid>\d+)", self._get_channel),
            ("POST", r"/channels/(?P<cid>\d+)/typing", self._typing),
            ("GET POST", r"/channels/(?P<cid>\d+)/messages", self._channel_messages),
            ("GET PATCH DELETE", r"/channels/(?P<cid>\d+)/messages/(?P<mid>\d+)", self._channel_message),
        ]
        self._routes = [(methods.split(), re.compile(path), handler) for methods, path, handler in routes]

    # ---------------------------------------------------------------- lifecycle
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/resume-gateway"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/resume-gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for conn in list(self._conns):
            await conn.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---------------------------------------------------------------- state and assertions
    def add_guild(
        self,
        guild_id: int,
        *,
        name: str = "Acme",
        channels: list[JSON] | None = None,
        roles: list[JSON] | None = None,
        members: list[JSON] | None = None,
        owner_id: int | None = None,
    ) -> JSON:
        """Register a guild, sent in GUILD_CREATE to clients that identify afterwards.

        ``channels`` and ``roles`` may be partial (``{"id": 1, "name": "general"}``); ``members`` are user
        payloads (``make_user``) or member payloads (``{"user": ..., "roles": [...]}``). The bot is always a
        member; @everyone (id = guild id) is always the first role.
        """
        everyone = {"id": guild_id, "name": "@everyone", "permissions": EVERYONE_PERMISSIONS}
        guild: JSON = copy.deepcopy(GUILD_DEFAULTS)
        guild.update(id=str(guild_id), name=name, owner_id=str(owner_id or snowflake()), joined_at=now_iso())
        guild["roles"] = []
        for pos, r in enumerate([everyone, *(roles or [])]):
            role = {**ROLE_DEFAULTS, "position": pos, **r, "id": str(r["id"])}
            guild["roles"].append({**role, "permissions": str(r.get("permissions", 0))})
        guild["channels"] = []
        for pos, ch in enumerate(channels or [{"id": snowflake(), "name": "general"}]):
            channel = {**copy.deepcopy(CHANNEL_DEFAULTS), "position": pos, **ch, "id": str(ch["id"])}
            channel["guild_id"] = str(guild_id)
            guild["channels"].append(channel)
            self.channels[int(channel["id"])] = channel
        guild["members"] = []
        for m in [self.bot_user, *(members or [])]:
            member = {**MEMBER_DEFAULTS, "joined_at": now_iso(), **(m if "user" in m else {"user": m})}
            member["roles"] = [str(r) for r in member.get("roles", [])]
            guild["members"].append(member)
            self.users[int(member["user"]["id"])] = member["user"]
        guild["member_count"] = len(guild["members"])
        self.guilds[guild_id] = guild
        return guild

    def member(self, guild_id: int, user_id: int) -> JSON | None:
        members = self.guilds.get(guild_id, {}).get("members", [])
        return next((m for m in members if m["user"]["id"] == str(user_id)), None)

    def permissions(self, guild_id: int, role_ids: Iterable[int | str]) -> int:
        roles = {r["id"]: int(r["permissions"]) for r in self.guilds.get(guild_id, {}).get("roles", [])}
        perms = roles.get(str(guild_id), EVERYONE_PERMISSIONS)
        for role_id in role_ids:
            perms |= roles.get(str(role_id), 0)
        return ALL_PERMISSIONS if perms & ADMINISTRATOR else perms

    def live_sessions(self) -> int:
        """Gateway sessions that are connected and ready."""
        return sum(1 for s in self._sessions if not s.ended and not s.invalid and s.conn is not None)

    def messages_in(self, channel_id: int) -> list[JSON]:
        """Stored messages of a channel, oldest first (ephemeral interaction messages are not in channels)."""
        found = [m for m in self.messages.values() if m["channel_id"] == str(channel_id)]
        return sorted(found, key=lambda m: int(m["id"]))

    def requests_to(self, method: str, path_regex: str) -> list[Req]:
        """REST requests with that method (``*``: any) whose path ``re.fullmatch``-es ``path_regex``."""
        rx = re.compile(path_regex)
        return [r for r in self.requests if method in ("*", r.method) and rx.fullmatch(r.path)]

    def registered_commands(self, guild_id: int | None = None) -> list[JSON]:
        return self.commands.get(guild_id, [])

    def interaction_responses(self, token: str) -> list[JSON]:
        """The bodies POSTed to the interaction's callback (at most one is accepted)."""
        return self._interactions[token].responses

    def original_message(self, token: str) -> JSON | None:
        return self._interactions[token].original

    def followups(self, token: str) -> list[JSON]:
        return self._interactions[token].followups

    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int,
        body: JSON,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching REST requests (as ``requests_to``) with ``status`` and ``body``.

        429s get Discord's rate-limit headers (``Retry-After``, ``X-RateLimit-*``) from ``retry_after``.
        """
        hdrs: dict[str, str] = {}
        if status == 429:
            retry, is_global = float(body.get("retry_after", 1.0)), bool(body.get("global"))
            hdrs = {"Retry-After": str(max(1, round(retry))), "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": f"{time.time() + retry:.3f}",
                    "X-RateLimit-Reset-After": f"{retry:.3f}", "X-RateLimit-Bucket": "emulator",
                    "X-RateLimit-Scope": "global" if is_global else "user"}  # fmt: skip
            if is_global:
                hdrs["X-RateLimit-Global"] = "true"
        hdrs.update(headers or {})
        self._failures.append(_Failure(method, re.compile(path_regex), status, body, hdrs, times))

    def answer_slowly(self, method: str, path_regex: str, seconds: float) -> None:
        """Matching REST requests (as ``requests_to``) take effect at once but answer ``seconds`` later: a
        client stopped meanwhile never learns the id of the message it created."""
        self._slow_answers.append((method, re.compile(path_regex), seconds))

    async def wait_until(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        """Poll ``predicate`` until it returns something truthy, and return that."""
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            await asyncio.sleep(0.01)
        return result

    async def wait_for_identify(self, timeout: float = 10.0, *, count: int = 1) -> None:  # noqa: ASYNC109
        """Wait until ``count`` IDENTIFYs have been answered with READY and the GUILD_CREATEs."""
        await self.wait_until(lambda: self.identify_count >= count, timeout)

    # ---------------------------------------------------------------- gateway
    async def dispatch(self, event_name: str, data: JSON) -> None:
        """Send op 0 (with the session's next seq) to every live session; kept for replay on RESUME."""
        for session in self._sessions:
            if not session.ended and not session.invalid:
                await self._emit(session, event_name, data)

    async def drop_connection(self, *, resumable: bool = True) -> None:
        """Close every gateway socket with 4000; a non-resumable session gets op 9 when it tries to RESUME."""
        for session in self._sessions:
            session.invalid = session.invalid or not resumable
        for conn in list(self._conns):
            conn.dropped = True
            await conn.ws.close(code=4000, message=b"emulator dropped the connection")

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT; discord.py closes and resumes on ``resume_gateway_url``."""
        for conn in list(self._conns):
            await self._send(conn, {"op": 7, "d": None, "s": None, "t": None})

    async def _send(self, conn: _Conn, frame: JSON | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        async with conn.lock:
            if conn.ws.closed:
                return
            try:
                if conn.compressor is None:
                    await conn.ws.send_str(text)
                else:
                    data = conn.compressor.compress(text.encode()) + conn.compressor.flush(zlib.Z_SYNC_FLUSH)
                    await conn.ws.send_bytes(data)
            except (ConnectionError, RuntimeError):
                pass  # the socket went away; a resumable session replays from its log

    async def _emit(self, session: _Session, event: str, data: JSON) -> None:
        filtered = self._for_intents(session.intents, event, data)
        if filtered is None:
            return
        session.seq += 1
        text = json.dumps({"op": 0, "t": event, "s": session.seq, "d": filtered})
        session.log = [*session.log[-999:], (session.seq, text)]
        if session.conn is not None:
            await self._send(session.conn, text)

    def _for_intents(self, intents: int, event: str, data: JSON) -> JSON | None:
        bot_id = self.bot_user["id"]
        if event == "GUILD_CREATE" and not intents & GUILD_MEMBERS:  # only the bot's own member
            return {**data, "members": [m for m in data["members"] if m["user"]["id"] == bot_id]}
        if not event.startswith("MESSAGE_"):
            return data
        if not intents & (GUILD_MESSAGES if data.get("guild_id") else DIRECT_MESSAGES):
            return None
        exempt = data.get("author", {}).get("id") == bot_id or any(
            u["id"] == bot_id for u in data.get("mentions", [])
        )
        if (
            event != "MESSAGE_DELETE"
            and data.get("guild_id")
            and not exempt
            and not intents & MESSAGE_CONTENT
        ):
            return {**data, "content": "", "embeds": [], "attachments": [], "components": []}
        return data

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections.append(request.path_qs)
        zlib_stream = self.compress and request.query.get("compress") == "zlib-stream"
        conn = _Conn(ws, zlib.compressobj() if zlib_stream else None)
        self._conns.add(conn)
        session: _Session | None = None
        hello = {"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}, "s": None, "t": None}
        await self._send(conn, hello)
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                self.gateway_log.append(frame)
                op, d = frame.get("op"), frame.get("d")
                if op == 1:
                    await self._send(conn, {"op": 11, "d": None, "s": None, "t": None})
                elif op == 2:
                    if d.get("token") != self.token:
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    if int(d.get("intents", 0)) & PRIVILEGED_INTENTS & ~self.privileged_intents:
                        await ws.close(code=4014, message=b"Disallowed intent(s).")
                        break
                    session = _Session(secrets.token_hex(16), int(d.get("intents", 0)), d.get("shard"), conn)
                    self._sessions.append(session)
                    await self._ready(session)
                elif op == 6:
                    found = next((s for s in self._sessions if s.id == d.get("session_id")), None)
                    if found is None or found.invalid or found.ended or d.get("token") != self.token:
                        await self._send(conn, {"op": 9, "d": False, "s": None, "t": None})
                        continue
                    session, found.conn = found, conn
                    for seq, text in found.log:
                        if seq > (d.get("seq") or 0):
                            await self._send(conn, text)
                    await self._emit(found, "RESUMED", {"_trace": ["emulator"]})
                    self.resume_count += 1
                elif op == 8 and session is not None:  # request guild members
                    guild = self.guilds.get(int(d["guild_id"]), {"members": []})
                    chunk = {"guild_id": d["guild_id"], "members": guild["members"], "chunk_index": 0,
                             "chunk_count": 1, "not_found": [], "nonce": d.get("nonce")}  # fmt: skip
                    await self._emit(session, "GUILD_MEMBERS_CHUNK", chunk)
        finally:
            self._conns.discard(conn)
            if session is not None and session.conn is conn:
                session.conn = None
                session.ended = not conn.dropped and ws.close_code in (1000, 1001)
        return ws

    async def _ready(self, session: _Session) -> None:
        ready = {"v": 10, "user": self.bot_user, "session_id": session.id, "session_type": "normal",
                 "resume_gateway_url": self.resume_gateway_url, "_trace": ["emulator"],
                 "application": {"id": str(self.application_id), "flags": 1 << 19},
                 "guilds": [{"id": str(gid), "unavailable": True} for gid in self.guilds],
                 "private_channels": [], "relationships": [], "presences": []}  # fmt: skip
        if session.shard:
            ready["shard"] = session.shard
        await self._emit(session, "READY", ready)
        for guild in self.guilds.values():
            await self._emit(session, "GUILD_CREATE", guild)
        self.identify_count += 1

    # ---------------------------------------------------------------- simulated users
    async def send_message(
        self,
        *,
        channel_id: int,
        author: JSON,
        content: str,
        guild_id: int | None = None,
        mentions: Iterable[JSON] = (),
        message_reference: JSON | None = None,
        referenced_message: JSON | None = None,
    ) -> JSON:
        """A user posts a message: stored (so GET works for reply chains) and dispatched as MESSAGE_CREATE.

        ``mentions`` default to the ``<@id>`` in ``content`` (plus the replied-to author);
        ``referenced_message`` defaults to the stored message ``message_reference["message_id"]`` names.
        """
        self.users.setdefault(int(author["id"]), author)
        if guild_id is None and channel_id in self.channels and self.channels[channel_id].get("guild_id"):
            guild_id = int(self.channels[channel_id]["guild_id"])
        body = {"content": content, "message_reference": message_reference}
        msg = self._new_message(channel_id, guild_id, author, body, referenced=referenced_message)
        if mentions:
            msg["mentions"] = list(mentions)
        if guild_id is not None:
            member = self.member(guild_id, int(author["id"])) or {"roles": [], "joined_at": now_iso()}
            msg["member"] = {k: v for k, v in member.items() if k != "user"}
        await self.dispatch("MESSAGE_CREATE", public(msg))
        return msg

    async def send_interaction(
        self,
        *,
        guild_id: int,
        channel_id: int,
        user: JSON,
        member_roles: Iterable[int] = (),
        name: str,
        options: list[JSON] | None = None,
        type: int = 2,
        locale: str = "en-US",
    ) -> JSON:
        """Dispatch an APPLICATION_COMMAND (``type=2``) or AUTOCOMPLETE (``type=4``) INTERACTION_CREATE.

        ``name`` may be a path (``"brandbot status"``, ``"brandbot admin reload"``); ``options`` are the leaf
        options ``{"name", "value"[, "type", "focused"]}``. Option and subcommand types come from the synced
        command when omitted; user/channel/role options get ``resolved`` data. Returns the payload.
        """
        self.users.setdefault(int(user["id"]), user)
        root, *path = name.split()
        cmd_guild = guild_id if any(c["name"] == root for c in self.commands.get(guild_id, [])) else None
        cmd = next((c for c in self.commands.get(cmd_guild, []) if c["name"] == root), {})
        defs: list[JSON] = cmd.get("options", [])
        chain: list[tuple[str, int]] = []
        for i, sub in enumerate(path):
            d: JSON = next((o for o in defs if o["name"] == sub), {})
            chain.append((sub, d.get("type", 1 if i == len(path) - 1 else 2)))
            defs = d.get("options", [])
        resolved: dict[str, JSON] = {}
        leaf = [self._typed_option(o, defs, guild_id, resolved) for o in options or []]
        if type == 4 and leaf and not any(o.get("focused") for o in leaf):
            leaf[-1]["focused"] = True
        for sub, kind in reversed(chain):
            leaf = [{"name": sub, "type": kind, "options": leaf}]
        data: JSON = {"id": cmd.get("id", str(snowflake())), "name": root, "type": 1, "options": leaf}
        if resolved:
            data["resolved"] = resolved
        if cmd_guild is not None:
            data["guild_id"] = str(cmd_guild)
        payload = self._interaction_payload(guild_id, channel_id, user, member_roles, type, data, locale)
        self._interactions[payload["token"]] = _Interaction(payload, time.monotonic())
        await self.dispatch("INTERACTION_CREATE", payload)
        return payload

    async def send_raw_interaction(self, payload: JSON) -> None:
        """Dispatch an INTERACTION_CREATE exactly as given (a malformed one, say); its token is answerable."""
        self._interactions[str(payload["token"])] = _Interaction(payload, time.monotonic())
        await self.dispatch("INTERACTION_CREATE", payload)

    async def click(
        self, message: JSON, custom_id: str, *, user: JSON, member_roles: Iterable[int] = ()
    ) -> JSON:
        """A user clicks the button ``custom_id`` on ``message`` (a stored message, an interaction's response
        or follow-up): a MESSAGE_COMPONENT (type 3) INTERACTION_CREATE carrying the message as it is now.
        Only a button the message shows can be clicked, as in Discord. Returns the payload (its ``token``
        names the interaction for ``interaction_responses``)."""
        self.users.setdefault(int(user["id"]), user)
        current = self.messages.get(int(message["id"])) or self._interaction_message_by_id(message["id"])
        if current is None:
            raise LookupError(f"message {message['id']} is gone")
        buttons = [c for row in current["components"] for c in row.get("components", [])]
        if not any(b.get("custom_id") == custom_id and not b.get("disabled") for b in buttons):
            raise LookupError(f"message {message['id']} shows no button {custom_id!r}")
        guild_id = int(current["guild_id"]) if current.get("guild_id") else None
        if guild_id is None:
            raise NotImplementedError("clicks in DMs are not emulated")
        data: JSON = {"custom_id": custom_id, "component_type": 2}
        payload = self._interaction_payload(guild_id, int(current["channel_id"]), user, member_roles, 3, data)
        payload["message"] = public(current)
        self._interactions[payload["token"]] = _Interaction(payload, time.monotonic(), message=current)
        await self.dispatch("INTERACTION_CREATE", payload)
        return payload

    def _interaction_message_by_id(self, message_id: str) -> JSON | None:
        """An interaction's response or follow-up (ephemeral ones are in no channel)."""
        for it in self._interactions.values():
            for msg in [it.original, *it.followups]:
                if msg is not None and msg["id"] == message_id:
                    return msg
        return None

    def _interaction_payload(
        self,
        guild_id: int,
        channel_id: int,
        user: JSON,
        member_roles: Iterable[int],
        type: int,
        data: JSON,
        locale: str = "en-US",
    ) -> JSON:
        roles = [str(r) for r in member_roles]
        perms = str(self.permissions(guild_id, roles))
        bot_roles = (self.member(guild_id, int(self.bot_user["id"])) or {"roles": []})["roles"]
        channel = self.channels.get(channel_id, {"id": str(channel_id), "type": 0, "name": "unknown"})
        return {
            "id": str(snowflake()), "application_id": str(self.application_id), "type": type, "version": 1,
            "token": "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48), "data": data, "guild_id": str(guild_id),
            "channel_id": str(channel_id), "channel": {**channel, "permissions": perms},
            "guild": {"id": str(guild_id), "locale": "en-US", "features": []},
            "member": {**MEMBER_DEFAULTS, "user": user, "roles": roles, "permissions": perms,
                       "joined_at": now_iso()},
            "app_permissions": str(self.permissions(guild_id, bot_roles)), "locale": locale,
            "guild_locale": "en-US", "entitlements": [], "context": 0,
            "authorizing_integration_owners": {"0": str(guild_id)},
            "attachment_size_limit": 10 * 1024 * 1024,
        }  # fmt: skip

    def _typed_option(self, option: JSON, defs: list[JSON], guild_id: int, resolved: dict[str, JSON]) -> JSON:
        definition = next((d for d in defs if d["name"] == option["name"]), {})
        out = {"type": definition.get("type") or _option_type(option["value"]), **option}
        if out["type"] not in (6, 7, 8, 9):  # user, channel, role, mentionable: a snowflake + resolved data
            return out
        out["value"] = oid = str(option["value"])
        roles = self.guilds.get(guild_id, {}).get("roles", [])
        if out["type"] in (6, 9) and int(oid) in self.users:
            resolved.setdefault("users", {})[oid] = self.users[int(oid)]
            if member := self.member(guild_id, int(oid)):
                perms = str(self.permissions(guild_id, member["roles"]))
                partial = {k: v for k, v in member.items() if k != "user"}
                resolved.setdefault("members", {})[oid] = {**partial, "permissions": perms}
        elif out["type"] == 7 and int(oid) in self.channels:
            channel = self.channels[int(oid)]
            resolved.setdefault("channels", {})[oid] = {**channel, "permissions": str(ALL_PERMISSIONS)}
        elif role := next((r for r in roles if r["id"] == oid), None):
            resolved.setdefault("roles", {})[oid] = role
        return out

    # ---------------------------------------------------------------- messages
    def _validate(self, body: JSON, *, prefix: str = "", edit: bool = False) -> None:
        content = body.get("content")
        if content is not None and len(content) > 2000:
            raise ApiError.form(
                prefix + "content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length."
            )
        if len(body.get("embeds") or []) > 10:
            raise ApiError.form(prefix + "embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        if not edit and not any(
            body.get(k) for k in ("content", "embeds", "attachments", "components", "poll")
        ):
            raise ApiError(400, 50006, "Cannot send an empty message")
        self._validate_components(body.get("components") or [], prefix + "components")

    @staticmethod
    def _validate_components(rows: list[JSON], path: str) -> None:
        """Discord's rules for buttons: up to 5 action rows of up to 5 buttons; a button has a label or an
        emoji, and a custom id of 1-100 characters unique in the message (a link button a URL instead)."""
        if len(rows) > 5:
            raise ApiError.form(path, "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
        seen: set[str] = set()
        for r, row in enumerate(rows):
            items = row.get("components") or []
            if row.get("type") != 1 or not 1 <= len(items) <= 5:
                raise ApiError.form(f"{path}.{r}", "COMPONENT_LAYOUT_WIDTH_EXCEEDED", "Invalid action row")
            for i, button in enumerate(items):
                where = f"{path}.{r}.components.{i}"
                if button.get("type") != 2 or not (button.get("label") or button.get("emoji")):
                    raise ApiError.form(where, "COMPONENT_INVALID", "Invalid component")
                if button.get("style") == 5:
                    if not button.get("url"):
                        raise ApiError.form(f"{where}.url", "BASE_TYPE_REQUIRED", "This field is required")
                    continue
                custom_id = button.get("custom_id")
                if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 100:
                    raise ApiError.form(f"{where}.custom_id", "BASE_TYPE_BAD_LENGTH", "Must be 1-100 long.")
                if custom_id in seen:
                    raise ApiError.form(
                        f"{where}.custom_id", "COMPONENT_CUSTOM_ID_DUPLICATED", "Custom id already used"
                    )
                seen.add(custom_id)

    def _mentions(self, content: str, allowed: JSON | None, replied: JSON | None) -> JSON:
        parse = {"users", "roles", "everyone"} if allowed is None else set(allowed.get("parse", []))
        users, roles = set(re.findall(r"<@!?(\d+)>", content)), set(re.findall(r"<@&(\d+)>", content))
        if allowed is not None:
            users = users if "users" in parse else users & {str(u) for u in allowed.get("users", [])}
            roles = roles if "roles" in parse else roles & {str(r) for r in allowed.get("roles", [])}
        if replied is not None and (allowed is None or allowed.get("replied_user")):
            users.add(replied["id"])
        return {
            "mentions": [self.users.get(int(u)) or make_user(int(u), f"user{u}") for u in sorted(users)],
            "mention_roles": sorted(roles),
            "mention_everyone": "everyone" in parse and ("@everyone" in content or "@here" in content),
        }

    def _new_message(
        self,
        channel_id: int,
        guild_id: int | None,
        author: JSON,
        body: JSON,
        *,
        referenced: JSON | None = None,
        type: int = 0,
        store: bool = True,
    ) -> JSON:
        attachments = [{"id": str(snowflake()), "filename": a.get("filename", "file"), "size": 0,
                        "url": "https://cdn.invalid/file", "proxy_url": "https://cdn.invalid/file"}
                       for a in body.get("attachments") or []]  # fmt: skip
        msg: JSON = {
            "id": str(snowflake()), "channel_id": str(channel_id), "author": author, "type": type,
            "content": body.get("content") or "", "timestamp": now_iso(), "edited_timestamp": None,
            "tts": bool(body.get("tts")), "pinned": False, "embeds": body.get("embeds") or [],
            "components": body.get("components") or [], "attachments": attachments,
            "flags": int(body.get("flags") or 0), "allowed_mentions_log": [body.get("allowed_mentions")],
            "edit_history": [],
        }  # fmt: skip
        if guild_id is not None:
            msg["guild_id"] = str(guild_id)
        replied = None
        if ref := body.get("message_reference"):
            target = referenced or self.messages.get(int(ref["message_id"]))
            if target is None and ref.get("fail_if_not_exists", True):
                raise ApiError.form("message_reference", "REPLIES_UNKNOWN_MESSAGE", "Unknown message")
            msg["message_reference"] = {"type": 0, "message_id": str(ref["message_id"]),
                                        "channel_id": str(ref.get("channel_id", channel_id))}  # fmt: skip
            if guild_id is not None:
                msg["message_reference"]["guild_id"] = str(guild_id)
            msg["referenced_message"] = public(target) if target else None
            msg["type"] = 19 if type == 0 else type
            replied = target["author"] if target else None
        msg.update(self._mentions(msg["content"], body.get("allowed_mentions"), replied))
        if store:
            self.messages[int(msg["id"])] = msg
        return msg

    async def _edit_message(self, msg: JSON, body: JSON) -> None:
        self._validate(body, edit=True)
        msg["edit_history"].append(public(msg))
        msg["allowed_mentions_log"].append(body.get("allowed_mentions"))
        for key in ("content", "embeds", "components", "attachments", "flags"):
            if key in body:
                msg[key] = body[key] if body[key] is not None else ("" if key == "content" else [])
        msg["flags"] = int(msg["flags"] or 0) & ~LOADING
        msg.update(self._mentions(msg["content"], body.get("allowed_mentions"), None))
        msg["edited_timestamp"] = now_iso()
        if int(msg["id"]) in self.messages:
            await self.dispatch("MESSAGE_UPDATE", public(msg))

    async def _delete_message(self, msg: JSON) -> None:
        if self.messages.pop(int(msg["id"]), None) is not None:
            ids: JSON = {k: msg[k] for k in ("id", "channel_id", "guild_id") if k in msg}
            await self.dispatch("MESSAGE_DELETE", ids)

    # ---------------------------------------------------------------- REST
    async def _rest(self, request: web.Request) -> web.Response:
        path, body, files = "/" + request.match_info["tail"], None, {}
        if request.content_type == "multipart/form-data":
            for key, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    files[value.filename] = value.file.read()
                elif key == "payload_json":
                    body = json.loads(str(value))
        elif raw := await request.read():
            body = json.loads(raw)
        req = Req(
            request.method, path, dict(request.query), body, dict(request.headers), files, time.monotonic()
        )
        self.requests.append(req)
        for failure in self._failures:
            if failure.method in ("*", req.method) and failure.pattern.fullmatch(path):
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
                return _json(failure.status, failure.body, failure.headers)
        is_webhook = path.startswith(("/webhooks/", "/interactions/"))
        if not is_webhook and req.headers.get("Authorization") != f"Bot {self.token}":
            return _json(401, {"message": "401: Unauthorized", "code": 0})
        matched = [
            (methods, handler, m) for methods, rx, handler in self._routes if (m := rx.fullmatch(path))
        ]
        for methods, handler, match in matched:
            if req.method in methods:
                try:
                    response = await handler(req, match)
                except ApiError as exc:
                    return _json(exc.status, exc.body)
                for method, pattern, seconds in self._slow_answers:
                    if method in ("*", req.method) and pattern.fullmatch(path):
                        await asyncio.sleep(seconds)
                return response
        if matched:
            return _json(405, {"message": "405: Method Not Allowed", "code": 0})
        return _json(404, {"message": "404: Not Found", "code": 0})

    async def _get_me(self, req: Req, m: re.Match[str]) -> web.Response:
        return _json(200, {**self.bot_user, "verified": True, "mfa_enabled": False, "flags": 0})

    async def _get_application(self, req: Req, m: re.Match[str]) -> web.Response:
        return _json(200, {
            "id": str(self.application_id), "name": self.bot_user["username"], "icon": None,
            "description": "", "bot_public": False, "bot_require_code_grant": False, "verify_key": "0" * 64,
            "flags": 1 << 19, "owner": make_user(1000, "owner"), "bot": self.bot_user, "team": None,
            "interactions_endpoint_url": None, "redirect_uris": [], "tags": [], "summary": "",
        })  # fmt: skip

    async def _get_gateway(self, req: Req, m: re.Match[str]) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": 1}
        return _json(200, {"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    async def _create_dm(self, req: Req, m: re.Match[str]) -> web.Response:
        uid = str(req.json["recipient_id"])
        dms = [c for c in self.channels.values() if c["type"] == 1 and c["recipients"][0]["id"] == uid]
        recipient = self.users.get(int(uid)) or make_user(int(uid), f"user{uid}")
        new = {
            "id": str(snowflake()),
            "type": 1,
            "last_message_id": None,
            "flags": 0,
            "recipients": [recipient],
        }
        channel: JSON = dms[0] if dms else new
        self.channels[int(channel["id"])] = channel
        return _json(200, channel)

    async def _commands(self, req: Req, m: re.Match[str]) -> web.Response:
        if int(m["app"]) != self.application_id:
            raise ApiError(403, 50001, "Missing Access")
        guild = int(m["guild"]) if m["guild"] else None
        if req.method == "PUT":  # bulk overwrite; a command keeps its id while its name and type stay
            old = {(c["name"], c["type"]): c["id"] for c in self.commands.get(guild, [])}
            stored = []
            for i, cmd in enumerate(req.json or []):
                kind = cmd.get("type", 1)
                if kind == 1 and not re.fullmatch(r"[-_\w]{1,32}", cmd.get("name", "")):
                    raise ApiError.form(
                        f"{i}.name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
                    )
                if kind == 1 and not 1 <= len(cmd.get("description", "")) <= 100:
                    raise ApiError.form(
                        f"{i}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100."
                    )
                stored.append({"id": old.get((cmd["name"], kind), str(snowflake())), "description": "",
                               "application_id": str(self.application_id), "version": str(snowflake()),
                               "default_member_permissions": None, "nsfw": False, "options": [], **cmd,
                               "type": kind, **({"guild_id": str(guild)} if guild else {})})  # fmt: skip
            self.commands[guild] = stored
        return _json(200, self.commands.get(guild, []))

    def _interaction(self, token: str, app_id: str) -> _Interaction:
        it = self._interactions.get(token)
        if it is None or int(app_id) != self.application_id:
            raise ApiError(404, 10015, "Unknown Webhook")
        return it

    async def _callback(self, req: Req, m: re.Match[str]) -> web.Response:
        it = self._interactions.get(m["token"])
        expired = it is not None and time.monotonic() - it.created > self.interaction_ack_deadline
        if it is None or it.payload["id"] != m["iid"] or expired:
            raise ApiError(404, 10062, "Unknown interaction")
        if it.responses:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        body: JSON = req.json or {}
        kind, data = body.get("type"), body.get("data") or {}
        result: JSON = {"interaction": {"id": it.payload["id"], "type": it.payload["type"]}}
        if kind in (4, 5):  # a message (4) or a "thinking" placeholder (5) that later edits complete
            if kind == 4:
                self._validate(data, prefix="data.")
            flags = int(data.get("flags") or 0) | (LOADING if kind == 5 else 0)
            message_body = {**(data if kind == 4 else {}), "flags": flags}
            it.original = msg = await self._interaction_message(it, message_body, 20)
            result["interaction"].update(response_message_id=msg["id"], response_message_loading=kind == 5,
                                         response_message_ephemeral=bool(flags & EPHEMERAL))  # fmt: skip
            result["resource"] = {"type": kind, "message": public(msg)}
        elif kind in (6, 7) and it.message is not None:  # a click: acknowledged (6) or its message updated
            if kind == 7:
                await self._edit_message(it.message, data)
            result["resource"] = {"type": kind}
        elif kind in (6, 7):
            raise ApiError(400, 40004, "Interaction has no message to update")
        it.responses.append(body)
        return _json(200, result)

    async def _interaction_message(self, it: _Interaction, body: JSON, type: int) -> JSON:
        p = it.payload
        ephemeral = bool(int(body.get("flags") or 0) & EPHEMERAL)
        msg = self._new_message(
            int(p["channel_id"]), int(p["guild_id"]), self.bot_user, body, type=type, store=not ephemeral
        )
        msg.update(webhook_id=str(self.application_id), application_id=str(self.application_id))
        owners = p["authorizing_integration_owners"]
        msg["interaction_metadata"] = {"id": p["id"], "type": p["type"], "user": p["member"]["user"],
                                       "authorizing_integration_owners": owners}  # fmt: skip
        if not ephemeral:
            await self.dispatch("MESSAGE_CREATE", public(msg))
        return msg

    async def _followup(self, req: Req, m: re.Match[str]) -> web.Response:
        it = self._interaction(m["token"], m["app"])
        if not it.responses:
            raise ApiError(404, 10015, "Unknown Webhook")
        self._validate(req.json or {})
        msg = await self._interaction_message(it, req.json or {}, 0)
        it.followups.append(msg)
        return _json(200, public(msg)) if req.query.get("wait") in ("1", "true", "True") else _json(204, None)

    async def _webhook_message(self, req: Req, m: re.Match[str]) -> web.Response:
        it = self._interaction(m["token"], m["app"])
        found = [it.original] if m["mid"] == "@original" else [f for f in it.followups if f["id"] == m["mid"]]
        if not found or found[0] is None:
            raise ApiError(404, 10008, "Unknown Message")
        msg = found[0]
        if req.method == "PATCH":
            await self._edit_message(msg, req.json or {})
        elif req.method == "DELETE":
            await self._delete_message(msg)
            it.original = None if msg is it.original else it.original
            return _json(204, None)
        return _json(200, public(msg))

    def _channel(self, cid: str) -> JSON:
        if int(cid) not in self.channels:
            raise ApiError(404, 10003, "Unknown Channel")
        return self.channels[int(cid)]

    async def _get_channel(self, req: Req, m: re.Match[str]) -> web.Response:
        return _json(200, self._channel(m["cid"]))

    async def _typing(self, req: Req, m: re.Match[str]) -> web.Response:
        self._channel(m["cid"])
        return _json(204, None)

    async def _channel_messages(self, req: Req, m: re.Match[str]) -> web.Response:
        channel = self._channel(m["cid"])
        if req.method == "GET":  # history, newest first
            found = [public(x) for x in reversed(self.messages_in(int(m["cid"])))]
            before, after = int(req.query.get("before", 1 << 63)), int(req.query.get("after", 0))
            found = [x for x in found if after < int(x["id"]) < before]
            return _json(200, found[: int(req.query.get("limit", 50))])
        body: JSON = req.json or {}
        self._validate(body)
        guild_id = int(channel["guild_id"]) if channel.get("guild_id") else None
        msg = self._new_message(int(m["cid"]), guild_id, self.bot_user, body)
        channel["last_message_id"] = msg["id"]
        await self.dispatch("MESSAGE_CREATE", public(msg))
        return _json(200, public(msg))

    async def _channel_message(self, req: Req, m: re.Match[str]) -> web.Response:
        self._channel(m["cid"])
        msg = self.messages.get(int(m["mid"]))
        if msg is None or msg["channel_id"] != m["cid"]:
            raise ApiError(404, 10008, "Unknown Message")
        if req.method == "PATCH":
            if msg["author"]["id"] != self.bot_user["id"]:
                raise ApiError(403, 50005, "Cannot edit a message authored by another user")
            await self._edit_message(msg, req.json or {})
        elif req.method == "DELETE":
            await self._delete_message(msg)
            return _json(204, None)
        return _json(200, public(msg))
