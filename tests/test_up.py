"""`brandbot up` as a newcomer meets it: no Redis, no model configured, a question typed, nothing left over.

Every test runs the real command in a subprocess and then looks, in /proc, for anything it started: the
processes descended from it (recorded while it ran) and the embedded Valkey's port.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_REDIS_URL, set_sampling
from tests.test_demo_model import reads_as_sentences

WAIT_SECONDS = 240.0  # a limit for a hung process on a crowded CI machine, not a speed requirement
PROMPT = "you> "


# -- processes, as /proc shows them ---------------------------------------------------------------------
def process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, start time) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[0], fields[19])
    return table


def descendants(pid: int) -> dict[int, str]:
    """Every living process below `pid`, with its start time (a reused pid is another process)."""
    table = process_table()
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, state, started) in table.items():
            if ppid == parent and child not in found and state != "Z":
                found[child] = started
                frontier.append(child)
    return found


def survivors(recorded: dict[int, str]) -> list[str]:
    """The recorded processes still running (zombies waiting for init count as gone), with their command."""
    table = process_table()
    alive = []
    for pid, started in recorded.items():
        if pid in table and table[pid][2] == started and table[pid][1] != "Z":
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            alive.append(f"{pid}: {command}")
    return alive


def port_answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def processes_using(folder: Path) -> list[int]:
    """Processes whose command line names `folder` (the embedded Valkey runs from its config file there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(folder).encode() in command and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- running `brandbot up` ----------------------------------------------------------------------------
UP_COMMAND = (sys.executable, "-m", "brandbot.cli", "up")
README_RUN_COMMAND = ("scripts/run",)
"""README's run command: the venv (in CI, the fresh one `.ci/run` has just built), then `brandbot up`."""


class Up:
    """A `brandbot up` subprocess whose standard output is read as it comes."""

    def __init__(
        self, tmp_path: Path, env: dict[str, str], *args: str, command: tuple[str, ...] = UP_COMMAND
    ) -> None:
        self.run_dir = tmp_path / "run"
        self.stderr_path = tmp_path / "up.stderr"
        self.process = subprocess.Popen(
            # Relative, as `scripts/run`'s default `.run` is.
            [
                *command,
                "--run-dir",
                os.path.relpath(self.run_dir, REPO),
                *args,
            ],
            env=env,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr_path.open("wb"),
        )
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        self.output = ""

    def read_until(self, text: str, *, count: int = 1) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + WAIT_SECONDS
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while self.output.count(text) < count:
                assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output}\n{self.stderr()}"
                if selector.select(timeout=0.5):
                    chunk = self.process.stdout.read()
                    if not chunk:
                        raise AssertionError(f"up ended before {text!r}:\n{self.output}\n{self.stderr()}")
                    self.output += chunk.decode(errors="replace")
        return self.output

    def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode())
        self.process.stdin.flush()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def finish(self) -> int:
        """Wait for the exit; the rest of standard output is kept."""
        code = self.process.wait(timeout=WAIT_SECONDS)
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), True)
        self.output += self.process.stdout.read().decode(errors="replace")
        return code


