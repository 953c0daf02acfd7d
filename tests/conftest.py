"""Real parts for every test: one Redis database flushed per test, a tiny model built once, real workers.

Only the GPU is missing here; tests that need it carry the `gpu` marker and skip with a reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
import redis
from pydantic import AnyHttpUrl, SecretStr
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

from bots.slack import build_slack_app
from brandbot import keys, messages
from brandbot.contract import DoneEvent, FinishReason
from brandbot.emulators.slack import Message, SlackEmulator
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.queue import RequestQueue
from brandbot.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def redis_url_for_this_worker() -> str:
    """`BRANDBOT_TEST_REDIS_URL` (database 9 by default); each pytest-xdist worker takes the next database,
    so parallel workers never flush each other's data."""
    base = os.environ.get("BRANDBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    offset = int(worker.removeprefix("gw") or 0)
    if not offset:
        return base
    stem, _, database = base.rpartition("/")
    return f"{stem}/{int(database or 0) + offset}"


TEST_REDIS_URL = redis_url_for_this_worker()

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """A dedicated Redis database over TCP, flushed before and after each test."""
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"no Redis at {TEST_REDIS_URL}: start redis-server (scripts/test does it for you)")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def demo_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real demo model (SmolLM2-135M-Instruct), built once and kept in pytest's cache between runs."""
    from worker.demo_model import is_demo_model

    cache = getattr(request.config, "cache", None)
    folder = (
        cache.mkdir("brandbot-demo-model") / "demo"
        if cache is not None
        else tmp_path_factory.mktemp("models") / "demo"
    )
    if not is_demo_model(folder):  # built by the command a newcomer would type
        built = subprocess.run(
            [sys.executable, "-m", "brandbot.cli", "model", "demo", str(folder)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert built.returncode == 0 and is_demo_model(folder), built.stderr
        # Not a terminal here: the progress is one plain line per step, on standard error.
        assert "Building the demo model: [3/3] saving safetensors" in built.stderr, built.stderr
    return folder


@pytest.fixture
def prompts_dir(tmp_path: Path) -> Path:
    """A private copy of the shipped prompt files, so a test may edit them."""
    return Path(shutil.copytree(REPO / "prompts", tmp_path / "prompts"))


@pytest.fixture
def settings(redis_client: redis.Redis, prompts_dir: Path, tiny_model: Path) -> Callable[..., Settings]:
    """Settings built from arguments only (never from the developer's environment or `.env`)."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "redis_url": TEST_REDIS_URL,
            "prompts_dir": prompts_dir,
            "model_dir": tiny_model,
            # The tiny CPU model on the CPU engine everywhere: `auto` would pick exllamav3 on a GPU machine.
            "engine": "transformers",
            "worker_wait_seconds": 5.0,
            "edit_interval_seconds": 0.2,
            **overrides,
        }
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as environment variables, for a `brandbot` subprocess."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        secret = getattr(settings, name)
        if hasattr(secret, "get_secret_value"):
            value = secret.get_secret_value()
        env[f"BRANDBOT_{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return env


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRANDBOT_")}
    return {**env, **settings_env(settings), "PYTHONUNBUFFERED": "1", **extra}


@dataclass
class WorkerProcess:
    """A real `brandbot worker` subprocess; its output goes to `log_path`."""

    process: subprocess.Popen[bytes]
    log_path: Path
    name_hint: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def wait_for_worker(
    client: redis.Redis, process: subprocess.Popen[bytes], log_path: Path, count: int = 1
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"worker exited with {process.returncode}:\n{log_path.read_text()}")
        if (
            sum(
                1
                for name in client.smembers(keys.WORKERS_SET)
                if client.exists(keys.worker_heartbeat(name.decode()))
            )
            >= count
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"worker did not start within 60 s:\n{log_path.read_text()}")


@pytest.fixture
def start_worker(
    redis_client: redis.Redis, settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a real `brandbot worker` (CPU engine, tiny model); all are stopped at the end."""
    started: list[WorkerProcess] = []

    def start(
        *,
        wait: bool = True,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        **overrides: object,
    ) -> WorkerProcess:
        worker_settings = settings(**overrides)
        log_path = tmp_path / f"worker-{len(started)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "brandbot.cli", "worker", *args],
            env=worker_env(worker_settings, **(env or {})),
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        handle = WorkerProcess(process, log_path)
        started.append(handle)
        if wait:
            wait_for_worker(
                redis_client, process, log_path, count=len([w for w in started if w.process.poll() is None])
            )
        return handle

    yield start
    for handle in started:
        if handle.process.poll() is None:
            handle.process.kill()
            handle.process.wait(timeout=10)


@pytest.fixture
def worker_process(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker()


@pytest_asyncio.fixture
async def slack_emulator() -> AsyncIterator[SlackEmulator]:
    emulator = SlackEmulator()
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


@dataclass
class SlackBot:
    """The Slack front-end running in this test's event loop, connected to the emulator over Socket Mode."""

    emulator: SlackEmulator
    settings: Settings
    queue: RequestQueue

    def bot_messages(self, channel: str, thread_ts: str) -> list[Message]:
        return [
            m for m in self.emulator.messages_in(channel, thread_ts) if m.user == self.emulator.bot_user_id
        ]


@asynccontextmanager
async def slack_bot_running(emulator: SlackEmulator, base: Settings) -> AsyncIterator[SlackBot]:
    """The real Slack front-end in this event loop, connected to the emulator over Socket Mode."""
    bot_settings = base.model_copy(
        update={
            "slack_bot_token": SecretStr(emulator.bot_token),
            "slack_app_token": SecretStr(emulator.app_token),
            "slack_api_url": AnyHttpUrl(emulator.api_url),
        }
    )
    queue = RequestQueue.from_settings(bot_settings)
    app = build_slack_app(
        settings=bot_settings, queue=queue, prompts=LivePromptLibrary(bot_settings.prompts_dir)
    )
    handler = AsyncSocketModeHandler(app, emulator.app_token, ping_interval=1)
    await handler.connect_async()
    await emulator.wait_for_client()
    try:
        yield SlackBot(emulator, bot_settings, queue)
    finally:
        await handler.close_async()
        await queue.close()


@pytest_asyncio.fixture
async def slack_bot(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], request: pytest.FixtureRequest
) -> AsyncIterator[SlackBot]:
    """The Slack front-end; parametrize indirectly with a dict of settings overrides."""
    async with slack_bot_running(slack_emulator, settings(**getattr(request, "param", {}))) as bot:
        yield bot


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PrivateRedis:
    """A redis-server of this test's own, which the test may stop and start again (same port)."""

    port: int
    process: subprocess.Popen[bytes] | None = None
    appendonly: bool = False
    """Persist every write to an append-only file (in `data_dir`), so data survives a restart."""
    data_dir: Path | None = None
    password: str | None = None
    """Set: the server requires it (`requirepass`), and `url` carries it."""

    @property
    def url(self) -> str:
        login = f":{self.password}@" if self.password else ""
        return f"redis://{login}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> None:
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                *(["--dir", str(self.data_dir)] if self.data_dir is not None else []),
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private redis-server with append-only persistence: what it holds survives a restart."""
    server = PrivateRedis(free_port(), appendonly=True, data_dir=tmp_path / "redis-data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis(free_port())
    server.start()
    yield server
    server.stop()


def set_sampling(persona: Path, **values: float) -> None:
    """Set a persona file's sampling values (e.g. `max_new_tokens=16`); each key must be in the file once."""
    text = persona.read_text()
    for key, value in values.items():
        text, count = re.subn(rf"(?m)^(\s+{key}:) .*$", rf"\g<1> {value}", text)
        assert count == 1, f"{key} is not in {persona} exactly once"
    persona.write_text(text)


def length_note(done: DoneEvent) -> str:
    """The note a front-end adds under an answer the worker cut at its length limit (a `length` notice)."""
    return f"\n\n_{messages.CUT_BY_LENGTH}_" if done.finish_reason is FinishReason.LENGTH else ""
