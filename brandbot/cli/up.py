"""`brandbot up`: everything on one machine, from nothing to a first answer, and nothing left behind.

In order, one line each: Redis (the one at `BRANDBOT_REDIS_URL` if it answers, otherwise an embedded
Valkey on that port, see `brandbot.embedded_valkey`), the model (`BRANDBOT_MODEL_DIR`, or the demo model
built once into `models/demo`), a worker (its platform tokens removed), each front-end whose credentials
are set, and — with none set — the terminal chat in the foreground. The other processes write their logs
to files in the run folder.

Every process it starts dies with it: children run in their own sessions (the terminal's Ctrl-C goes to
the chat and to `up` only), are stopped on exit, Ctrl-C, SIGTERM or SIGHUP (SIGTERM, then SIGKILL after a
grace period, or at once on a second Ctrl-C), and on Linux get the kernel's parent-death signal in case
`up` itself is killed outright.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import redis
import typer

from brandbot import keys
from brandbot.cli.chat import redacted_url
from brandbot.connections import sync_client
from brandbot.embedded_valkey import EmbeddedValkey, RedisUnavailable, die_with_parent
from brandbot.errors import BrandbotError
from brandbot.settings import Settings

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""Where `up` may start a Redis itself: the address it was told to use must be this machine's."""
PROBE_TIMEOUT_SECONDS = 2.0
WORKER_READY_SECONDS = 900.0
"""Longest wait for the worker to load its model and take its queue (a large model on a slow disk)."""
STOP_GRACE_SECONDS = 10.0
"""After SIGTERM, a front-end or the chat gets this long before SIGKILL (a worker: its drain grace too)."""
POLL_SECONDS = 0.1
DEMO_MODEL_NAME = "SmolLM2-135M-Instruct"


class Shutdown(Exception):
    """SIGTERM or SIGHUP reached `up`: stop everything and leave."""


class ModelProblem(BrandbotError):
    """The configured model folder does not exist or is not a model."""


def say(component: str, line: str) -> None:
    typer.echo(f"{component:<8}{line}")


# -- the processes ------------------------------------------------------------------------------------
@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None
    grace_seconds: float
    own_session: bool


