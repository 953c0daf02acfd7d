"""The Discord front-end under test: the emulator on 127.0.0.1, the real bot on it, a scripted worker.

A test module imports the fixtures by name (`from tests.discord_fixtures import discord_bot, ...`).
The scripted worker plays the worker's side of the contract on real Redis (it takes the RQ job and
appends reply events), for answers whose shape a test must control: long, fenced, slow, retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest
import pytest_asyncio
import redis
from pydantic import AnyHttpUrl, SecretStr
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from bots.access import AccessRules, RateLimit
from bots.discord import BrandBot, build_discord_bot
from brandbot import keys, messages
from brandbot.contract import (
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    ErrorKind,
    FinishReason,
    GenerationRequest,
    ReplyEvent,
    StartEvent,
    Usage,
    parse_reply_event,
)
from brandbot.emulators.discord import DiscordEmulator, make_user
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.queue import RequestQueue
from brandbot.settings import Settings
from tests.core_fixtures import shows_cursor
from worker.replies import ReplyPublisher

JSON = dict[str, Any]

GUILD_ID = 810000000000000001
GENERAL = 810000000000000010
RANDOM = 810000000000000011
THREAD = 810000000000000012  # a thread in #general
MEMBER_ROLE, MUTED_ROLE = 810000000000000020, 810000000000000021
ALICE = make_user(910000000000000001, "alice")
BOB = make_user(910000000000000002, "bob")
CAROL = make_user(910000000000000003, "carol")  # the brandbot admin
ADMINS = [CAROL["id"]]
RQ_QUEUE = Queue.redis_queue_namespace_prefix + keys.model_queue("default")

# A generous bucket: only the rate-limit tests run out of it.
OPEN_RULES = AccessRules(admins=ADMINS, rate_limit=RateLimit(questions_per_minute=600, burst=50))


def add_thread(emulator: DiscordEmulator, thread_id: int, *, parent_id: int, name: str) -> JSON:
    """A public thread, sent in GUILD_CREATE's `threads` (discord.py skips threads listed as channels)."""
    thread: JSON = {
        "id": str(thread_id), "type": 11, "guild_id": str(GUILD_ID), "parent_id": str(parent_id),
        "name": name, "owner_id": ALICE["id"], "last_message_id": None, "rate_limit_per_user": 0,
        "message_count": 0, "member_count": 1, "flags": 0,
        "thread_metadata": {"archived": False, "auto_archive_duration": 1440, "locked": False,
                            "archive_timestamp": "2026-01-01T00:00:00+00:00"},
    }  # fmt: skip
    emulator.guilds[GUILD_ID]["threads"].append(thread)
    emulator.channels[thread_id] = thread
    return thread


def add_dm(emulator: DiscordEmulator, user: JSON) -> int:
    """The DM channel between `user` and the bot."""
    channel_id = int(user["id"]) + 7
    emulator.channels[channel_id] = {"id": str(channel_id), "type": 1, "last_message_id": None,
                                     "flags": 0, "recipients": [user]}  # fmt: skip
    return channel_id


@pytest_asyncio.fixture
async def discord_emulator(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DiscordEmulator]:
    """Discord on 127.0.0.1 with one server: #general (with a thread), #random, three members."""
    emulator = DiscordEmulator()
    await emulator.start()
    # The bot sets both from its settings; monkeypatch puts discord.py's defaults back afterwards.
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(
        discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    )
    emulator.add_guild(
        GUILD_ID,
        channels=[{"id": GENERAL, "name": "general"}, {"id": RANDOM, "name": "random"}],
        roles=[{"id": MEMBER_ROLE, "name": "member"}, {"id": MUTED_ROLE, "name": "muted"}],
        members=[
            {"user": ALICE, "roles": [MEMBER_ROLE]},
            {"user": BOB, "roles": [MUTED_ROLE]},
            {"user": CAROL, "roles": [MEMBER_ROLE]},
        ],
    )
    add_thread(emulator, THREAD, parent_id=GENERAL, name="help")
    try:
        yield emulator
    finally:
        await emulator.stop()


