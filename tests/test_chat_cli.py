"""`brandbot chat`, driven as an admin drives it: a real process on a terminal-like pipe, a real worker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from brandbot import keys, messages
from brandbot.cli.chat import PROMPT
from brandbot.contract import DoneEvent, parse_reply_event
from brandbot.settings import Settings
from tests.conftest import REPO, PrivateRedis, WorkerProcess, worker_env
from tests.core_fixtures import inflight_records
from tests.test_prompt_hot_reload import LONG_ANSWER_PERSONA

WAIT_SECONDS = 60.0  # a limit for a hung process, not a speed requirement


class ChatProcess:
    """A running `brandbot chat`: write lines to it, wait for what it prints."""

    def __init__(
        self, env: dict[str, str], args: tuple[str, ...] = (), *, sigint_ignored: bool = False
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "brandbot.cli", "chat", *args],
            env=env,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # As a non-interactive shell starts a background job (`cmd &`): SIGINT ignored.
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        assert stream is not None
        while chunk := stream.read1(4096):  # type: ignore[attr-defined]
            into.append(chunk.decode("utf-8", errors="replace"))

    @property
    def output(self) -> str:
        return "".join(self._out)

    @property
    def errors(self) -> str:
        return "".join(self._err)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def wait_for(self, text: str, *, count: int = 1) -> str:
        deadline = time.monotonic() + WAIT_SECONDS
        while self.output.count(text) < count:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(
                    f"chat never printed {text!r} ×{count}; output:\n{self.output}\nerrors:\n{self.errors}"
                )
            time.sleep(0.02)
        return self.output

    def ask(self, question: str) -> str:
        """Send a question; return what the chat printed until it asks for the next line."""
        prompts_before = self.output.count(PROMPT)
        start = len(self.output)
        self.send(question)
        self.wait_for(PROMPT, count=prompts_before + 1)
        return self.output[start:].removesuffix(PROMPT)

    def close_input(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout=WAIT_SECONDS)


@pytest.fixture
def chat_env(settings: Callable[..., Settings]) -> Callable[..., dict[str, str]]:
    def make(**extra: str) -> dict[str, str]:
        return worker_env(settings(), BRANDBOT_WORKER_WAIT_SECONDS="2", **extra)

    return make


@pytest.fixture
def start_chat(chat_env: Callable[..., dict[str, str]]) -> Iterator[Callable[..., ChatProcess]]:
    started: list[ChatProcess] = []

    def start(*args: str, sigint_ignored: bool = False, **extra: str) -> ChatProcess:
        chat = ChatProcess(chat_env(**extra), args, sigint_ignored=sigint_ignored)
        started.append(chat)
        return chat

    yield start
    for chat in started:
        if chat.process.poll() is None:
            chat.process.kill()
            chat.process.wait(timeout=10)


def jobs_in_order(client: redis.Redis) -> list[dict[str, object]]:
    """The requests the chat queued, oldest first, as the worker received them."""
    jobs = []
    for key in client.scan_iter(match="rq:job:*"):
        job_id = key.decode().removeprefix("rq:job:")
        if ":" in job_id:
            continue
        jobs.append(Job.fetch(job_id, connection=client, serializer=JSONSerializer))
    jobs.sort(key=lambda job: job.created_at)
    return [job.args[0] for job in jobs]


def final_text(client: redis.Redis, request_id: str) -> str:
    entries: Any = client.xrange(keys.reply_stream(request_id))
    for _id, fields in entries:
        event = parse_reply_event(fields[b"event"])
        if isinstance(event, DoneEvent):
            return event.text
    raise AssertionError(f"no done event for {request_id}")


def test_chat_streams_answers_and_keeps_the_conversation(
    start_worker: Callable[..., WorkerProcess],
    start_chat: Callable[..., ChatProcess],
    redis_client: redis.Redis,
) -> None:
    start_worker()
    chat = start_chat("--user", "Dana")
    chat.wait_for(PROMPT)
    assert chat.output.startswith("Talking to Brandbot (persona default, model default).")

    first = chat.ask("How do I reset my password?")
    second = chat.ask("And then?")
    first_job, second_job = jobs_in_order(redis_client)
    assert first_job["turns"] == [{"role": "user", "content": "How do I reset my password?", "name": "Dana"}]
    first_answer = final_text(redis_client, str(first_job["request_id"]))
    # the answer streamed to the terminal is the answer the worker finished with…
    cut_by_length = (
        messages.TERMINAL_NOTE.format(notice=messages.CUT_BY_LENGTH) + "\n"
    )  # the worker's notice, as every front-end shows it
    assert first in (f"Brandbot> {first_answer}\n", f"Brandbot> {first_answer}\n{cut_by_length}")
    # …and it is part of the conversation the second question carries
    assert second_job["turns"] == [
        {"role": "user", "content": "How do I reset my password?", "name": "Dana"},
        {"role": "assistant", "content": first_answer, "name": None},
        {"role": "user", "content": "And then?", "name": "Dana"},
    ]
    assert second.startswith("Brandbot> ")
    assert second_job["user"] == {"id": second_job["user"]["id"], "display_name": "Dana"}  # type: ignore[index]
    assert second_job["target"]["platform"] == "terminal"  # type: ignore[index]

    assert chat.ask("/reset") == "(new conversation)\n"
    chat.ask("Fresh start")
    third_job = jobs_in_order(redis_client)[2]
    assert [turn["content"] for turn in third_job["turns"]] == ["Fresh start"]  # type: ignore[attr-defined]

    assert chat.close_input() == 0  # Ctrl-D / end of input leaves cleanly
    assert inflight_records(redis_client, "terminal") == 0  # the core finished every answer it recorded


def test_persona_edits_apply_to_a_running_chat_and_worker(
    start_worker: Callable[..., WorkerProcess],
    start_chat: Callable[..., ChatProcess],
    prompts_dir: Path,
    redis_client: redis.Redis,
) -> None:
    start_worker()
    chat = start_chat()
    chat.wait_for(PROMPT)
    assert "(no persona named 'pirate'" in chat.ask("/persona pirate")

    (prompts_dir / "personas" / "pirate.yaml").write_text(
        "display_name: Captain Byte\nsystem_prompt: You are {{ assistant_name }}, a pirate. Arr.\n"
    )
    deadline = time.monotonic() + WAIT_SECONDS
    while "(persona: pirate, Captain Byte" not in chat.ask("/persona pirate"):
        assert time.monotonic() < deadline, chat.output  # the chat's own watcher has not seen the file
        time.sleep(0.1)
    answer = chat.ask("Who are you?")
    # The worker (a separate process) has reloaded too: it answers as the new persona, not with an error.
    assert answer.startswith("Captain Byte> ") and "not configured" not in answer
    [*_, job] = jobs_in_order(redis_client)
    assert job["persona"] == "pirate"

    (prompts_dir / "personas" / "pirate.yaml").write_text(
        'display_name: Captain Byte\nsystem_prompt: "{{ oops }}"\n'
    )
    deadline = time.monotonic() + WAIT_SECONDS
    while "your last prompt edit was rejected" not in (printed := chat.ask("Still there?")):
        assert time.monotonic() < deadline, chat.output
    assert "system_prompt: unknown template variable 'oops'" in printed
    assert "Captain Byte> " in printed  # the last good pirate still answers
    assert chat.close_input() == 0


def test_rating_in_chat_reaches_the_fine_tuning_export(
    start_worker: Callable[..., WorkerProcess],
    start_chat: Callable[..., ChatProcess],
    redis_client: redis.Redis,
    chat_env: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:
    start_worker()
    chat = start_chat("--persona", "support", "--user", "Dana")
    chat.wait_for(PROMPT)
    assert chat.ask("/good") == "(nothing to rate yet)\n"
    chat.ask("My site is slow")
    assert chat.ask("/good") == "(thanks: rating saved for the fine-tuning export)\n"
    assert chat.close_input() == 0

    output = tmp_path / "good.jsonl"
    export = subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "feedback", "export", str(output)],
        env=chat_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert export.returncode == 0, export.stderr
    [line] = [json.loads(text) for text in output.read_text().splitlines()]
    [job] = jobs_in_order(redis_client)
    system, user, assistant = line["messages"]
    assert system["role"] == "system" and system["content"].startswith("You are Acme Support")
    assert "You are helping Dana on Terminal in #terminal." in system["content"]
    assert user == {"role": "user", "content": "My site is slow"}
    assert assistant == {"role": "assistant", "content": final_text(redis_client, str(job["request_id"]))}
    assert (line["rating"], line["persona"]) == (1, "support")


def test_chat_without_a_worker_says_so_and_keeps_going(
    start_chat: Callable[..., ChatProcess], redis_client: redis.Redis
) -> None:
    chat = start_chat()
    chat.wait_for(PROMPT)
    assert "(no worker is serving model 'default' yet: questions wait for one)" in chat.output
    printed = chat.ask("Anyone there?")
    assert printed == "Brandbot> \n(no worker is serving model 'default': start one with `brandbot worker`)\n"
    [job] = jobs_in_order(redis_client)
    assert redis_client.exists(keys.cancel_flag(str(job["request_id"])))  # a worker arriving later skips it
    assert chat.ask("?" * 4001) == (
        "That question is too long for me (4001 characters, the limit is 4000). Could you shorten it?\n"
    )
    assert len(jobs_in_order(redis_client)) == 1  # refused before it was queued
    chat.send("/quit")
    assert chat.process.wait(timeout=WAIT_SECONDS) == 0


def test_redis_stopping_mid_chat_is_one_clear_line_and_the_chat_goes_on(
    start_chat: Callable[..., ChatProcess], private_redis: PrivateRedis
) -> None:
    chat = start_chat(BRANDBOT_REDIS_URL=private_redis.url)
    chat.wait_for(PROMPT)
    private_redis.stop()
    printed = chat.ask("Anyone there?")
    assert printed == f"{messages.QUEUE_UNREACHABLE}\n"
    assert chat.errors.count("\n") == 1 and "Anyone there?" not in chat.errors  # one line, no question text
    assert chat.close_input() == 0


def test_chat_without_redis_is_one_line_without_the_password(start_chat: Callable[..., ChatProcess]) -> None:
    chat = start_chat(BRANDBOT_REDIS_URL="redis://:hunter2@127.0.0.1:1/0")
    assert chat.process.wait(timeout=WAIT_SECONDS) == 1
    assert chat.errors == "brandbot: cannot reach Redis at redis://:***@127.0.0.1:1/0; is it running?\n"


def test_chat_with_an_unknown_persona_names_the_ones_there_are(
    start_chat: Callable[..., ChatProcess],
) -> None:
    chat = start_chat("--persona", "sales")
    assert chat.process.wait(timeout=WAIT_SECONDS) == 2
    assert chat.errors == "brandbot: no persona named 'sales' (personas: default, engineering, support)\n"


def test_chat_refuses_to_start_on_broken_prompt_files(
    start_chat: Callable[..., ChatProcess], prompts_dir: Path
) -> None:
    (prompts_dir / "routing.yaml").write_text("default_persona: nobody\n")
    chat = start_chat()
    assert chat.process.wait(timeout=WAIT_SECONDS) == 1
    assert chat.errors.splitlines() == [
        "brandbot: prompt files have problems (see `brandbot prompts check`):",
        f"{prompts_dir}/routing.yaml:1: default_persona: no persona named 'nobody' "
        "(personas: default, engineering, support)",
    ]


# Found when CI was started as a background job: the chat inherited SIGINT ignored, so neither Ctrl-C nor
# SIGTERM stopped an answer.
STARTED_AS = pytest.mark.parametrize("sigint_ignored", [False, True], ids=["foreground", "background-job"])


@STARTED_AS
def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(
    start_worker: Callable[..., WorkerProcess],
    start_chat: Callable[..., ChatProcess],
    prompts_dir: Path,
    redis_client: redis.Redis,
    sigint_ignored: bool,
) -> None:
    (prompts_dir / "personas" / "long.yaml").write_text(LONG_ANSWER_PERSONA)  # an answer long enough to stop
    start_worker()
    chat = start_chat("--persona", "long", sigint_ignored=sigint_ignored)
    chat.wait_for(PROMPT)
    chat.send("hello")
    printed = len(chat.wait_for("Long> "))
    while len(chat.output) == printed:  # the answer has started streaming
        time.sleep(0.01)
    chat.process.send_signal(signal.SIGINT)
    chat.wait_for("\n(stopped)\n" + PROMPT)
    [job] = jobs_in_order(redis_client)
    assert redis_client.exists(keys.cancel_flag(str(job["request_id"])))  # the worker was told to stop
    again = chat.ask("again")
    _, second = jobs_in_order(redis_client)
    assert [turn["content"] for turn in second["turns"]] == ["again"]  # type: ignore[attr-defined]
    # the stopped answer's last events (the worker's "cancelled" ending) are not drawn into the next one
    assert again.startswith("Long> ") and "(stopped)" not in again
    assert chat.close_input() == 0
    assert inflight_records(redis_client, "terminal") == 0


@STARTED_AS
def test_sigterm_stops_the_answer_and_leaves_cleanly(
    start_worker: Callable[..., WorkerProcess],
    start_chat: Callable[..., ChatProcess],
    prompts_dir: Path,
    redis_client: redis.Redis,
    sigint_ignored: bool,
) -> None:
    (prompts_dir / "personas" / "long.yaml").write_text(LONG_ANSWER_PERSONA)
    start_worker()
    chat = start_chat("--persona", "long", sigint_ignored=sigint_ignored)
    chat.wait_for(PROMPT)
    chat.send("hello")
    printed = len(chat.wait_for("Long> "))
    while len(chat.output) == printed:  # the answer has started streaming
        time.sleep(0.01)
    chat.process.send_signal(signal.SIGTERM)  # docker stop, a supervisor, a closed session
    assert chat.process.wait(timeout=WAIT_SECONDS) == 0
    assert chat.output.endswith("\n(stopped)\n")
    assert "Traceback" not in chat.errors
    [job] = jobs_in_order(redis_client)
    assert redis_client.exists(keys.cancel_flag(str(job["request_id"])))  # no GPU time spent on nobody
    assert inflight_records(redis_client, "terminal") == 0  # the stopped answer's relay ended, not cut
