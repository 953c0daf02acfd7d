"""The contract between front-ends and workers: the request a job carries and the events a reply streams.

Nothing else crosses the tiers. Both sides import this module; payloads travel as JSON.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter


class Platform(StrEnum):
    SLACK = "slack"
    DISCORD = "discord"
    TERMINAL = "terminal"


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class FinishReason(StrEnum):
    STOP = "stop"  # end of turn or a stop string
    LENGTH = "length"  # max new tokens or the context window
    DEADLINE = "deadline"  # generation deadline hit; the text is a partial answer
    CANCELLED = "cancelled"  # a front-end asked to stop


class ErrorKind(StrEnum):
    BAD_REQUEST = "bad_request"
    PERSONA = "persona"
    ENGINE = "engine"
    INTERNAL = "internal"


def replace_lone_surrogates(text: str) -> str:
    """Each lone UTF-16 surrogate (a chat's JSON may carry `\\ud800` alone) becomes U+FFFD: such text
    cannot be encoded as UTF-8, so it could not be sent to Redis, logged or posted."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


ChatText = Annotated[str, AfterValidator(replace_lone_surrogates)]
"""Text people wrote: it crosses the tiers as UTF-8."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Turn(_Model):
    role: Role
    content: ChatText
    name: ChatText | None = Field(None, description="Display name of the person who wrote a user turn.")


class ReplyTarget(_Model):
    """Where the answer goes; opaque to the worker, used by the front-end that relays it."""

    platform: Platform
    workspace_id: str | None = None
    channel_id: str
    thread_id: str | None = None
    message_id: str | None = Field(None, description="The question's own message id, when it has one.")


class UserRef(_Model):
    id: str
    display_name: ChatText = ""


class Limits(_Model):
    max_new_tokens: int | None = Field(None, ge=1, description="Cap below the persona's own cap.")
    deadline_seconds: float | None = Field(None, gt=0, description="Overrides the worker's deadline.")


def new_request_id() -> str:
    return uuid.uuid4().hex


class GenerationRequest(_Model):
    request_id: str = Field(default_factory=new_request_id, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    target: ReplyTarget
    user: UserRef
    channel_name: ChatText = ""
    persona: str
    turns: list[Turn] = Field(min_length=1)
    limits: Limits = Limits()
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**31,
        description="Sampling seed: the same request and seed give the same answer (evals); unset = random.",
    )
    keep_for_rating: bool = Field(
        False,
        description="Keep a copy of the answered conversation for the retention period so people can rate it "
        "(only where the chat offers 👍/👎 and the admin left feedback on); otherwise nothing is kept.",
    )


class Usage(_Model):
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float | None = None
    total_ms: float


class StartEvent(_Model):
    """A worker picked the request up; a higher attempt than seen before means: start the message over."""

    type: Literal["start"] = "start"
    attempt: int = 1


class DeltaEvent(_Model):
    type: Literal["delta"] = "delta"
    attempt: int = 1
    text: str


class NoticeEvent(_Model):
    """Something the user should know about their request (e.g. the question was cut to fit)."""

    type: Literal["notice"] = "notice"
    attempt: int = 1
    code: str
    message: str


class DoneEvent(_Model):
    type: Literal["done"] = "done"
    attempt: int = 1
    text: str
    finish_reason: FinishReason
    usage: Usage


class ErrorEvent(_Model):
    type: Literal["error"] = "error"
    attempt: int = 1
    kind: ErrorKind
    message: str = Field(description="Safe to show the user: no internals, no stack traces.")


ReplyEvent = Annotated[
    StartEvent | DeltaEvent | NoticeEvent | DoneEvent | ErrorEvent, Field(discriminator="type")
]
reply_event_adapter: TypeAdapter[ReplyEvent] = TypeAdapter(ReplyEvent)


def parse_reply_event(raw: str | bytes) -> ReplyEvent:
    return reply_event_adapter.validate_json(raw)