def up_env(prompts_dir: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """The developer's environment minus every BRANDBOT_ setting (and no `.env`: cwd is the repo, which
    must not have one in CI), plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRANDBOT_")}
    return {
        **env,
        "BRANDBOT_REDIS_URL": redis_url,
        "BRANDBOT_PROMPTS_DIR": str(prompts_dir),
        "BRANDBOT_DRAIN_GRACE_SECONDS": "5",
        **extra,
    }


@pytest.fixture
def running() -> Iterator[list[Up]]:
    """Whatever a test started is killed at its end, pass or fail."""
    started: list[Up] = []
    yield started
    for up in started:
        if up.process.poll() is None:
            for pid in descendants(up.process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            up.process.kill()
            up.process.wait(timeout=10)


def gone_within(recorded: dict[int, str], port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while survivors(recorded) or port_answers(port):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"left running: {survivors(recorded)}; port {port} answers: {port_answers(port)}"
            )
        time.sleep(0.1)


# -- the tests ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(480)  # the demo model is built once per session (about 30 s idle)
def test_up_without_redis_starts_valkey_the_demo_model_and_the_chat_and_leaves_nothing(
    demo_model: Path, prompts_dir: Path, tmp_path: Path, running: list[Up]
) -> None:
    persona = prompts_dir / "personas" / "default.yaml"
    set_sampling(persona, temperature=0)
    port = free_port()
    # No BRANDBOT_MODEL_DIR: up uses the demo model, here the one the session built already.
    env = up_env(prompts_dir, f"redis://127.0.0.1:{port}/0")
    up = Up(tmp_path, env, "--demo-model", str(demo_model), command=README_RUN_COMMAND)
    running.append(up)
    up.read_until(PROMPT)
    recorded = descendants(up.process.pid)
    up.type("Hello! Who are you?\n")
    up.read_until(PROMPT, count=2)
    assert up.process.stdin is not None
    up.process.stdin.close()  # Ctrl-D
    assert up.finish() == 0, up.stderr()

    lines = up.output.splitlines()
    assert lines[0].startswith(
        f"Redis   none answered at redis://127.0.0.1:{port}/0: started an embedded Valkey"
    )
    assert lines[1].startswith("model   ")
    assert "worker  ready: model default, engine transformers" in up.output
    assert (
        f"chat    no Slack or Discord token: the terminal chat (Ctrl-D leaves; logs in {up.run_dir}"
        in up.output
    )
    answer = up.output.split("Brandbot> ", 1)[1].split("\n" + PROMPT, 1)[0]
    assert reads_as_sentences(answer), answer
    assert "worker ready" not in up.output  # the worker's log lines went to its file, not into the chat
    assert "worker ready" in (up.run_dir / "logs" / "worker.log").read_text()
    password = (up.run_dir / "valkey.password").read_text().strip()
    assert (up.run_dir / "valkey.password").stat().st_mode & 0o777 == 0o600 and len(password) >= 32
    assert password not in up.output + up.stderr() + (up.run_dir / "logs" / "worker.log").read_text()
    assert (up.run_dir / "valkey" / "appendonlydir").is_dir()  # the data lives in the run folder

    assert len(recorded) >= 3  # valkey, the worker and the chat, at least
    gone_within(recorded, port)
    assert processes_using(up.run_dir) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_up_stopped_during_model_load_leaves_nothing_running(
    sig: signal.Signals, tiny_model: Path, prompts_dir: Path, tmp_path: Path, running: list[Up]
) -> None:
    port = free_port()
    # The worker waits an hour before loading: whatever the machine's speed, the signal comes mid-load.
    env = up_env(
        prompts_dir,
        f"redis://127.0.0.1:{port}/0",
        BRANDBOT_MODEL_DIR=str(tiny_model),
        BRANDBOT_TEST_LOAD_DELAY_SECONDS="3600",
    )
    up = Up(tmp_path, env)
    running.append(up)
    up.read_until("worker  loading the model")
    recorded = descendants(up.process.pid)
    assert port_answers(port) and any("worker" in line for line in survivors(recorded))
    up.process.send_signal(sig)
    code = up.finish()
    if sig == signal.SIGINT:
        assert code == 130
        assert up.stderr() == "stopped (Ctrl-C): nothing left running\n"
    else:  # no clean-up runs in `up`: the kernel's parent-death signal stops its children
        assert code == -signal.SIGKILL
    gone_within(recorded, port)
    assert processes_using(up.run_dir) == []


def test_port_taken_by_something_that_is_not_redis_is_one_line_and_status_2(
    tiny_model: Path, prompts_dir: Path, tmp_path: Path, running: list[Up]
) -> None:
    with socket.socket() as listener:  # accepts connections (the kernel does), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        up = Up(
            tmp_path, up_env(prompts_dir, f"redis://127.0.0.1:{port}/0", BRANDBOT_MODEL_DIR=str(tiny_model))
        )
        running.append(up)
        assert up.finish() == 2
    assert up.stderr() == (
        f"brandbot: port {port} on 127.0.0.1 is taken by something that is not Redis; free it or set "
        "BRANDBOT_REDIS_URL to another port\n"
    )
    assert up.output == ""


def test_data_folder_that_cannot_be_written_is_one_line_and_status_2(
    tiny_model: Path, prompts_dir: Path, tmp_path: Path, running: list[Up]
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "valkey").write_text("a file where the data folder should be")
    port = free_port()
    up = Up(tmp_path, up_env(prompts_dir, f"redis://127.0.0.1:{port}/0", BRANDBOT_MODEL_DIR=str(tiny_model)))
    running.append(up)
    assert up.finish() == 2
    assert up.stderr().startswith(
        f"brandbot: cannot start the embedded Valkey: {tmp_path / 'run' / 'valkey'} "
    )
    assert up.stderr().count("\n") == 1
    assert not port_answers(port)


@pytest.mark.parametrize("problem", ["missing", "not a model"])
def test_model_folder_that_is_missing_or_not_a_model_is_one_line(
    problem: str, prompts_dir: Path, tmp_path: Path, running: list[Up]
) -> None:
    folder = tmp_path / "my-model"
    if problem == "not a model":
        folder.mkdir()
        (folder / "README.md").write_text("weights coming soon")
    up = Up(tmp_path, up_env(prompts_dir, TEST_REDIS_URL, BRANDBOT_MODEL_DIR=str(folder)))
    running.append(up)
    assert up.finish() == 2
    expected = (
        f"no such folder: {folder}"
        if problem == "missing"
        else f"{folder} is not a model folder (it has no config.json)"
    )
    assert up.stderr() == f"brandbot: BRANDBOT_MODEL_DIR: {expected}\n"
    assert up.output == ""
