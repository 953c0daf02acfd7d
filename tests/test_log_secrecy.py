"""Logs keep secrets: a whole exchange, with every tier made to fail, leaves no question, answer or secret
in any process's log — at the default level and at DEBUG.

Every product process is a real `brandbot` subprocess started as an admin would (worker, Slack over
Socket Mode, Slack over HTTP, Discord), each with real tokens configured and a Redis that needs a password.
What each one writes (standard output and standard error) is scanned line by line. Forced failures:
- the worker: the model's chat template raises, quoting the question (as a template's error may);
  a forged job whose payload (holding a question) fails in RQ;
- Redis: the private server is stopped mid-run while a question arrives, then started again;
- Slack: a request with a wrong signature, whose body holds a question;
- Discord: the interaction webhook answers 429 (the URL holds the interaction token).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import AnyHttpUrl, SecretStr
from rq import Queue
from rq.serializers import JSONSerializer

from brandbot import keys, messages
from brandbot.contract import DoneEvent, parse_reply_event
from brandbot.emulators.discord import DiscordEmulator
from brandbot.emulators.slack import Message, SlackEmulator
from brandbot.settings import Settings, SlackMode
from tests.conftest import REPO, PrivateRedis, free_port, worker_env
from tests.discord_fixtures import ALICE, GENERAL, GUILD_ID, MEMBER_ROLE, is_in_progress
from tests.slack_fixtures import settled, visible

ORIGINAL = r"/webhooks/\d+/[^/]+/messages/@original"
EXPLODE = "explode"  # the word that makes the test model's chat template raise
MIN_ANSWER_CHARS = 16  # shorter answers could occur in a log by chance


def mark() -> str:
    """A word that occurs nowhere but in one question."""
    return f"zq{uuid.uuid4().hex[:14]}"


# ---------------------------------------------------------------------- parts of the run
@dataclass
class Tier:
    """One `brandbot` subprocess; everything it prints goes to `log_path`."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def exploding_model(tiny_model: Path, folder: Path) -> Path:
    """The tiny model, whose chat template raises — quoting the question — when a question says 'explode'."""
    shutil.copytree(tiny_model, folder)
    template = folder / "chat_template.jinja"
    trap = (
        f"{{% if '{EXPLODE}' in messages[-1]['content'] %}}"
        "{{ raise_exception('cannot render: ' ~ messages[-1]['content']) }}{% endif %}"
    )
    template.write_text(trap + template.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def scan(logs: dict[str, str], forbidden: dict[str, str]) -> list[str]:
    """Every log line holding a forbidden value, as 'process: what: line'."""
    found = []
    for process, text in logs.items():
        for line in text.splitlines():
            found += [f"{process}: {what}: {line[:300]}" for what, text in forbidden.items() if text in line]
    return found


async def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return result


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Run:
    """Everything one run started; `forbidden` grows as questions are asked and answers seen."""

    tmp: Path
    redis_server: PrivateRedis
    slack: SlackEmulator
    discord: DiscordEmulator
    base: Settings
    tiers: dict[str, Tier] = field(default_factory=dict)
    forbidden: dict[str, str] = field(default_factory=dict)

    def start(self, name: str, *args: str, **overrides: object) -> Tier:
        settings = self.base.model_copy(update=overrides)
        log_path = self.tmp / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "brandbot.cli", *args],
            env=worker_env(settings),
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        tier = self.tiers[name] = Tier(name, process, log_path)
        return tier

    def alive(self, name: str) -> None:
        tier = self.tiers[name]
        if tier.process.poll() is not None:
            raise AssertionError(f"{name} exited with {tier.process.returncode}:\n{tier.log()}")

    def question(self, what: str) -> str:
        word = mark()
        self.forbidden[f"question ({what})"] = word
        return f"please tell me about {word} today"

    def answers_seen(self) -> None:
        """Every finished answer in Redis becomes forbidden text too."""
        client = self.redis_server.client()
        for key in client.scan_iter(match=keys.reply_stream("*")):
            for _id, fields in client.xrange(key):
                event = parse_reply_event(fields[b"event"])
                if isinstance(event, DoneEvent) and len(event.text.strip()) >= MIN_ANSWER_CHARS:
                    self.forbidden[f"answer of {keys.as_text(key)}"] = event.text.strip()
        client.close()

    async def slack_answer(self, question: str) -> Message:
        """Mention the bot over Socket Mode; the bot's settled reply in the thread."""
        bot = self.slack.bot_user_id
        asked, envelope = await self.slack.send_user_message(
            channel="C1", user="U1", text=f"<@{bot}> {question}", event_type="app_mention"
        )
        await self.slack.wait_for_ack(envelope, timeout=30)

        def reply() -> Message | None:
            mine = [m for m in self.slack.messages_in("C1", asked.ts) if m.user == bot]
            done = [m for m in mine if settled(m) and visible(m) and visible(m) != messages.THINKING]
            return done[-1] if done and len(done) == len(mine) else None

        found: Message = await wait_for(reply, "a settled Slack reply")
        return found


