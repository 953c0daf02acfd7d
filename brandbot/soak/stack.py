"""The system under soak on this machine: Redis, the emulators, workers, front-ends, and who restarts them.

```python
stack = SoakStack(StackPlan(run_dir=Path(".soak"), model_dir=Path("models/tiny")))
await stack.start()      # everything up and connected
stack.kill("worker-1")   # SIGKILL; the restart policy brings it back
await stack.stop()
```

Each process is a real `brandbot worker|slack|discord` in a session of its own, its output in
`<run_dir>/logs/<name>.log`. The restart policy is Docker Compose's `restart: always`: a process that
exits is started again after `RESTART_DELAY_SECONDS`. Nothing else is done for them: recovering is theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from brandbot import keys
from brandbot.embedded_valkey import EmbeddedValkey
from brandbot.emulators.discord import DiscordEmulator, make_user
from brandbot.emulators.slack import SlackEmulator

RESTART_DELAY_SECONDS = 1.0
"""Like a container's restart back-off, short: a soak measures recovery, not the back-off."""
READY_SECONDS = 180.0
"""Longest wait for every process to be up and connected (a model load on a busy CPU)."""
STOP_GRACE_SECONDS = 10.0
POLL_SECONDS = 0.2
MODEL_NAME = "default"
POISON_MARKER = "SOAK-POISON-QUESTION"
"""A question holding this kills the worker that takes it (the worker's test fault hook)."""
STALL_MARKER = "SOAK-STALL-QUESTION"
"""A question holding this stalls the engine of the worker that takes it (the worker's test fault hook)."""
GUILD_ID = 820000000000000001
DISCORD_CHANNEL_BASE = 820000000000001000
DISCORD_USER_BASE = 920000000000000000


@dataclass(frozen=True)
class StackPlan:
    run_dir: Path
    model_dir: Path
    workers: int = 2
    worker_concurrency: int = 8
    max_new_tokens: int = 24
    channels: int = 50
    users: int = 200
    stall_watchdog_seconds: float = 10.0


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a signal to it (or its group) reaches no one else
            )
        self.starts += 1

    def exited(self) -> bool:
        return self.popen is None or self.popen.poll() is not None

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        if self.popen is not None:
            try:
                self.popen.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout=5)


def brandbot_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "brandbot.cli", *args]