@dataclass
class Supervisor:
    """The processes `up` started; `stop_all` leaves none of them (nor their own children) running."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)
    hurry: bool = False

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        grace_seconds: float = STOP_GRACE_SECONDS,
        foreground: bool = False,
    ) -> Child:
        """Start `argv`; a background child logs to `<log_dir>/<name>.log` in a session of its own."""
        log_path = None if foreground else self.log_dir / f"{name}.log"
        log = None if log_path is None else log_path.open("ab")
        try:
            process = subprocess.Popen(
                argv,
                env=env,
                stdin=None if foreground else subprocess.DEVNULL,
                stdout=log,
                stderr=None if log is None else subprocess.STDOUT,
                start_new_session=not foreground,
                preexec_fn=die_with_parent,  # safe: `up` starts no threads
            )
        finally:
            if log is not None:
                log.close()
        child = Child(name, process, log_path, grace_seconds, own_session=not foreground)
        self.children.append(child)
        return child

    def exited(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop_all(self) -> None:
        """SIGTERM to each (newest first), a grace period, then SIGKILL to whatever of them is left."""
        for child in reversed(self.children):
            self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + max((c.grace_seconds for c in self.children), default=0.0)
        for child in reversed(self.children):
            while child.process.poll() is None and time.monotonic() < deadline and not self.hurry:
                time.sleep(POLL_SECONDS)
        for child in self.children:
            self._signal(child, signal.SIGKILL)  # the leader and anything still in its session
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5)

    @staticmethod
    def _signal(child: Child, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if child.own_session:
                os.killpg(child.process.pid, sig)
            elif child.process.poll() is None:
                child.process.send_signal(sig)


@contextlib.contextmanager
def signals_stop_everything(supervisor: Supervisor) -> Iterator[None]:
    """SIGTERM and SIGHUP end the start-up like Ctrl-C does (an exception in the main thread)."""

    def shutdown(signum: int, _frame: object) -> None:
        raise Shutdown(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, shutdown) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        # While children stop, a second Ctrl-C or SIGTERM only hurries them.
        def hurry(_signum: int, _frame: object) -> None:
            supervisor.hurry = True

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, hurry)
        try:
            supervisor.stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.signal(signal.SIGINT, signal.default_int_handler)


# -- Redis --------------------------------------------------------------------------------------------
def redis_answers(settings: Settings) -> str | None:
    """The server's name and version if Redis answers at `BRANDBOT_REDIS_URL`; None if nothing listens.

    Raises `RedisUnavailable` when something is there that cannot be used: a Redis that refuses these
    credentials, or a listener that is not Redis at all.
    """
    where = redacted_url(settings.redis_url)
    parts = urlsplit(settings.redis_url)
    if not settings.redis_sentinels and parts.scheme in ("redis", "rediss"):
        try:
            socket.create_connection(
                (parts.hostname or "127.0.0.1", parts.port or 6379), timeout=PROBE_TIMEOUT_SECONDS
            ).close()
        except ConnectionRefusedError:
            return None
        except OSError as error:
            raise RedisUnavailable(f"cannot reach Redis at {where}: {error.strerror or error}") from None
    client = sync_client(
        settings, socket_connect_timeout=PROBE_TIMEOUT_SECONDS, socket_timeout=PROBE_TIMEOUT_SECONDS
    )
    try:
        client.ping()
        info: Any = {}
        with contextlib.suppress(redis.RedisError):  # an ACL user may not be allowed INFO
            info = client.info("server")
    except redis.AuthenticationError:
        raise RedisUnavailable(
            f"Redis at {where} refuses the user or password in BRANDBOT_REDIS_URL"
        ) from None
    except redis.ResponseError as error:
        if "NOAUTH" in str(error) or "WRONGPASS" in str(error):
            raise RedisUnavailable(
                f"Redis at {where} wants a password: put it in BRANDBOT_REDIS_URL"
            ) from None
        raise RedisUnavailable(f"{where} does not answer like Redis ({str(error)[:80]})") from None
    except redis.RedisError:
        raise RedisUnavailable(
            f"port {parts.port or 6379} on {parts.hostname} is taken by something that is "
            "not Redis; free it or set BRANDBOT_REDIS_URL to another port"
        ) from None
    finally:
        client.close()
    if "valkey_version" in info:
        return f"Valkey {info['valkey_version']}"
    return f"Redis {info['redis_version']}" if "redis_version" in info else "Redis"


def ensure_redis(settings: Settings, run_dir: Path, started: list[EmbeddedValkey]) -> str:
    """The Redis URL every process uses; an embedded server `up` had to start is added to `started`."""
    where = redacted_url(settings.redis_url)
    server = redis_answers(settings)
    if server is not None:
        say("Redis", f"{server} answers at {where}")
        return settings.redis_url
    parts = urlsplit(settings.redis_url)
    if parts.hostname not in LOCAL_HOSTS or parts.scheme != "redis":
        raise RedisUnavailable(
            f"no Redis answers at {where}, and `up` starts one only for a plain redis:// URL on this machine"
        )
    database = int(parts.path.strip("/") or 0)
    valkey = EmbeddedValkey(run_dir=run_dir, port=parts.port or 6379)
    started.append(valkey)  # before start(): a Ctrl-C during it still stops it
    url = valkey.start(database=database)
    say(
        "Redis",
        f"none answered at {where}: started an embedded Valkey on 127.0.0.1:{valkey.port} "
        f"(data {valkey.data_dir}, password in {valkey.password_file})",
    )
    return url


# -- the model ----------------------------------------------------------------------------------------
def check_model_dir(settings: Settings) -> None:
    """Before anything starts: a configured model folder must exist and hold a model."""
    folder = settings.model_dir
    if folder is None:
        return
    if not folder.is_dir():
        raise ModelProblem(f"BRANDBOT_MODEL_DIR: no such folder: {folder}")
    if not (folder / "config.json").is_file():
        raise ModelProblem(f"BRANDBOT_MODEL_DIR: {folder} is not a model folder (it has no config.json)")


def ensure_model(settings: Settings, demo_dir: Path) -> Path:
    """The configured model folder, else the demo model (built on first use)."""
    if settings.model_dir is not None:
        say("model", f"{settings.model_dir}")
        return settings.model_dir.resolve()
    from worker.demo_model import build_demo_model, is_demo_model

    if not is_demo_model(demo_dir):
        say("model", f"building the demo model ({DEMO_MODEL_NAME}) in {demo_dir} (once)…")
        build_demo_model(demo_dir)
    say("model", f"{demo_dir} ({DEMO_MODEL_NAME}, the demo; set BRANDBOT_MODEL_DIR to use your own)")
    return demo_dir.resolve()


# -- the worker and the front-ends --------------------------------------------------------------------
def wait_until_ready(settings: Settings, url: str, child: Child) -> dict[str, str]:
    """The heartbeat record of a worker serving `settings.model_name`, once one has a live slot."""
    client = sync_client(settings.model_copy(update={"redis_url": url}), socket_timeout=PROBE_TIMEOUT_SECONDS)
    deadline = time.monotonic() + WORKER_READY_SECONDS
    try:
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise BrandbotError(
                    f"the worker stopped while starting (exit {child.process.returncode}): "
                    f"{last_line(child.log_path)} (log: {child.log_path})"
                )
            for name in client.smembers(keys.WORKERS_SET):
                record: Any = client.hgetall(keys.worker_heartbeat(keys.as_text(name)))
                found = {keys.as_text(k): keys.as_text(v) for k, v in record.items()}
                if found.get("model") == settings.model_name and int(found.get("live_slots") or 1) > 0:
                    return found
            time.sleep(POLL_SECONDS * 2)
    finally:
        client.close()
    raise BrandbotError(
        f"the worker was not ready within {WORKER_READY_SECONDS:.0f} s (log: {child.log_path})"
    )


def last_line(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


def brandbot_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "brandbot.cli", *args]


def run_up(settings: Settings, *, run_dir: Path, demo_dir: Path) -> int:
    """Start everything; returns the exit status once the chat ends (or a signal, or a child's death)."""
    from worker.environment import sealed_environment

    check_model_dir(settings)
    log_dir = run_dir.resolve() / "logs"
    try:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_dir.mkdir(exist_ok=True)
    except OSError as error:
        raise RedisUnavailable(f"cannot write the run folder {run_dir}: {error.strerror}") from None
    supervisor = Supervisor(log_dir=log_dir)
    valkey: list[EmbeddedValkey] = []  # stopped last, after every process that uses it
    try:
        try:
            with signals_stop_everything(supervisor):
                url = ensure_redis(settings, run_dir, valkey)
                model_dir = ensure_model(settings, demo_dir)
                env = {
                    **os.environ,
                    "BRANDBOT_REDIS_URL": url,
                    "BRANDBOT_MODEL_DIR": str(model_dir),
                    "PYTHONUNBUFFERED": "1",
                }
                worker = supervisor.spawn(
                    "worker",
                    brandbot_command("worker"),
                    sealed_environment(env),  # the GPU tier gets no platform credentials
                    grace_seconds=settings.drain_grace_seconds + STOP_GRACE_SECONDS,
                )
                say("worker", f"loading the model (pid {worker.process.pid}, log {worker.log_path})…")
                ready = wait_until_ready(settings, url, worker)
                say(
                    "worker",
                    f"ready: model {settings.model_name}, engine {ready.get('engine', '?')} "
                    f"({ready.get('mode', '?')}), {ready.get('concurrency', '?')} answers at a time",
                )
                front_ends = []
                if settings.slack_bot_token is not None:
                    front_ends.append(supervisor.spawn("slack", brandbot_command("slack"), env))
                if settings.discord_token is not None:
                    front_ends.append(supervisor.spawn("discord", brandbot_command("discord"), env))
                for front_end in front_ends:
                    say(front_end.name, f"started (pid {front_end.process.pid}, log {front_end.log_path})")
                if front_ends:
                    say("up", "running; Ctrl-C stops everything")
                    return watch(supervisor)
                say(
                    "chat", f"no Slack or Discord token: the terminal chat (Ctrl-D leaves; logs in {log_dir})"
                )
                return chat_in_foreground(supervisor, env)
        finally:
            for server in valkey:
                server.stop()
    except KeyboardInterrupt:
        typer.echo("stopped (Ctrl-C): nothing left running", err=True)
        return 130
    except Shutdown as signal_name:
        typer.echo(f"stopped ({signal_name}): nothing left running", err=True)
        return 128 + signal.Signals[str(signal_name)].value


def watch(supervisor: Supervisor) -> int:
    """Until a signal, or until a child dies (then everything stops: a half-running bot helps no one)."""
    while True:
        gone = supervisor.exited()
        if gone is not None:
            typer.echo(
                f"brandbot: {gone.name} stopped (exit {gone.process.returncode}): {last_line(gone.log_path)} "
                f"(log: {gone.log_path})",
                err=True,
            )
            return 1
        time.sleep(POLL_SECONDS * 5)


def chat_in_foreground(supervisor: Supervisor, env: dict[str, str]) -> int:
    """The chat shares `up`'s terminal: Ctrl-C is the chat's (it stops an answer); `up` ends with it."""
    chat = supervisor.spawn("chat", brandbot_command("chat"), env, foreground=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the chat has the same Ctrl-C and decides what it means
    try:
        while True:
            code = chat.process.poll()
            if code is not None:
                return code
            gone = supervisor.exited()
            if gone is not None and gone is not chat:
                typer.echo(f"brandbot: the {gone.name} stopped: {last_line(gone.log_path)}", err=True)
                return 1
            time.sleep(POLL_SECONDS)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def up(
    run_dir: Annotated[
        Path, typer.Option(help="Folder for the embedded Redis's data and password, and the logs.")
    ] = Path(".run"),
    demo_model: Annotated[
        Path, typer.Option(help="Where the demo model is built when BRANDBOT_MODEL_DIR is unset.")
    ] = Path("models/demo"),
) -> None:
    """Run everything here: Redis (embedded if none answers), a worker, and the front-ends or the chat."""
    from brandbot.cli import fail, settings_or_exit

    settings = settings_or_exit()
    try:
        status = run_up(settings, run_dir=run_dir, demo_dir=demo_model)
    except RedisUnavailable as error:
        fail(str(error), code=2)
    except ModelProblem as error:
        fail(str(error), code=2)
    except BrandbotError as error:
        fail(str(error))
    raise typer.Exit(status)