@pytest_asyncio.fixture
async def emulators() -> AsyncIterator[tuple[SlackEmulator, DiscordEmulator]]:
    """Slack and Discord on 127.0.0.1, with tokens of their own (each one a secret of this run)."""
    tokens = {"bot_token": f"xoxb-{secrets.token_hex(12)}", "app_token": f"xapp-{secrets.token_hex(12)}"}
    slack = SlackEmulator(**tokens)
    discord = DiscordEmulator(token=f"discord.{secrets.token_hex(16)}")
    await slack.start()
    await discord.start()
    discord.add_guild(
        GUILD_ID,
        channels=[{"id": GENERAL, "name": "general"}],
        roles=[{"id": MEMBER_ROLE, "name": "member"}],
        members=[{"user": ALICE, "roles": [MEMBER_ROLE]}],
    )
    try:
        yield slack, discord
    finally:
        await slack.stop()
        await discord.stop()


@pytest.fixture
def locked_redis() -> Iterator[PrivateRedis]:
    """A private redis-server that needs a password (one more secret the logs must keep)."""
    server = PrivateRedis(free_port(), password=f"pw-{secrets.token_hex(12)}")
    server.start()
    yield server
    server.stop()


# ---------------------------------------------------------------------- the story
@pytest.mark.timeout(420)  # a limit for a hung run of four processes and a model, not a speed requirement
@pytest.mark.parametrize(
    ("level", "log_format"), [("INFO", "console"), ("DEBUG", "console"), ("DEBUG", "json")]
)
async def test_no_question_answer_or_secret_reaches_any_log_even_when_every_tier_fails(
    level: str,
    log_format: str,
    emulators: tuple[SlackEmulator, DiscordEmulator],
    locked_redis: PrivateRedis,
    settings: Callable[..., Settings],
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    slack, discord = emulators
    signing_secret = f"sign-{secrets.token_hex(16)}"
    base = settings(
        redis_url=locked_redis.url,
        model_dir=exploding_model(tiny_model, tmp_path / "model"),
        log_level=level,
        log_format=log_format,
        worker_wait_seconds=20.0,
        slack_bot_token=SecretStr(slack.bot_token),
        slack_app_token=SecretStr(slack.app_token),
        slack_signing_secret=SecretStr(signing_secret),
        slack_api_url=AnyHttpUrl(slack.api_url),
        discord_token=SecretStr(discord.token),
        discord_api_url=AnyHttpUrl(discord.api_url),
        discord_gateway_url=discord.gateway_url,
    )
    run = Run(tmp_path, locked_redis, slack, discord, base)
    run.forbidden |= {
        "Slack bot token": slack.bot_token,
        "Slack app token": slack.app_token,
        "Slack signing secret": signing_secret,
        "Discord token": discord.token,
        "Redis password": locked_redis.password,
    }
    http_port = free_port()
    try:
        run.start("worker", "worker")
        run.start("slack-socket", "slack")
        run.start("slack-http", "slack", slack_mode=SlackMode.HTTP, slack_http_port=http_port,
                  slack_http_host="127.0.0.1")  # fmt: skip
        run.start("discord", "discord")
        client = locked_redis.client()
        await wait_for(lambda: client.scard(keys.WORKERS_SET), "the worker to start", timeout=120)
        await slack.wait_for_client(timeout=60)
        await wait_for(lambda: port_open(http_port), "the Slack HTTP endpoint", timeout=60)
        await wait_for(discord.registered_commands, "Discord's slash commands", timeout=60)
        for name in run.tiers:
            run.alive(name)

        # A plain exchange over Socket Mode, answered by the real worker.
        answered = await run.slack_answer(run.question("answered in Slack"))
        assert visible(answered) not in (messages.GENERATION_FAILED, messages.PERSONA_UNAVAILABLE)

        # The worker fails while answering: its chat template raises with the question in the message.
        failed = await run.slack_answer(f"{EXPLODE} " + run.question("that breaks the template"))
        assert visible(failed) == messages.PERSONA_UNAVAILABLE

        # A forged job on the model queue: its payload (a question) is not a request; RQ fails it.
        forged_text = run.question("in a forged job")
        queue = Queue(keys.model_queue("default"), connection=client, serializer=JSONSerializer)
        forged = queue.enqueue("worker.job.generate_reply", {"request_id": "forged", "turns": forged_text})
        await wait_for(lambda: forged.get_status(refresh=True) in ("failed", None), "the forged job to fail")

        # A request with a wrong Slack signature, its body holding a question.
        event = {"type": "app_mention", "channel": "C1", "user": "U1", "ts": "1700000000.000100",
                 "text": f"<@{slack.bot_user_id}> " + run.question("with a bad signature")}  # fmt: skip
        url = f"http://127.0.0.1:{http_port}{base.slack_http_path}"
        status, _ = await slack.post_http_event(
            url, slack.build_event_payload(event), signing_secret=signing_secret, bad_signature=True
        )
        assert status == 401

        # Discord answers 429 to the first edit of the interaction's response (its URL holds the token).
        limited = {"message": "You are being rate limited.", "retry_after": 0.3, "global": False}
        discord.fail_next("PATCH", ORIGINAL, status=429, body=limited)
        sent = await discord.send_interaction(
            guild_id=GUILD_ID, channel_id=GENERAL, user=ALICE, member_roles=[MEMBER_ROLE], name="ask",
            options=[{"name": "prompt", "value": run.question("asked in Discord")}],
        )  # fmt: skip
        run.forbidden["Discord interaction token"] = str(sent["token"])

        def discord_answer() -> dict[str, Any] | None:
            original = discord.original_message(str(sent["token"]))
            if original is None or original["flags"] & 128 or is_in_progress(original["content"]):
                return None
            return original

        await wait_for(discord_answer, "the Discord answer")
        assert len(discord.requests_to("PATCH", ORIGINAL)) >= 2, "the 429 was not met"
        run.answers_seen()

        # Redis goes away while a question arrives; every tier meets the outage; then it comes back.
        worker_log_before = len(run.tiers["worker"].log())
        locked_redis.stop()
        bot = slack.bot_user_id
        during = run.question("during the outage")
        asked, envelope = await slack.send_user_message(
            channel="C1", user="U1", text=f"<@{bot}> {during}", event_type="app_mention"
        )
        await slack.wait_for_ack(envelope, timeout=30)
        await wait_for(
            lambda: [m for m in slack.messages_in("C1", asked.ts) if m.user == bot] or slack.ephemerals,
            "the front-end to say it cannot take the question",
        )
        await wait_for(
            lambda: "redis" in run.tiers["worker"].log()[worker_log_before:].lower(),
            "the worker to meet the outage",
        )
        locked_redis.start()
        client = locked_redis.client()
        await wait_for(lambda: client.scard(keys.WORKERS_SET), "the worker to come back", timeout=60)
        after = await run.slack_answer(run.question("after the outage"))
        assert visible(after) not in (messages.GENERATION_FAILED, messages.PERSONA_UNAVAILABLE)
        run.answers_seen()
        client.close()
    finally:
        for tier in run.tiers.values():
            tier.stop()

    logs = {name: tier.log() for name, tier in run.tiers.items()}
    leaks = scan(logs, run.forbidden)
    assert not leaks, f"{len(leaks)} log lines leak:\n" + "\n".join(leaks[:40])
    assert all(logs.values()), f"a process logged nothing: {[n for n, text in logs.items() if not text]}"
    assert any(what.startswith("answer") for what in run.forbidden), "no answer long enough to look for"
    if level == "DEBUG":  # the libraries' own debug lines were on, so the filter met them
        assert "slack_sdk" in logs["slack-socket"] and "discord" in logs["discord"].lower()
    if log_format == "json":
        for name, text in logs.items():
            for line in text.splitlines():
                assert isinstance(json.loads(line), dict), f"{name}: not one JSON object: {line[:200]}"