@dataclass
class RunningBot:
    """The real front-end in this test's event loop, connected to the emulator."""

    bot: BrandBot
    emulator: DiscordEmulator
    settings: Settings
    queue: RequestQueue
    rules: AccessRules = OPEN_RULES
    clock_offset: float = 0.0  # added to the wall clock the bot reads (interaction tokens expire by it)

    def clock(self) -> float:
        return time.time() + self.clock_offset

    def messages_in(self, channel_id: int) -> list[JSON]:
        """The bot's messages in a channel, oldest first."""
        bot_id = self.emulator.bot_user["id"]
        return [m for m in self.emulator.messages_in(channel_id) if m["author"]["id"] == bot_id]

    async def ask(self, prompt: str, *, user: JSON = ALICE, channel_id: int = GENERAL, **options: Any) -> str:
        """Run `/ask` and return the interaction's token."""
        sent = await self.emulator.send_interaction(
            guild_id=GUILD_ID,
            channel_id=channel_id,
            user=user,
            member_roles=self.roles_of(user),
            name="ask",
            options=[{"name": "prompt", "value": prompt}]
            + [{"name": key, "value": value} for key, value in options.items()],
        )
        return str(sent["token"])

    async def command(self, name: str, *, user: JSON = ALICE, channel_id: int = GENERAL) -> str:
        sent = await self.emulator.send_interaction(
            guild_id=GUILD_ID, channel_id=channel_id, user=user, member_roles=self.roles_of(user), name=name
        )
        return str(sent["token"])

    def roles_of(self, user: JSON) -> list[int]:
        member = self.emulator.member(GUILD_ID, int(user["id"]))
        return [int(role) for role in member["roles"]] if member else []

    async def mention(
        self, text: str, *, user: JSON = ALICE, channel_id: int = GENERAL, **extra: Any
    ) -> JSON:
        return await self.emulator.send_message(
            channel_id=channel_id, author=user, content=f"<@{self.emulator.bot_user['id']}> {text}", **extra
        )

    async def ephemeral_reply(self, token: str) -> str:
        """The text of an ephemeral answer to a command (type 4, flag 64)."""
        [response] = await self.emulator.wait_until(lambda: self.emulator.interaction_responses(token))
        assert response["type"] == 4 and response["data"]["flags"] & 64, response
        assert response["data"]["allowed_mentions"] == {"parse": []}  # pings no one
        return str(response["data"]["content"])

    async def final_original(self, token: str, timeout: float = 30) -> JSON:  # noqa: ASYNC109
        """The interaction's response once it shows a finished text (no cursor, no placeholder)."""

        def finished() -> JSON | None:
            original = self.emulator.original_message(token)
            if original is None or original["flags"] & 128:  # still "thinking…"
                return None
            return None if is_in_progress(original["content"]) else original

        return dict(await self.emulator.wait_until(finished, timeout))


def is_in_progress(text: str) -> bool:
    return shows_cursor(text) or text.startswith(messages.THINKING)


@asynccontextmanager
async def discord_bot_running(
    emulator: DiscordEmulator, base: Settings, *, rules: AccessRules = OPEN_RULES, clock_offset: float = 0.0
) -> AsyncIterator[RunningBot]:
    bot_settings = base.model_copy(
        update={
            "discord_token": SecretStr(emulator.token),
            "discord_api_url": AnyHttpUrl(emulator.api_url),
            "discord_gateway_url": emulator.gateway_url,
        }
    )
    queue = RequestQueue.from_settings(bot_settings)
    holder: list[RunningBot] = []
    bot = build_discord_bot(
        settings=bot_settings,
        queue=queue,
        prompts=LivePromptLibrary(bot_settings.prompts_dir),
        access=lambda: holder[0].rules,
        clock=lambda: holder[0].clock(),
        guild_ready_timeout=0.05,  # one server: no need to wait 2 s for more
    )
    running = RunningBot(bot, emulator, bot_settings, queue, rules, clock_offset)
    holder.append(running)
    await bot.login(bot_settings.discord_token.get_secret_value())  # type: ignore[union-attr]
    connection = asyncio.create_task(bot.connect())
    try:
        await asyncio.wait_for(bot.wait_until_ready(), 10)
        yield running
    finally:
        await bot.close()
        await asyncio.wait_for(connection, 10)
        await queue.close()


