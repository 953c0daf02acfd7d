"""Relaying a reply stream into a chat: one placeholder, coalesced edits, follow-ups past the size limit.

Shared by every platform; a platform supplies a `MessageSink` (post / edit / delete one message).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bots.splitting import split_message
from brandbot import messages
from brandbot.contract import DeltaEvent, DoneEvent, ErrorEvent, FinishReason, NoticeEvent, StartEvent
from brandbot.errors import QueueUnavailable
from brandbot.logs import get_logger
from brandbot.queue import RequestQueue

log = get_logger(__name__)

STREAMING_CURSOR = " ▍"
EMPTY_ANSWER = "…"


class MessageSink(Protocol):
    """Where one reply is written; messages it creates are identified by the ids it returns."""

    @property
    def channel_key(self) -> str:
        """Edits are paced per channel, across all requests."""
        ...

    @property
    def max_chars(self) -> int: ...

    async def post(self, text: str) -> str: ...

    async def edit(self, message_id: str, text: str) -> None: ...

    async def delete(self, message_id: str) -> None: ...


class ChannelPacer:
    """At most one edit per `interval` seconds per channel, for every request this process relays."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next_free: dict[str, float] = {}

    def try_acquire(self, channel: str) -> bool:
        now = time.monotonic()
        if self._next_free.get(channel, 0.0) > now:
            return False
        self._next_free[channel] = now + self.interval
        return True

    async def acquire(self, channel: str) -> None:
        """Wait for this channel's turn (used for final edits, which must never be dropped)."""
        while not self.try_acquire(channel):  # noqa: ASYNC110 - a deadline, not an event, frees the channel
            await asyncio.sleep(max(self._next_free[channel] - time.monotonic(), 0.01))


@dataclass
class StreamingEditor:
    """Shows a growing text in one message (plus follow-ups once it outgrows `sink.max_chars`)."""

    sink: MessageSink
    pacer: ChannelPacer
    message_ids: list[str] = field(default_factory=list)
    _shown: list[str] = field(default_factory=list)
    _pending: str | None = None

    async def start(self, placeholder: str) -> str:
        message_id = await self.sink.post(placeholder)
        self.message_ids, self._shown = [message_id], [placeholder]
        return message_id

    async def update(self, text: str) -> None:
        """Show `text` if this channel may be edited now; otherwise keep it for the next chance."""
        self._pending = text
        if self.pacer.try_acquire(self.sink.channel_key):
            await self._render(text + STREAMING_CURSOR)
            self._pending = None

    async def flush(self) -> None:
        if self._pending is not None:
            await self.update(self._pending)

    async def finish(self, text: str) -> None:
        """The final text, shown exactly once more whatever the pacing (waits for the channel's turn)."""
        self._pending = None
        await self.pacer.acquire(self.sink.channel_key)
        await self._render(text or EMPTY_ANSWER)

    async def finish_answer(self, text: str) -> None:
        """The final text of a finished answer; the same as `finish` unless a platform adds to it
        (Slack puts its feedback buttons on an answer, never on an error notice)."""
        await self.finish(text)

    async def finish_reply(self, event: DoneEvent, notices: list[str]) -> str:
        """Show a finished answer and return the text shown: a chat message shows `final_text`; a surface
        that draws answers otherwise (the terminal, which cannot edit what it printed) overrides this."""
        text = final_text(event, notices)
        await self.finish_answer(text)
        return text

    async def restart(self, placeholder: str) -> None:
        """A new attempt begins: back to one placeholder message."""
        self._pending = None
        for message_id in self.message_ids[1:]:
            await self.sink.delete(message_id)
        self.message_ids, self._shown = self.message_ids[:1], self._shown[:1]
        await self.pacer.acquire(self.sink.channel_key)
        await self._render(placeholder)

    async def _render(self, text: str) -> None:
        parts = split_message(text, self.sink.max_chars) or [EMPTY_ANSWER]
        for index, part in enumerate(parts):
            if index < len(self.message_ids):
                if self._shown[index] != part:
                    await self.sink.edit(self.message_ids[index], part)
                    self._shown[index] = part
            else:
                self.message_ids.append(await self.sink.post(part))
                self._shown.append(part)


@dataclass(frozen=True)
class RelayOutcome:
    status: str  # "done", "error", "no_worker", "unreachable", "lost" (another process relays it now)
    text: str
    finish_reason: FinishReason | None = None


def final_text(event: DoneEvent, notices: list[str]) -> str:
    text = event.text.strip() or EMPTY_ANSWER
    if event.finish_reason is FinishReason.DEADLINE:
        text += "\n\n" + messages.CUT_SHORT
    elif event.finish_reason is FinishReason.CANCELLED:
        text += "\n\n" + messages.STOPPED
    if notices:
        text += "\n\n" + "\n".join(f"_{notice}_" for notice in notices)
    return text


async def relay_reply(
    *,
    queue: RequestQueue,
    request_id: str,
    editor: StreamingEditor,
    model: str,
    worker_wait_seconds: float,
    after: str = "0-0",
    still_held: Callable[[], bool] | None = None,
) -> RelayOutcome:
    """Follow the request's reply stream into the chat until `done` or `error`.

    `still_held` is asked before each step: once it says False (this process lost the answer's lease to
    another), the relay stops without touching the chat.
    """
    text, attempt, started = "", 0, False
    notices: list[str] = []
    waiting_since = time.monotonic()
    try:
        async for _stream_id, event in queue.events(request_id, after=after):
            if still_held is not None and not still_held():
                log.warning("relay stopped, its lease is lost", request_id=request_id)
                return RelayOutcome("lost", text)
            if event is None:
                if not started and time.monotonic() - waiting_since > worker_wait_seconds:
                    if await queue.workers_alive(model) == 0:
                        await queue.cancel(request_id)
                        await editor.finish(messages.NO_WORKER)
                        return RelayOutcome("no_worker", messages.NO_WORKER)
                    waiting_since = time.monotonic()
                await editor.flush()
                continue
            if event.attempt < attempt:
                continue  # a late event of an attempt already superseded
            if event.attempt > attempt:
                if attempt:
                    text, notices = "", []
                    await editor.restart(messages.RESTARTING)
                attempt = event.attempt
            if isinstance(event, StartEvent):
                started = True
            elif isinstance(event, DeltaEvent):
                started = True
                text += event.text
                await editor.update(text)
            elif isinstance(event, NoticeEvent):
                notices.append(event.message)
            elif isinstance(event, DoneEvent):
                shown = await editor.finish_reply(event, notices)
                return RelayOutcome("done", shown, event.finish_reason)
            elif isinstance(event, ErrorEvent):
                await editor.finish(event.message)
                return RelayOutcome("error", event.message)
    except QueueUnavailable:
        log.warning("redis unreachable while relaying", request_id=request_id)
        await editor.finish(messages.QUEUE_UNREACHABLE)
        return RelayOutcome("unreachable", messages.QUEUE_UNREACHABLE)
    raise AssertionError("reply stream ended without done or error")  # events() never ends by itself
