"""What one process's log handler does with each kind of line: brandbot's own events, tracebacks, and the
lines RQ, slack_bolt, slack_sdk and discord.py write (their exact wording, from their installed source).

The whole-system proof, every process through failures on every tier, is tests/test_log_secrecy.py.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr, ValidationError

from brandbot.contract import GenerationRequest
from brandbot.logs import PAYLOAD_DROPPED, SECRET, configure_logging, get_logger
from brandbot.settings import LogFormat, Settings

QUESTION = "what is the zq-unique-question policy"
BOT_TOKEN = "xoxb-1234-abcdefabcdef"
REDIS_PASSWORD = "zq-redis-password"
INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OTA6c2VjcmV0"


@pytest.fixture
def logged(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., str]]:
    """Configure logging as an entry point does (settings given), run a function, return what it wrote."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, sys.excepthook

    # Apps built by earlier tests in this process copy their levels onto library loggers (slack_bolt's
    # `get_bolt_logger`); a fresh process starts from none of that.
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in ("slack_bolt", "slack_sdk", "discord", "rq"):
            logging.getLogger(name).setLevel(logging.NOTSET)

    def run(emit: Callable[[], object], **overrides: object) -> str:
        values: dict[str, object] = {
            "redis_url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
            "slack_bot_token": SecretStr(BOT_TOKEN),
            "prompts_dir": Path("prompts"),
            **overrides,
        }
        configure_logging(Settings(_env_file=None, **values))  # type: ignore[call-arg]
        capsys.readouterr()
        emit()
        return capsys.readouterr().err

    yield run
    root.handlers[:], sys.excepthook = saved[0], saved[2]
    root.setLevel(saved[1])
    structlog.reset_defaults()


def answer_fails(question: str) -> None:
    """A frame holding the question in a local, failing with an exception that quotes it (pydantic's do)."""
    GenerationRequest.model_validate({"request_id": question})


def test_a_traceback_shows_frames_but_no_locals_and_no_quoted_input(logged: Callable[..., str]) -> None:
    def emit() -> None:
        try:
            answer_fails(QUESTION)
        except ValidationError:
            get_logger("worker.service").exception("generation failed", request_id="r1")
            logging.getLogger("discord.client").exception("Ignoring exception in on_message")

    out = logged(emit)

    assert QUESTION not in out
    assert out.count('test_logs.py", line') >= 2 and "in answer_fails" in out  # where it happened is kept
    assert out.count("pydantic_core._pydantic_core.ValidationError: [message hidden]") == 2
    assert "request_id=r1" in out


def test_with_message_text_allowed_exception_messages_show_but_secrets_never(
    logged: Callable[..., str],
) -> None:
    def emit() -> None:
        try:
            raise RuntimeError(f"{QUESTION} with token {BOT_TOKEN}")
        except RuntimeError:
            get_logger("bots.slack.desk").exception("relaying failed")

    out = logged(emit, log_message_text=True)

    assert QUESTION in out and BOT_TOKEN not in out and SECRET in out


def test_library_lines_lose_bodies_envelopes_job_data_and_tokens(logged: Callable[..., str]) -> None:
    body = json.dumps({"event": {"type": "app_mention", "text": QUESTION}, "token": "verification"})
    webhook = (
        f"http://127.0.0.1:1/api/v10/webhooks/1100000000000000001/{INTERACTION_TOKEN}/messages/@original"
    )

    def emit() -> None:
        # slack_bolt/middleware/request_verification: the body of a request whose signature failed
        logging.getLogger("slack_bolt.RequestVerification").info(
            f"Invalid request signature detected (signature: v0=abc, timestamp: 1, body: {body})"
        )
        # slack_sdk/socket_mode/aiohttp: every envelope received, at DEBUG
        logging.getLogger("slack_bolt.AsyncApp").debug(
            f"Received message (type: TEXT, data: {body!r}, extra: None, session: s_1)"
        )
        # discord/http.py: a 429 on an interaction's webhook, and the bodies sent and received, at DEBUG
        http = logging.getLogger("discord.http")
        http.warning("We are being rate limited. %s %s responded with 429. Retrying in %.2f seconds.",
                      "PATCH", webhook, 0.3)  # fmt: skip
        http.debug("%s %s with %s has returned %s", "PATCH", webhook, json.dumps({"content": QUESTION}), 200)
        http.debug("%s %s has received %s", "PATCH", webhook, {"content": QUESTION})
        http.debug("Rate limit is being handled by bucket hash %s with %r major parameters", None,
                   f"1100000000000000001+{INTERACTION_TOKEN}")  # fmt: skip
        # discord/gateway.py: every event received (an INTERACTION_CREATE carries the token), at DEBUG
        logging.getLogger("discord.gateway").debug(
            "For Shard ID %s: WebSocket Event: %s",
            None,
            {"t": "INTERACTION_CREATE", "d": {"token": INTERACTION_TOKEN}},
        )
        # rq/worker/base.py handle_exception: the job's arguments as `extra`, the traceback as an argument
        try:
            answer_fails(QUESTION)
        except ValidationError:
            logging.getLogger("rq.worker").error(
                "Worker %s: job %s: exception raised while executing (%s)\n%s", "w1", "j1",
                "worker.job.generate_reply", traceback.format_exc(), extra={"arguments": [QUESTION]},
            )  # fmt: skip
        logging.getLogger("rq.worker").debug("Worker %s: result: %r", "w1", {"text": QUESTION})
        logging.getLogger("rq.worker").info(
            "Worker %s: %s: %s (%s)", "w1", "q", f"generate_reply({QUESTION!r})", "j1"
        )
        logging.getLogger("rq.worker").info("Worker %s: %s: %s (%s)", "w1", "q", "Job OK", "j1")

    out = logged(emit, log_level="DEBUG")

    assert QUESTION not in out and INTERACTION_TOKEN not in out
    assert (
        "Invalid request signature detected (signature: v0=abc, timestamp: 1, body: " + PAYLOAD_DROPPED in out
    )
    assert f"PATCH http://127.0.0.1:1/api/v10/webhooks/1100000000000000001/{SECRET}/messages/@original" in out
    assert "exception raised while executing (worker.job.generate_reply)" in out and "in answer_fails" in out
    assert "Job OK (j1)" in out


def test_configured_secrets_are_taken_out_of_every_line(logged: Callable[..., str]) -> None:
    def emit() -> None:
        get_logger("brandbot").info("connecting", url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0")
        logging.getLogger("slack_sdk.web").warning("token %s rejected", BOT_TOKEN)

    out = logged(emit, log_message_text=True)

    assert REDIS_PASSWORD not in out and BOT_TOKEN not in out and out.count(SECRET) == 2


def test_json_format_writes_one_object_per_line_tracebacks_included(logged: Callable[..., str]) -> None:
    def emit() -> None:
        get_logger("worker.service").info("reply done", request_id="r1", tokens=12, text=QUESTION)
        try:
            answer_fails(QUESTION)
        except ValidationError:
            logging.getLogger("slack_bolt.AsyncApp").exception("Failed to run listener function")

    out = logged(emit, log_format=LogFormat.JSON)

    done, failed = [json.loads(line) for line in out.splitlines()]
    assert done["event"] == "reply done" and done["request_id"] == "r1" and done["tokens"] == 12
    assert done["text"] == "[redacted] (37 chars)" and done["level"] == "info"
    assert failed["logger"] == "slack_bolt.AsyncApp" and "in answer_fails" in failed["exception"]
    assert QUESTION not in out
