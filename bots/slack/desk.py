"""From a Slack question to a finished answer: seen before? allowed? then queue it and relay the reply.

Checks that need no network come first, then the ones in Redis (de-duplication, rate limit); a retry or
a replay of an event is dropped before anything is counted or shown. The sign of life (the head message
with Stop) goes up while the request is built and queued, so neither waits for the other. Every answer
runs as a task of its own with an in-flight record and a lease (`bots.relay_book`): a restarted or
second front-end finishes answers whose process stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import redis
from slack_sdk.web.async_client import AsyncWebClient

from bots.access import AccessRules, RateLimiter, Refusal, check_access
from bots.relay import ChannelPacer, relay_reply
from bots.relay_book import RelayBook
from bots.slack.context import PeopleDirectory, conversation_request
from bots.slack.controls import assistant_thread_key
from bots.slack.events import SlackQuestion, Trigger, addressed_text
from bots.slack.notices import say_in_thread, whisper
from bots.slack.sink import (
    DeliveryFailed,
    MessageTooLong,
    Place,
    SlackAnswerSink,
    SlackEditor,
    Streamed,
    StreamingSupport,
    Throttled,
)
from brandbot import keys, messages
from brandbot.contract import Platform, new_request_id
from brandbot.errors import QueueUnavailable
from brandbot.logs import get_logger
from brandbot.promptfiles.library import Resolution
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.queue import Enqueued, RequestQueue
from brandbot.settings import Settings

log = get_logger(__name__)

DEDUP_SECONDS = 3600
"""An event or message id is remembered this long: Slack retries for minutes and replays after reconnects."""

MAX_CONCURRENT_INTAKE = 24
MAX_CONCURRENT_RELAYS = 48
"""Questions screened and queued at once, and answers relayed at once; more wait their turn (a burst is
queued, not refused). Both use the queue's Redis client, whose async pool refuses rather than waits
past its 100 connections: that would read as "Redis unreachable" to the asker. A relay holds a
connection while it blocks on its reply stream; a waiting relay's placeholder is up, its worker busy."""

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, QueueUnavailable)
UNDELIVERABLE = (DeliveryFailed, Throttled, MessageTooLong)

EnqueueObserver = Callable[[float], None]
"""Called with the seconds from an event reaching its listener to its job being in Redis (benchmarks)."""


@dataclass(frozen=True)
class Accepted:
    """A question that is queued, with its placeholder up: what is left is relaying its answer."""

    request_id: str
    model: str
    editor: SlackEditor
    ahead: int


def joined_thread_key(channel: str, thread_ts: str) -> str:
    """Set while the bot answers in a thread: replies there reach it without a mention."""
    return f"{keys.KEY_PREFIX}:slack:joined:{channel}:{thread_ts}"