@pytest_asyncio.fixture
async def discord_bot(
    discord_emulator: DiscordEmulator, settings: Callable[..., Settings], request: pytest.FixtureRequest
) -> AsyncIterator[RunningBot]:
    """The front-end; parametrize indirectly with a dict of settings overrides."""
    async with discord_bot_running(discord_emulator, settings(**getattr(request, "param", {}))) as running:
        yield running


@dataclass
class ScriptedWorker:
    """The worker's side of the contract, driven by the test: takes jobs, appends reply events."""

    client: redis.Redis
    publisher: ReplyPublisher = field(init=False)

    def __post_init__(self) -> None:
        self.publisher = ReplyPublisher(self.client, retention_seconds=3600)

    def pretend_alive(self, model: str = "default") -> None:
        """A heartbeat as a real worker writes it, so the front-end does not report a missing worker."""
        self.client.hset(keys.worker_heartbeat("scripted"), mapping={"model": model})
        self.client.sadd(keys.WORKERS_SET, "scripted")

    async def take(self, timeout: float = 10) -> GenerationRequest:  # noqa: ASYNC109
        """The next queued request (removed from the queue, as a worker takes it)."""
        deadline = time.monotonic() + timeout
        while (job_id := self.client.lpop(RQ_QUEUE)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("no request was queued")
            await asyncio.sleep(0.02)
        job = Job.fetch(keys.as_text(job_id), connection=self.client, serializer=JSONSerializer)
        return GenerationRequest.model_validate(job.args[0])

    def send(self, request_id: str, *events: ReplyEvent) -> None:
        for event in events:
            self.publisher.publish(request_id, event)

    def answer(
        self, request_id: str, text: str, *, attempt: int = 1, finish: FinishReason = FinishReason.STOP
    ) -> None:
        """A whole answer: start, the text in a few deltas, done."""
        step = max(len(text) // 5, 1)
        deltas = [DeltaEvent(attempt=attempt, text=text[i : i + step]) for i in range(0, len(text), step)]
        self.send(
            request_id, StartEvent(attempt=attempt), *deltas, done(text, attempt=attempt, finish=finish)
        )

    def fail(self, request_id: str, message: str) -> None:
        self.send(request_id, StartEvent(), ErrorEvent(kind=ErrorKind.ENGINE, message=message))


def done(text: str, *, attempt: int = 1, finish: FinishReason = FinishReason.STOP) -> DoneEvent:
    usage = Usage(prompt_tokens=10, completion_tokens=len(text) // 4, total_ms=5.0)
    return DoneEvent(attempt=attempt, text=text, finish_reason=finish, usage=usage)


@pytest.fixture
def scripted_worker(redis_client: redis.Redis) -> ScriptedWorker:
    worker = ScriptedWorker(redis_client)
    worker.pretend_alive()
    return worker


def reply_events(client: redis.Redis, request_id: str) -> list[ReplyEvent]:
    entries: Any = client.xrange(keys.reply_stream(request_id))
    return [parse_reply_event(fields[b"event"]) for _id, fields in entries]


def done_events(client: redis.Redis) -> dict[str, DoneEvent]:
    """Every finished answer in Redis: request id -> its DoneEvent."""
    found = {}
    for key in client.scan_iter(match=keys.reply_stream("*")):
        request_id = keys.as_text(key).rsplit(":", 1)[-1]
        for event in reply_events(client, request_id):
            if isinstance(event, DoneEvent):
                found[request_id] = event
    return found


def queued_request(client: redis.Redis, request_id: str) -> GenerationRequest:
    """The request as the worker received it (the RQ job's JSON payload)."""
    job = Job.fetch(request_id, connection=client, serializer=JSONSerializer)
    return GenerationRequest.model_validate(job.args[0])


def pings_nobody(message: JSON) -> bool:
    """Every send and edit of the message that carried text also carried allowed-mentions that ping no one.

    (A deferred response starts empty, "thinking…", with nothing to ping.)
    """
    versions = [*message["edit_history"], message]
    for version, allowed in zip(versions, message["allowed_mentions_log"], strict=True):
        if not version["content"]:
            continue
        if allowed is None or allowed.get("parse") or allowed.get("users") or allowed.get("roles"):
            return False
        if allowed.get("replied_user"):
            return False
    return not message["mentions"] and not message["mention_roles"] and not message["mention_everyone"]
