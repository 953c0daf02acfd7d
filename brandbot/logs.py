"""Logs that carry ids, counts and timings — never message text unless the admin enables it, never secrets.

Every line a process writes goes through one handler on the root logger: brandbot's own structlog events
and the libraries' stdlib records alike (RQ, slack_bolt and slack_sdk, discord.py, aiohttp, redis).

- Tracebacks are plain: file, line and code of each frame, the exception's type — no local variables
  (structlog's default rich tracebacks print them: the question and answer strings in scope), and no
  exception message unless it is of a kind that cannot quote a payload (a pydantic error prints its input).
- `LibraryRecordFilter` rewrites what libraries would leak: request and response bodies, Socket Mode
  envelopes and gateway events, RQ's job arguments, descriptions and results.
- `Redactor` takes out, from every line at every level, the configured secrets (each `SecretStr`
  setting, the password of a Redis URL) and the tokens inside Discord webhook and interaction URLs.

`BRANDBOT_LOG_MESSAGE_TEXT=true` lets message text through (payloads, exception messages); secrets never.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import types
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import redis.exceptions
import structlog
from pydantic import BaseModel, SecretStr

from brandbot.errors import SettingsError
from brandbot.settings import LogFormat, Settings

# Fields of brandbot's own events that may hold what people wrote or what the model answered.
TEXT_FIELDS = frozenset({"text", "question", "answer", "prompt", "content", "turns", "messages"})
REDACTED = "[redacted]"
SECRET = "[secret]"
PAYLOAD_DROPPED = "[payload dropped]"
MESSAGE_HIDDEN = "[message hidden]"

# Exceptions whose messages name hosts, ports and settings, never a payload: worth keeping for the operator.
SAFE_MESSAGE_TYPES: tuple[type[BaseException], ...] = (
    OSError,
    SettingsError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

# Keys under which Slack, Discord and brandbot's contract carry people's text, in JSON or a dict's repr.
_TEXT_KEYS = (
    "text|markdown_text|content|prompt|question|answer|turns|value|title|description|preview|fallback"
)
# Keys under which they carry credentials (an interaction's token arrives in the gateway event).
_SECRET_KEYS = "token|password|secret|signing_secret|client_secret|authorization"
_QUOTED = r"""(?P<q>["'])(?:\\.|(?!(?P=q)).)*(?P=q)"""
TEXT_VALUE = re.compile(rf"""(?P<key>(["'])(?:{_TEXT_KEYS})\2\s*:\s*){_QUOTED}""", re.S)
SECRET_VALUE = re.compile(rf"""(?P<key>(["'])(?:{_SECRET_KEYS})\2\s*:\s*){_QUOTED}""", re.S | re.I)
# Discord puts a webhook's or an interaction's token in the URL path.
URL_TOKEN = re.compile(r"(/(?:webhooks|interactions)/\d+/)[^/\s?#'\"]+")
# …and discord.py names its rate-limit buckets after it: `<webhook id>+<token>` ("major parameters").
BUCKET_TOKEN = re.compile(r"(\d+\+)[A-Za-z0-9_.\-]{20,}")


@dataclass(frozen=True)
class PayloadRule:
    """Library log lines (logger name prefix) whose `payload` group is a body, an envelope or job data."""

    logger: str
    pattern: re.Pattern[str]


PAYLOAD_RULES = (
    # slack_sdk/slack_bolt write f-strings: the payload follows a label (`body:`, `data:`, `Skipped self
    # event:`, …) and runs to the end of the line — request and response bodies, Socket Mode envelopes,
    # the body of a request whose signature failed.
    PayloadRule(
        "slack_",
        re.compile(
            r"(?:\b(?:params|data|json|body|files|headers|message|event|payload)\s*:\s*"
            r"|for the request \()(?P<payload>.*)",
            re.S | re.I,
        ),
    ),
    # discord.py: gateway events as received, REST bodies sent (`with %s has returned`) and received.
    PayloadRule("discord", re.compile(r"WebSocket Event: (?P<payload>.*)", re.S)),
    PayloadRule("discord.http", re.compile(r" with (?P<payload>.*) has returned ", re.S)),
    PayloadRule("discord", re.compile(r" has received (?P<payload>.*)", re.S)),
    PayloadRule("discord.gateway", re.compile(r"^Received (?:error )?(?P<payload>.*)", re.S)),
    # RQ: a job's description (the repr of its arguments), its result, and failure texts.
    PayloadRule("rq", re.compile(r"\bresult: (?P<payload>.*)", re.S)),
    PayloadRule("rq", re.compile(r"^Worker \S+: \S+: (?P<payload>(?!.*Job OK).*) \([^()]*\)$", re.S)),
    PayloadRule("rq", re.compile(r"\bhandling failure: (?P<payload>.*)", re.S)),
    PayloadRule("rq", re.compile(r"\breceived message: (?P<payload>.*)", re.S)),
)
# RQ attaches the job's function and arguments to its failure record as `extra`.
RQ_EXTRAS = ("func", "arguments", "kwargs")


class Redactor:
    """Takes secrets (always) and message text (unless allowed) out of a piece of log text."""

    def __init__(self, secrets: frozenset[str], *, hide_text: bool) -> None:
        self.hide_text = hide_text
        # Longest first, so a secret containing another is replaced whole; URL-quoted forms too.
        variants = {form for secret in secrets for form in (secret, quote(secret, safe=""))}
        ordered = sorted((v for v in variants if len(v) >= 4), key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        return cls(frozenset(configured_secrets(settings)), hide_text=not settings.log_message_text)

    def __call__(self, text: str) -> str:
        if self.hide_text:
            text = TEXT_VALUE.sub(rf"\g<key>\g<q>{REDACTED}\g<q>", text)
        text = SECRET_VALUE.sub(rf"\g<key>\g<q>{SECRET}\g<q>", text)
        text = URL_TOKEN.sub(rf"\1{SECRET}", text)
        text = BUCKET_TOKEN.sub(rf"\1{SECRET}", text)
        if self._secrets is not None:
            text = self._secrets.sub(SECRET, text)
        return text


def configured_secrets(model: BaseModel) -> Iterator[str]:
    """Every `SecretStr` value of the settings (sections included) and every password inside a URL."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            yield value.get_secret_value()
        elif isinstance(value, BaseModel):
            yield from configured_secrets(value)
        elif isinstance(value, str) and "://" in value:
            password = urlsplit(value).password
            if password:
                yield password


# ---------------------------------------------------------------------- tracebacks
def exception_of(exc_info: Any) -> BaseException | None:
    """The exception meant by a record's or an event's `exc_info` (True, a tuple or the exception)."""
    if exc_info is True:
        return sys.exc_info()[1]
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1] if isinstance(exc_info[1], BaseException) else None
    return None


def describe_exception(error: BaseException, *, keep_message: bool) -> str:
    """`module.Type: message`, the message replaced unless it is allowed or of a payload-free kind."""
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    message = str(error) if keep_message or isinstance(error, SAFE_MESSAGE_TYPES) else MESSAGE_HIDDEN
    return f"{name}: {message}" if message else name


def plain_traceback(error: BaseException, *, keep_messages: bool) -> str:
    """Python's traceback layout, without locals; each exception of the chain reduced as above."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    parts = []
    for position, exception in enumerate(reversed(chain)):
        if position:
            parts.append("\nThe above exception led to the following one:\n\n")
        frames = traceback.extract_tb(exception.__traceback__)
        if frames:
            parts.append("Traceback (most recent call last):\n" + "".join(frames.format()))
        parts.append(describe_exception(exception, keep_message=keep_messages) + "\n")
    return "".join(parts).rstrip("\n")


def plain_traceback_text(text: str) -> str:
    """A traceback already formatted as text (RQ passes one as a log argument), with messages dropped."""
    kept: list[str] = []
    in_frames = False
    for line in text.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            kept.append(line)
            in_frames = True
        elif in_frames and line.startswith("  "):
            kept.append(line)
        elif in_frames:
            name = re.match(r"[\w.]+", line)
            kept.append(f"{name.group(0) if name else 'Exception'}: {MESSAGE_HIDDEN}")
            in_frames = False
        elif line.startswith(("During handling of the above exception", "The above exception")):
            kept.append(line)
    return "\n".join(kept)


# ---------------------------------------------------------------------- library records
class LibraryRecordFilter(logging.Filter):
    """On the root handler: rewrites a stdlib record's message before any formatter sees it."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        if "_logger" in record.__dict__:  # one of brandbot's own events: the structlog processors see it
            return True
        for extra in RQ_EXTRAS if record.name.startswith("rq") else ():
            record.__dict__.pop(extra, None)
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string: log its template only
            message = str(record.msg)
        if self.redact.hide_text:
            message = self._drop_payloads(record.name, message)
        if isinstance(exception_of(record.exc_info), OSError):
            # A network failure the library retries (Slack, Discord, aiohttp): one line, not a traceback.
            message = f"{message} ({type(exception_of(record.exc_info)).__name__})"
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = self.redact(message), None
        return True

    @staticmethod
    def _drop_payloads(logger: str, message: str) -> str:
        if logger.startswith("rq") and "Traceback (most recent call last)" in message:
            head, _, trace = message.partition("Traceback (most recent call last)")
            message = head + plain_traceback_text("Traceback (most recent call last)" + trace)
        for rule in PAYLOAD_RULES:
            if logger.startswith(rule.logger) and (found := rule.pattern.search(message)):
                start, end = found.span("payload")
                message = message[:start] + PAYLOAD_DROPPED + message[end:]
        return message


# ---------------------------------------------------------------------- structlog processors
def redact_message_text(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for name in TEXT_FIELDS.intersection(event):
        value = event[name]
        event[name] = f"{REDACTED} ({len(value)} chars)" if isinstance(value, str) else REDACTED
    return event


@dataclass(frozen=True)
class RenderException:
    """Turns `exc_info` into a plain traceback string under `exception` (what both renderers print)."""

    keep_messages: bool

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        error = exception_of(event.pop("exc_info", None))
        if error is not None:
            event["exception"] = plain_traceback(error, keep_messages=self.keep_messages)
        return event


@dataclass(frozen=True)
class RedactEvent:
    """The last step before rendering: every string of the event passes the `Redactor`; an exception
    given as a value (`error=error`) shows as its type, its message only where allowed."""

    redact: Redactor

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event.items():
            event[key] = self._clean(value)
        return event

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, list | tuple):
            return [self._clean(item) for item in value]
        if isinstance(value, dict):
            return {key: self._clean(item) for key, item in value.items()}
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, BaseException):
            return self.redact(describe_exception(value, keep_message=not self.redact.hide_text))
        return self.redact(repr(value))


# ---------------------------------------------------------------------- setup
def configure_logging(settings: Settings, *, level: str | None = None) -> None:
    """Route every log line of this process through one redacting handler on standard error (standard
    output stays the program's own, e.g. `brandbot chat`'s conversation); call once per entry point."""
    chosen = (level or settings.log_level).upper()
    redact = Redactor.from_settings(settings)
    stamped: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    own: list[Any] = [structlog.stdlib.filter_by_level, structlog.contextvars.merge_contextvars, *stamped]
    if not settings.log_message_text:
        own.append(redact_message_text)
    structlog.configure(
        processors=[*own, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    renderer: Any = structlog.dev.ConsoleRenderer(colors=False)
    if settings.log_format == LogFormat.JSON:
        renderer = structlog.processors.JSONRenderer()
        # Every line a log shipper reads must be JSON: no progress bars (model loading draws one).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=stamped,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            RenderException(keep_messages=settings.log_message_text),
            RedactEvent(redact),
            renderer,
        ],
    )
    handler = CurrentStderrHandler()
    handler.setFormatter(formatter)
    handler.addFilter(LibraryRecordFilter(redact))
    root = logging.getLogger()
    for previous in root.handlers[:]:
        root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(chosen)
    sys.excepthook = _log_uncaught(structlog.get_logger("brandbot.uncaught"))


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is logged (as logging's last-resort handler does),
    so a redirect made later (a test's capture, a CLI runner) is followed, never a closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        """The stream is always the current `sys.stderr`."""


def _log_uncaught(log: Any) -> Callable[..., None]:
    """An exception nobody caught is logged like any other: through the redacting handler."""

    def hook(kind: type[BaseException], error: BaseException, trace: types.TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, error, trace)
            return
        log.critical("uncaught exception, exiting", exc_info=error.with_traceback(trace))

    return hook


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