class SlackDesk:
    """Screens questions and runs their answers; one per front-end process.

    ```python
    desk = SlackDesk(client=client, settings=settings, queue=queue, prompts=prompts, access=lambda: rules)
    desk.receive(question, received_at=time.perf_counter())  # returns at once; the answer runs as a task
    ```
    """

    def __init__(
        self,
        *,
        client: AsyncWebClient,
        settings: Settings,
        queue: RequestQueue,
        prompts: LivePromptLibrary,
        access: Callable[[], AccessRules],
        pacer: ChannelPacer,
        on_enqueued: EnqueueObserver | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.queue = queue
        self.prompts = prompts
        self.access = access
        self.pacer = pacer
        self.on_enqueued = on_enqueued
        self.bot_user_id: str | None = None  # learned from the first event (bolt's auth.test)
        self.people = PeopleDirectory(client)
        self.rate_limiter = RateLimiter(queue.redis)
        self.streaming = StreamingSupport(settings.slack_streaming and settings.slack_native_markdown)
        self.book = RelayBook(
            queue.redis, platform=Platform.SLACK.value, retention_seconds=settings.retention_seconds
        )
        self._intake_slots = asyncio.Semaphore(MAX_CONCURRENT_INTAKE)
        self._relay_slots = asyncio.Semaphore(MAX_CONCURRENT_RELAYS)
        self._answers: set[asyncio.Task[None]] = set()
        self._housekeeping: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ screening
    def receive(self, question: SlackQuestion, *, received_at: float) -> None:
        self._spawn(self._take(question, received_at))

    def followups_allowed(self) -> bool:
        """`slack.thread_follow_ups` in routing.yaml, read per message so an edit applies at once."""
        return self.prompts.current().routing.slack.thread_follow_ups

    async def _take(self, question: SlackQuestion, received_at: float) -> None:
        async with self._intake_slots:
            answer = await self._accept(question, received_at)
        if answer is None:
            return
        if answer.ahead:
            with contextlib.suppress(*UNDELIVERABLE):
                await answer.editor.show_status(messages.queue_position(answer.ahead))
        await self._relay(answer.request_id, answer.model, answer.editor, answer.editor.slack_sink)

    async def _accept(self, question: SlackQuestion, received_at: float) -> Accepted | None:
        """Screen the question; if it is to be answered, show life and queue it."""
        try:
            if not await self._concerns_us(question):
                return None
            if not await self._first_time(question):
                log.info("duplicate event ignored", channel=question.channel_id, ts=question.ts)
                return None
        except REDIS_ERRORS:
            log.warning("redis unreachable, question not taken", channel=question.channel_id)
            if question.explicit:
                await self._say(question, messages.QUEUE_UNREACHABLE)
            return None
        refusal = self._refusal(question)
        if refusal is not None:
            if question.explicit:
                await self._whisper(question, refusal)
            return None
        text = addressed_text(question.text, self.bot_user_id)
        if not text:
            await self._say(question, messages.EMPTY_MENTION)
            return None
        limit = self.access().max_question_chars or self.settings.max_question_chars
        if len(text) > limit:
            await self._whisper(question, messages.TOO_LONG.format(length=len(text), limit=limit))
            return None
        try:
            if await self._rate_limited(question):
                return None
            assistant_thread = question.is_direct_message and bool(
                await self.queue.redis.exists(assistant_thread_key(question.channel_id, question.thread_ts))
            )
        except REDIS_ERRORS:
            await self._say(question, messages.QUEUE_UNREACHABLE)
            return None
        return await self._start_answer(question, received_at, assistant_thread=assistant_thread)

    async def _concerns_us(self, question: SlackQuestion) -> bool:
        """A thread reply without a mention is for the bot only in a thread it already answers in."""
        if question.trigger is not Trigger.THREAD_FOLLOWUP:
            return True
        return bool(await self.queue.redis.exists(joined_thread_key(question.channel_id, question.thread_ts)))

    async def _first_time(self, question: SlackQuestion) -> bool:
        """Mark every id of this message as seen; False if any was seen before (a retry, replay or twin)."""
        async with self.queue.redis.pipeline(transaction=True) as pipe:
            for dedup_id in question.dedup_ids:
                pipe.set(keys.seen_event("slack", dedup_id), b"1", nx=True, ex=DEDUP_SECONDS)
            fresh = await pipe.execute()
        return all(fresh)

    def _refusal(self, question: SlackQuestion) -> str | None:
        refusal = check_access(self.access(), question.asker)
        if refusal is None:
            return None
        log.info("question refused", refusal=refusal.value, user_id=question.user_id)
        return (
            messages.SLACK_DIRECT_MESSAGES_OFF if refusal is Refusal.DIRECT_MESSAGES else messages.NOT_ALLOWED
        )

    async def _rate_limited(self, question: SlackQuestion) -> bool:
        """True (after telling the user, once per wait) if they asked too often. Raises on Redis errors."""
        wait = await self.rate_limiter.acquire("slack", question.user_id, self.access().rate_limit)
        if wait <= 0:
            return False
        seconds = max(math.ceil(wait), 1)
        log.info("question rate limited", user_id=question.user_id, wait_s=seconds)
        notice_key = f"{keys.KEY_PREFIX}:ratelimit-notice:slack:{question.user_id}"
        if await self.queue.redis.set(notice_key, b"1", nx=True, ex=seconds):
            await self._whisper(question, messages.RATE_LIMITED.format(seconds=seconds))
        return True

    # ------------------------------------------------------------------ answering
    async def _start_answer(
        self, question: SlackQuestion, received_at: float, *, assistant_thread: bool
    ) -> Accepted | None:
        """The placeholder goes up while the request is built and queued: neither waits for the other."""
        request_id = new_request_id()
        resolution = self._resolve(question)
        model = resolution.persona.model
        place = Place(
            channel=question.channel_id,
            thread_ts=question.thread_ts,
            asker_id=question.user_id,
            team_id=question.team_id,
            assistant_thread=assistant_thread,
        )
        sink = self._sink(place, request_id)
        editor = SlackEditor(sink, self.pacer)
        shown, enqueued = await asyncio.gather(
            self._show_life(editor, request_id),
            self._enqueue(question, resolution, request_id, received_at),
            return_exceptions=True,
        )
        if isinstance(enqueued, BaseException):
            # A bug, not an outage: say so in the thread rather than leave "Thinking…" up forever.
            log.error("request not built", request_id=request_id, exc_info=enqueued)
            if shown is True:
                await self._fail(editor)
            return None
        if shown is not True:
            if enqueued is not None:
                await self._cancel_quietly(request_id)  # nowhere to show it: do not spend a GPU on it
            return None
        if enqueued is None:
            with contextlib.suppress(*UNDELIVERABLE):
                await editor.finish(messages.QUEUE_UNREACHABLE)
            return None
        with contextlib.suppress(*REDIS_ERRORS):
            await self.queue.redis.set(
                joined_thread_key(question.channel_id, question.thread_ts),
                b"1",
                ex=self.settings.retention_seconds,
            )
        await self._track(request_id, model, sink)
        return Accepted(request_id, model, editor, enqueued.ahead)

    @staticmethod
    async def _fail(editor: SlackEditor) -> None:
        with contextlib.suppress(*UNDELIVERABLE):
            await editor.finish(messages.GENERATION_FAILED)

    def _sink(self, place: Place, request_id: str) -> SlackAnswerSink:
        return SlackAnswerSink(
            client=self.client,
            place=place,
            request_id=request_id,
            native_markdown=self.settings.slack_native_markdown,
            streaming=self.streaming,
        )

    def _resolve(self, question: SlackQuestion) -> Resolution:
        """Slack threads live in their channel, so the channel's routing applies to them."""
        return self.prompts.current().resolve(
            platform=Platform.SLACK, workspace_id=question.team_id, channel_id=question.channel_id
        )

    async def _show_life(self, editor: SlackEditor, request_id: str) -> bool:
        try:
            await editor.start(messages.THINKING)
            return True
        except UNDELIVERABLE as error:
            log.warning("placeholder not shown, question dropped", request_id=request_id, error=str(error))
            return False

    async def _enqueue(
        self, question: SlackQuestion, resolution: Resolution, request_id: str, received_at: float
    ) -> Enqueued | None:
        request = await conversation_request(
            self.client,
            self.people,
            question,
            persona=resolution.persona.name,
            request_id=request_id,
            bot_user_id=self.bot_user_id,
        )
        try:
            enqueued = await self.queue.enqueue(request, model=resolution.persona.model)
        except QueueUnavailable:
            log.warning("redis unreachable, request not queued", request_id=request_id)
            return None
        if self.on_enqueued is not None:
            self.on_enqueued(time.perf_counter() - received_at)
        log.info(
            "request queued",
            request_id=request_id,
            trigger=question.trigger.value,
            persona=request.persona,
            ahead=enqueued.ahead,
            turns=len(request.turns),
            chars=len(request.turns[-1].content),
        )
        return enqueued

    async def _track(self, request_id: str, model: str, sink: SlackAnswerSink) -> None:
        """Record the answer (ids only) so another process can finish it; losing that is not fatal."""

        async def save() -> None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self.book.record(request_id, {"model": model, "sink": sink.state()})

        try:
            await self.book.claim(request_id)
            await self.book.record(request_id, {"model": model, "sink": sink.state()})
        except REDIS_ERRORS:
            log.warning("in-flight record not saved", request_id=request_id)
            return
        sink.on_change = save

    async def _relay(self, request_id: str, model: str, editor: SlackEditor, sink: SlackAnswerSink) -> None:
        """Follow the reply stream to its end; a cancelled relay (shutdown) keeps its record for later."""
        try:
            async with self._relay_slots:
                outcome = await relay_reply(
                    queue=self.queue,
                    request_id=request_id,
                    editor=editor,
                    model=model,
                    worker_wait_seconds=self.settings.worker_wait_seconds,
                )
            await sink.discard_leftovers()
            log.info("reply relayed", request_id=request_id, status=outcome.status, chars=len(outcome.text))
        except UNDELIVERABLE as error:
            log.warning("reply undeliverable, generation stopped", request_id=request_id, error=str(error))
            await self._cancel_quietly(request_id)
            await sink.abandon()
        except Exception:
            # A bug, not an outage: stop the generation and say so, rather than leave Stop up forever.
            log.exception("relaying failed", request_id=request_id)
            await self._cancel_quietly(request_id)
            with contextlib.suppress(*UNDELIVERABLE):
                await editor.finish(messages.GENERATION_FAILED)
        if sink.place.assistant_thread:
            await sink.set_assistant_status("")
        with contextlib.suppress(*REDIS_ERRORS):
            await self.book.finish(request_id)

    async def _cancel_quietly(self, request_id: str) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self.queue.cancel(request_id)

    # ------------------------------------------------------------------ notices
    async def _say(self, question: SlackQuestion, text: str) -> None:
        await say_in_thread(
            self.client,
            channel=question.channel_id,
            thread_ts=question.thread_ts,
            text=text,
            native_markdown=self.settings.slack_native_markdown,
        )

    async def _whisper(self, question: SlackQuestion, text: str) -> None:
        thread_ts = question.thread_ts if question.in_existing_thread else None
        await whisper(
            self.client, channel=question.channel_id, user=question.user_id, text=text, thread_ts=thread_ts
        )

    # ------------------------------------------------------------------ resuming and shutdown
    def start_housekeeping(self) -> None:
        if self._housekeeping is None:
            self._housekeeping = asyncio.create_task(self.book.keep_relaying(self.resume_orphans))

    async def resume_orphans(self) -> int:
        """Finish answers whose relaying process stopped (this one before a restart, or another replica)."""
        orphans = await self.book.orphans()
        for request_id, record in orphans:
            try:
                sink = self._sink_from_state(request_id, record["sink"])
                model = str(record["model"])
            except (KeyError, TypeError, ValueError):
                log.warning("unreadable in-flight record dropped", request_id=request_id)
                await self.book.finish(request_id)
                continue
            log.info("resuming an answer", request_id=request_id, messages=len(sink.adopt))
            self._spawn(self._resume(request_id, model, sink))
        return len(orphans)

    def _sink_from_state(self, request_id: str, state: dict[str, Any]) -> SlackAnswerSink:
        """The sink of an earlier process; it adopts that process's messages in order."""
        place = Place(
            channel=str(state["channel"]),
            thread_ts=str(state["thread_ts"]),
            asker_id=str(state["asker_id"]),
            team_id=state.get("team_id"),
            assistant_thread=bool(state.get("assistant_thread")),
        )
        sink = self._sink(place, request_id)
        sink.adopt = [str(ts) for ts in [state["head_ts"], *state.get("parts", [])] if ts]
        sink.head_gone = bool(state.get("head_gone"))
        if state.get("content_ts"):
            sink.content = Streamed(str(state["content_ts"]))
        return sink

    async def _resume(self, request_id: str, model: str, sink: SlackAnswerSink) -> None:
        await self._track(request_id, model, sink)
        editor = SlackEditor(sink, self.pacer)
        try:
            await sink.settle_adopted_stream()
            await editor.start(messages.THINKING)  # adopts the head: it keeps what it shows for now
        except UNDELIVERABLE as error:
            log.warning("resumed answer could not be shown", request_id=request_id, error=str(error))
            with contextlib.suppress(*REDIS_ERRORS):
                await self.book.finish(request_id)
            return
        await self._relay(request_id, model, editor, sink)

    async def shutdown(self) -> None:
        """Stop relaying; records stay and leases are released, so the next process resumes at once."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        answers = list(self._answers)
        for task in answers:
            task.cancel()
        await asyncio.gather(*answers, return_exceptions=True)
        for request_id in list(self.book.held):
            with contextlib.suppress(*REDIS_ERRORS):
                await self.book.release(request_id)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)
        task.add_done_callback(_report_crash)
        return task


def _report_crash(task: asyncio.Task[None]) -> None:
    """A bug in an answer task must show in the logs, not vanish with the task."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("answer task failed", error_type=type(error).__name__, exc_info=error)