@dataclass
class SoakStack:
    plan: StackPlan
    slack: SlackEmulator = field(default_factory=SlackEmulator)
    discord: DiscordEmulator = field(default_factory=DiscordEmulator)
    processes: dict[str, Process] = field(default_factory=dict)
    redis_url: str = ""
    _valkey: EmbeddedValkey | None = None
    _keeper: asyncio.Task[None] | None = None
    _stopping: bool = False

    @property
    def log_dir(self) -> Path:
        return self.plan.run_dir / "logs"

    @property
    def prompts_dir(self) -> Path:
        return self.plan.run_dir / "prompts"

    def worker_names(self) -> list[str]:
        return [name for name in self.processes if name.startswith("worker")]

    def discord_channels(self) -> list[int]:
        return [DISCORD_CHANNEL_BASE + index for index in range(self.plan.channels)]

    def discord_user(self, index: int) -> dict[str, object]:
        return make_user(DISCORD_USER_BASE + index, f"person{index}")

    async def start(self) -> None:
        self.plan.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        write_prompts(self.prompts_dir, max_new_tokens=self.plan.max_new_tokens)
        self._valkey = EmbeddedValkey(run_dir=self.plan.run_dir, port=free_port())
        self.redis_url = await asyncio.to_thread(self._valkey.start, database=0)
        await self.slack.start()
        await self.discord.start()
        self.discord.add_guild(
            GUILD_ID,
            channels=[{"id": c, "name": f"soak-{i}"} for i, c in enumerate(self.discord_channels())],
            members=[self.discord_user(i) for i in range(self.plan.users)],
        )
        for index in range(self.plan.workers):
            self._add(f"worker-{index + 1}", brandbot_command("worker"), self._worker_env())
        self._add("slack", brandbot_command("slack"), self._slack_env())
        self._add("discord", brandbot_command("discord"), self._discord_env())
        for process in self.processes.values():
            process.start()
        self._keeper = asyncio.create_task(self._keep())
        await self.wait_ready()

    async def stop(self) -> None:
        self._stopping = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in self.processes.values()))
        await self.slack.stop()
        await self.discord.stop()
        if self._valkey is not None:
            await asyncio.to_thread(self._valkey.stop)

    # -- faults' handles ----------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """SIGKILL, no warning: the restart policy starts it again."""
        self.processes[name].signal(signal.SIGKILL)

    async def restart_redis(self) -> None:
        """Stop Redis (it writes its append-only file) and start it again on the same port and data."""
        assert self._valkey is not None
        await asyncio.to_thread(self._valkey.stop)
        await asyncio.sleep(1.0)  # everyone notices it gone
        await asyncio.to_thread(self._valkey.start, database=0)

    def restarts(self) -> int:
        return sum(p.starts - 1 for p in self.processes.values())

    # -- readiness ----------------------------------------------------------------------------------
    async def wait_ready(self, timeout: float = READY_SECONDS) -> None:  # noqa: ASYNC109
        """Every worker beating with live slots, the Slack socket open and the Discord session ready."""
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(self._ready):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the soak's processes were not ready within {timeout:.0f} s: {self.problem()}"
                )
            await asyncio.sleep(POLL_SECONDS)

    def _ready(self) -> bool:
        return self.live_workers() >= self.plan.workers and self.front_ends_connected()

    def front_ends_connected(self) -> bool:
        return self.slack.connected_clients() > 0 and self.discord.live_sessions() > 0

    def live_workers(self) -> int:
        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=2)
            try:
                live = 0
                for name in client.smembers(keys.WORKERS_SET):
                    record = client.hgetall(keys.worker_heartbeat(keys.as_text(name)))
                    live += int(record.get(b"live_slots") or 0) > 0
                return live
            finally:
                client.close()
        except redis.RedisError:
            return 0

    def problem(self) -> str:
        dead = [p.name for p in self.processes.values() if p.exited()]
        workers = f"{self.live_workers()}/{self.plan.workers}"
        return f"live workers {workers}, exited: {dead or 'none'} (logs: {self.log_dir})"

    # -- the restart policy -------------------------------------------------------------------------
    async def _keep(self) -> None:
        exited_at: dict[str, float] = {}
        while not self._stopping:
            now = time.monotonic()
            for process in self.processes.values():
                if not process.exited():
                    continue
                first_seen = exited_at.setdefault(process.name, now)
                if now - first_seen >= RESTART_DELAY_SECONDS:
                    exited_at.pop(process.name)
                    process.start()
            await asyncio.sleep(POLL_SECONDS)

    # -- environments -------------------------------------------------------------------------------
    def _add(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.processes[name] = Process(name, argv, env, self.log_dir / f"{name}.log")

    def _common_env(self) -> dict[str, str]:
        kept = {k: v for k, v in os.environ.items() if not k.startswith("BRANDBOT_")}
        return {
            **kept,
            "PYTHONUNBUFFERED": "1",
            "BRANDBOT_REDIS_URL": self.redis_url,
            "BRANDBOT_PROMPTS_DIR": str(self.prompts_dir.resolve()),
            "BRANDBOT_MODEL_NAME": MODEL_NAME,
            "BRANDBOT_LOG_LEVEL": "INFO",
            # The emulators have no rate limits; the chats' real ones are what the 1 s default respects.
            "BRANDBOT_EDIT_INTERVAL_SECONDS": "0.25",
        }

    def _worker_env(self) -> dict[str, str]:
        return {
            **self._common_env(),
            "BRANDBOT_MODEL_DIR": str(self.plan.model_dir.resolve()),
            "BRANDBOT_ENGINE": "transformers",
            "BRANDBOT_WORKER_CONCURRENCY": str(self.plan.worker_concurrency),
            "BRANDBOT_JOB_HEARTBEAT_TTL_SECONDS": "5",
            "BRANDBOT_RECOVERY_INTERVAL_SECONDS": "2",
            "BRANDBOT_DRAIN_GRACE_SECONDS": "5",
            "BRANDBOT_ENGINE_STALL_SECONDS": str(self.plan.stall_watchdog_seconds),
            "BRANDBOT_TEST_DIE_ON_PROMPT_TEXT": POISON_MARKER,
            "BRANDBOT_TEST_STALL_ON_PROMPT_TEXT": STALL_MARKER,
        }

    def _slack_env(self) -> dict[str, str]:
        return {
            **self._common_env(),
            "BRANDBOT_SLACK_BOT_TOKEN": self.slack.bot_token,
            "BRANDBOT_SLACK_APP_TOKEN": self.slack.app_token,
            "BRANDBOT_SLACK_API_URL": self.slack.api_url,
        }

    def _discord_env(self) -> dict[str, str]:
        return {
            **self._common_env(),
            "BRANDBOT_DISCORD_TOKEN": self.discord.token,
            "BRANDBOT_DISCORD_API_URL": self.discord.api_url,
            "BRANDBOT_DISCORD_GATEWAY_URL": self.discord.gateway_url,
        }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_prompts(folder: Path, *, max_new_tokens: int) -> None:
    """One persona with short answers (the soak is about none lost, not the tiny model's prose), and
    rate limits no soak reaches (the limiter is not what is measured)."""
    (folder / "personas").mkdir(parents=True, exist_ok=True)
    (folder / "personas" / "default.yaml").write_text(
        "display_name: Brandbot\n"
        "description: The soak's persona.\n"
        f"model: {MODEL_NAME}\n"
        "system_prompt: |\n  You are {{ assistant_name }}. Answer in one short sentence.\n"
        f"sampling:\n  temperature: 0.7\n  max_new_tokens: {max_new_tokens}\n",
        encoding="utf-8",
    )
    unlimited = "  access:\n    rate_limit: {questions_per_minute: 100000, burst: 100000}\n"
    (folder / "routing.yaml").write_text(
        f"default_persona: default\nmodels: [{MODEL_NAME}]\nslack:\n{unlimited}discord:\n{unlimited}",
        encoding="utf-8",
    )
