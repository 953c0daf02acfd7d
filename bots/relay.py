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
from brandbot.contract import (
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    FinishReason,
    NoticeEvent,
    ReplyEvent,
    StartEvent,
)
from brandbot.errors import QueueUnavailable
from brandbot.logs import get_logger
from brandbot.queue import RequestQueue
from brandbot.settings import Settings
from brandbot.streams import ReplyLost

log = get_logger(__name__)

STREAMING_CURSOR = " ▍"
EMPTY_ANSWER = "…"

IDLE_TICK_SECONDS = 1.0
"""Without news for this long, the relay flushes pending text and checks its deadline and workers."""

DEADLINE_MARGIN_SECONDS = 30.0
"""An answer's relay ends this long after the worker's own deadline would have ended it: the worker's
`done` (cut short) normally arrives first; the margin covers a retry's pickup and a slow Redis."""

WAITING_STATUSES = frozenset({"queued", "scheduled", "deferred"})
"""RQ job states before any worker took the job: a deadline there only means the queue is long."""


def relay_deadline_seconds(settings: Settings) -> float:
    """How long one attempt of an answer may be relayed: worker wait + generation deadline + margin."""
    return settings.worker_wait_seconds + settings.generation_deadline_seconds + DEADLINE_MARGIN_SECONDS


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
        self._next_prune = 0.0

    def try_acquire(self, channel: str) -> bool:
        now = time.monotonic()
        if self._next_free.get(channel, 0.0) > now:
            return False
        self._prune(now)
        self._next_free[channel] = now + self.interval
        return True

    @property
    def channels(self) -> int:
        """Channels with a turn still pending (the map holds no others for long)."""
        return len(self._next_free)

    def _prune(self, now: float) -> None:
        """Forget channels whose turn has passed (at most once per interval, so it costs O(1) per call)."""
        if now < self._next_prune:
            return
        self._next_prune = now + self.interval
        self._next_free = {channel: free for channel, free in self._next_free.items() if free > now}

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
    status: str  # "done", "error", "no_worker", "unreachable", "lost", "timeout", "lost_lease", "stopped"
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
    deadline_seconds: float | None = None,
    still_held: Callable[[], bool] | None = None,
    stop: asyncio.Event | None = None,
) -> RelayOutcome:
    """Follow the request's reply stream into the chat until `done` or `error`, or one clear error.

    `deadline_seconds`: how long one attempt may take from when it starts (None: the queue's generation
    deadline + `worker_wait_seconds` + a margin, as `relay_deadline_seconds`); past it the generation
    is cancelled and the user told, unless the job is still waiting for a busy worker.
    `still_held`: False once this process no longer holds the answer's lease; the relay then stops at
    once without touching the chat (another process relays it now).
    `stop`: once set, the relay returns ("stopped") at its next safe point, between two chat writes, so
    every message it posted is in the sink's state for the process that resumes the answer.
    """
    if deadline_seconds is None:
        deadline_seconds = queue.deadline_seconds + worker_wait_seconds + DEADLINE_MARGIN_SECONDS
    relay = _Relay(queue, request_id, editor, model, worker_wait_seconds, deadline_seconds, still_held)
    try:
        async with queue.follow(request_id, after=after, watch_job=True) as follower:
            while True:
                arrived = await follower.next(timeout=IDLE_TICK_SECONDS)
                if stop is not None and stop.is_set():
                    return RelayOutcome("stopped", "")
                if relay.lease_lost():
                    return RelayOutcome("lost_lease", "")
                outcome = await (relay.idle() if arrived is None else relay.on_event(arrived[1]))
                if outcome is None and relay.past_deadline():
                    outcome = await relay.deadline_passed()
                if outcome is not None:
                    return outcome
    except QueueUnavailable:
        log.warning("redis unreachable while relaying", request_id=request_id)
        return await relay.end("unreachable", messages.QUEUE_UNREACHABLE)
    except ReplyLost as lost:
        log.warning("reply lost, user told", request_id=request_id, reason=lost.reason)
        return await relay.end("lost", messages.ANSWER_LOST)


@dataclass
class _Relay:
    """One answer's relay state: text so far, attempt, and the clocks that bound it."""

    queue: RequestQueue
    request_id: str
    editor: StreamingEditor
    model: str
    worker_wait_seconds: float
    deadline_seconds: float
    still_held: Callable[[], bool] | None
    text: str = ""
    attempt: int = 0
    started: bool = False
    notices: list[str] = field(default_factory=list)
    waiting_since: float = field(default_factory=time.monotonic)
    deadline: float = 0.0

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.deadline_seconds

    def lease_lost(self) -> bool:
        if self.still_held is None or self.still_held():
            return False
        log.warning("relay lease lost, another process relays this answer", request_id=self.request_id)
        return True

    async def end(self, status: str, text: str) -> RelayOutcome:
        if self.lease_lost():
            return RelayOutcome("lost_lease", "")
        await self.editor.finish(text)
        return RelayOutcome(status, text)

    def past_deadline(self) -> bool:
        return time.monotonic() >= self.deadline

    async def idle(self) -> RelayOutcome | None:
        now = time.monotonic()
        if not self.started and now - self.waiting_since > self.worker_wait_seconds:
            self.waiting_since = now
            if await self._no_worker_alive():
                await self._cancel()
                return await self.end("no_worker", messages.NO_WORKER)
        await self.editor.flush()
        return None

    async def on_event(self, event: ReplyEvent) -> RelayOutcome | None:
        if event.attempt < self.attempt:
            return None  # a late event of an attempt already superseded
        if event.attempt > self.attempt:
            if self.attempt:
                self.text, self.notices = "", []
                await self.editor.restart(messages.RESTARTING)
            self.attempt = event.attempt
            self.deadline = time.monotonic() + self.deadline_seconds  # a new attempt gets the time again
        if isinstance(event, StartEvent):
            self.started = True
        elif isinstance(event, DeltaEvent):
            self.started = True
            self.text += event.text
            await self.editor.update(self.text)
        elif isinstance(event, NoticeEvent):
            self.notices.append(event.message)
        elif isinstance(event, DoneEvent):
            shown = await self.editor.finish_reply(event, self.notices)
            return RelayOutcome("done", shown, event.finish_reason)
        elif isinstance(event, ErrorEvent):
            await self.editor.finish(event.message)
            return RelayOutcome("error", event.message)
        return None

    async def deadline_passed(self) -> RelayOutcome | None:
        """Past the deadline: a job still queued behind busy workers waits on; anything else ends."""
        try:
            status = await self.queue.job_status(self.request_id)
            # Taken by a worker this instant, its start not read yet: a long queue, not a stuck answer.
            just_taken = status == "started" and not self.started
            waiting = (status in WAITING_STATUSES or just_taken) and not await self._no_worker_alive()
        except QueueUnavailable:
            waiting = False
        if waiting:
            self.deadline = time.monotonic() + self.deadline_seconds
            return None
        log.warning("relay deadline passed, generation cancelled", request_id=self.request_id)
        await self._cancel()
        return await self.end("timeout", messages.ANSWER_TIMED_OUT)

    async def _no_worker_alive(self) -> bool:
        try:
            return await self.queue.workers_alive(self.model) == 0
        except QueueUnavailable:
            return False  # unknown: the stream reader rides the outage out and says when it is too long

    async def _cancel(self) -> None:
        try:
            await self.queue.cancel(self.request_id)
        except QueueUnavailable:
            log.warning("generation not cancelled, redis unreachable", request_id=self.request_id)
