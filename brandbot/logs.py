"""Structured logs that carry ids, counts and timings — never message text unless the admin enables it."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

# Fields that may hold what people wrote or what the model answered.
TEXT_FIELDS = frozenset({"text", "question", "answer", "prompt", "content", "turns", "messages"})
REDACTED = "[redacted]"


def redact_message_text(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for field in TEXT_FIELDS.intersection(event):
        value = event[field]
        event[field] = f"{REDACTED} ({len(value)} chars)" if isinstance(value, str) else REDACTED
    return event


def configure_logging(*, level: str = "INFO", log_message_text: bool = False) -> None:
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not log_message_text:
        processors.append(redact_message_text)
    processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # slack_sdk logs whole request bodies (users' messages) at DEBUG.
    for noisy in ("slack_sdk", "slack_bolt", "discord", "rq.worker", "rq.job", "rq.queue"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(level.upper())))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
