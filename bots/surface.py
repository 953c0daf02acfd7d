"""What a chat platform gives the conversation core: the small surface every adapter implements.

The core (`bots.conversation`) owns a question's life; a platform adapter only translates its events into
a `Question` with a `Reception` (how to answer that one question: tell the asker, acknowledge, read the
conversation) and draws messages through an `AnswerSink` (post, edit, delete, split limit). Adding a
platform means implementing these, nothing more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from bots.access import Refusal
from bots.relay import ChannelPacer, MessageSink, StreamingEditor
from brandbot.contract import GenerationRequest, Platform


class Undeliverable(Exception):
    """The chat refused a message of this answer: for good, or for now after the adapter's own retries."""


class AnswerSink(MessageSink, Protocol):
    """Where one answer is shown; its `state()` (ids only, never text) lets another process finish it."""

    adopt: list[str]  # messages of an earlier process, reused in order before posting new ones
    on_change: Callable[[], Awaitable[None]] | None  # called when `state()` changed

    def state(self) -> dict[str, Any]: ...

    async def prepare_resume(self) -> None:
        """Before an adopted answer is rendered again from the top."""

    async def discard_leftovers(self) -> None:
        """Delete adopted messages the finished answer did not need."""

    async def abandon(self) -> None:
        """The chat refused this answer for good: take down what can be taken down (best effort)."""

    async def after_answer(self) -> None:
        """The answer ended, however it ended (e.g. clear a "thinking" status line)."""


class AnswerEditor(StreamingEditor):
    """The shared streaming editor, plus a status line (queue position) shown until the answer starts."""

    async def show_status(self, text: str) -> None:
        await self.finish(text)


class Reception(Protocol):
    """How to answer one question where it was asked; built by the adapter, no network needed to build it."""

    empty_hint: str  # said when the question has no text (just a mention)
    answers_every_refusal: bool  # an interaction must be answered, even a second rate-limit refusal
    intake_patience_seconds: float  # how long intake may wait out a Redis outage before refusing

    def open_sink(self, request_id: str) -> AnswerSink:
        """Where the answer will be shown (nothing is posted yet)."""

    async def tell(self, text: str, *, privately: bool) -> None:
        """A short message that is not an answer (a refusal, a hint, an outage); best effort."""

    async def acknowledge(self) -> bool:
        """The question will be answered (e.g. Discord's deferral); False if the platform gave up on it."""

    async def request(self, *, request_id: str, persona: str, look_up_names: bool) -> GenerationRequest:
        """The request for the worker: the conversation read from the chat, then the question.

        Without `look_up_names` (a burst is being queued), people's and channels' names the adapter has not
        cached are left out, not looked up: the worker needs no name to start."""


class ChatAdapter(Protocol):
    """One platform, as the core sees it."""

    platform: Platform
    rates_answers: bool  # answers carry 👍/👎 (buttons, feedback on): only then does the worker keep a copy

    def editor(self, sink: AnswerSink, pacer: ChannelPacer) -> AnswerEditor: ...

    def sink_from_state(self, request_id: str, state: dict[str, Any]) -> AnswerSink:
        """The sink of an earlier process's answer; it adopts that process's messages. Raises on bad state."""

    def refusal_text(self, refusal: Refusal) -> str: ...
