"""From a screened question to a finished answer in Discord, the same for slash commands and messages.

The desk checks what needs no network (access, length, persona), then what needs Redis (seen before?
rate limit), then queues the request and relays the reply stream into a sink. Every answer runs as a task
of its own with an in-flight record and a lease (`relays.RelayBook`); a restarted or second front-end
finishes answers whose process stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import traceback
from collections.abc import Callable
from typing import Any

import discord
import redis
from rq.job import Job

from bots.access import AccessRules, RateLimiter, Refusal, check_access
from bots.discord.conversation import Question
from bots.discord.sinks import (
    INTERACTION_TOKEN_SECONDS,
    TOKEN_MARGIN_SECONDS,
    ChannelSink,
    ChannelWriter,
    DeliveryFailed,
    InteractionSink,
    InteractionWriter,
    Sink,
)
from bots.relay import ChannelPacer, StreamingEditor, relay_reply
from bots.relay_book import RelayBook
from brandbot import keys, messages
from brandbot.contract import GenerationRequest, Platform, ReplyTarget, Role, Turn, UserRef
from brandbot.errors import QueueUnavailable
from brandbot.logs import get_logger
from brandbot.promptfiles.library import Resolution
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.queue import RequestQueue
from brandbot.settings import Settings

log = get_logger(__name__)

DEDUP_SECONDS = 3600
"""A message or interaction id is remembered this long: replays after reconnects come much sooner."""

SHUTDOWN_SECONDS = 5.0
"""At stop, answers in flight get this long to wind down, and leases this long to be released."""

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, QueueUnavailable)

Clock = Callable[[], float]


class AnswerDesk:
    """Screens questions and runs their answers; one per front-end process.

    ```python
    desk = AnswerDesk(client=bot, settings=settings, queue=queue, prompts=prompts, access=lambda: rules)
    verdict = desk.screen(question)  # a Resolution, or the refusal to show
    desk.start(question, verdict, desk.channel_sink(channel_id=..., reply_to=...))
    ```
    """

    def __init__(
        self,
        *,
        client: discord.Client,
        settings: Settings,
        queue: RequestQueue,
        prompts: LivePromptLibrary,
        access: Callable[[], AccessRules],
        rate_limiter: RateLimiter | None = None,
        clock: Clock,
    ) -> None:
        self.client = client
        self.settings = settings
        self.queue = queue
        self.prompts = prompts
        self.access = access
        self.rate_limiter = rate_limiter or RateLimiter(queue.redis)
        self.clock = clock
        self.pacer = ChannelPacer(settings.edit_interval_seconds)
        self.book = RelayBook(queue.redis, platform="discord", retention_seconds=settings.retention_seconds)
        self._answers: set[asyncio.Task[None]] = set()
        self._housekeeping: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ screening
    def refusal(self, question: Question) -> str | None:
        """Why this person may not ask here (shown to them), or None."""
        rules = self.access()
        refusal = check_access(rules, question.asker)
        if refusal is None and question.parent_channel_id and question.channel_id in rules.block_channels:
            refusal = Refusal.CHANNEL
        if refusal is not None:
            log.info("question refused", refusal=refusal.value, user_id=question.user_id)
            return messages.NOT_ALLOWED
        return None

    def screen(self, question: Question) -> Resolution | str:
        """The persona that answers, or the refusal to show the asker (access, length, persona pick)."""
        refusal = self.refusal(question)
        if refusal is not None:
            return refusal
        limit = self.access().max_question_chars or self.settings.max_question_chars
        if len(question.text) > limit:
            return messages.TOO_LONG.format(length=len(question.text), limit=limit)
        library = self.prompts.current()
        place = place_of(question)
        resolution = library.resolve(**place, requested=question.requested_persona)
        if resolution.refused_request is not None:
            choosable = [persona.name for persona in library.choosable(**place)]
            return messages.discord_persona_refused(resolution.refused_request, choosable)
        return resolution

    async def first_time(self, event_id: str) -> bool:
        """Remember a message or interaction id; False if seen before (a replay). Raises on Redis errors."""
        return bool(
            await self.queue.redis.set(keys.seen_event("discord", event_id), b"1", nx=True, ex=DEDUP_SECONDS)
        )

    async def rate_limit_wait(self, user_id: str) -> int:
        """0 if the user may ask now, else the whole seconds to wait. Raises on Redis errors."""
        wait = await self.rate_limiter.acquire("discord", user_id, self.access().rate_limit)
        return math.ceil(wait) if wait > 0 else 0

    async def first_rate_notice(self, user_id: str, seconds: int) -> bool:
        """Whether to tell the user they are limited: once per wait, so spamming mentions cannot spam back."""
        key = f"{keys.KEY_PREFIX}:ratelimit-notice:discord:{user_id}"
        return bool(await self.queue.redis.set(key, b"1", nx=True, ex=max(seconds, 1)))

    # ------------------------------------------------------------------ sinks
    def channel_sink(self, *, channel_id: int, reply_to: int | None) -> ChannelSink:
        return ChannelSink(writer=self._channel_writer(channel_id), reply_to=reply_to)

    def interaction_sink(self, interaction: discord.Interaction, *, private: bool) -> InteractionSink:
        assert interaction.channel_id is not None
        return self._interaction_sink(
            application_id=interaction.application_id,
            token=interaction.token,
            private=private,
            channel_id=interaction.channel_id,
            user_id=interaction.user.id,
            move_at=self.clock() + INTERACTION_TOKEN_SECONDS - TOKEN_MARGIN_SECONDS,
        )

    def _interaction_sink(
        self, *, application_id: int, token: str, private: bool, channel_id: int, user_id: int, move_at: float
    ) -> InteractionSink:
        async def open_fallback() -> ChannelWriter:
            if not private:
                return self._channel_writer(channel_id)
            try:
                dm = await self.client.create_dm(discord.Object(user_id))
            except discord.HTTPException as error:
                raise DeliveryFailed("open DM", error) from error
            return self._channel_writer(dm.id, kind=discord.ChannelType.private)

        return InteractionSink(
            webhook=InteractionWriter(self.client.http, application_id, token, private),
            channel_id=channel_id,
            user_id=user_id,
            move_at=move_at,
            clock=self.clock,
            open_fallback=open_fallback,
        )

    def _channel_writer(self, channel_id: int, kind: discord.ChannelType | None = None) -> ChannelWriter:
        return ChannelWriter(self.client.get_partial_messageable(channel_id, type=kind))

    def sink_from_state(self, state: dict[str, Any]) -> Sink:
        """Rebuild a sink from its in-flight record; it adopts the messages it showed before."""
        adopt = [str(message_id) for message_id in state["message_ids"]]
        if state["kind"] == "channel":
            sink = self.channel_sink(channel_id=int(state["channel_id"]), reply_to=state.get("reply_to"))
            sink.adopt = adopt
            return sink
        restored = self._interaction_sink(
            application_id=int(state["application_id"]),
            token=str(state["token"]),
            private=bool(state["private"]),
            channel_id=int(state["channel_id"]),
            user_id=int(state["user_id"]),
            move_at=float(state["move_at"]),
        )
        restored.adopt = adopt
        restored.placed = {str(k): str(v) for k, v in state.get("placed", {}).items()}
        if state.get("fallback_channel_id"):
            restored.fallback_channel_id = int(state["fallback_channel_id"])
        return restored

    # ------------------------------------------------------------------ answering
    def start(self, question: Question, resolution: Resolution, sink: Sink) -> asyncio.Task[None]:
        """Answer in the background (the event handler returns at once)."""
        return self._spawn(self._answer(question, resolution, sink))

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)
        task.add_done_callback(_report_crash)
        return task

    def request_for(self, question: Question, resolution: Resolution) -> GenerationRequest:
        in_thread = question.parent_channel_id is not None
        return GenerationRequest(
            target=ReplyTarget(
                platform=Platform.DISCORD,
                workspace_id=question.guild_id,
                channel_id=question.parent_channel_id or question.channel_id,
                thread_id=question.channel_id if in_thread else None,
                message_id=question.message_id,
            ),
            user=UserRef(id=question.user_id, display_name=question.display_name),
            channel_name=question.channel_name,
            persona=resolution.persona.name,
            turns=[
                *question.history,
                Turn(role=Role.USER, content=question.text, name=question.display_name or None),
            ],
        )

    async def _answer(self, question: Question, resolution: Resolution, sink: Sink) -> None:
        request = self.request_for(question, resolution)
        model = resolution.persona.model
        editor = StreamingEditor(sink, self.pacer)
        try:
            await editor.start(messages.THINKING)
            enqueued = await self.queue.enqueue(request, model=model)
        except QueueUnavailable:
            log.warning("redis unreachable, request not queued", event_id=question.event_id)
            with contextlib.suppress(DeliveryFailed):  # nothing more to tell if Discord refuses too
                await editor.finish(messages.QUEUE_UNREACHABLE)
            return
        except DeliveryFailed as error:
            log.warning("answer could not be shown", event_id=question.event_id, error=str(error))
            return
        log.info(
            "request queued",
            request_id=request.request_id,
            event_id=question.event_id,
            persona=request.persona,
            ahead=enqueued.ahead,
            turns=len(request.turns),
            chars=len(question.text),
        )
        await self._track(request.request_id, model, sink)
        await self._relay(request.request_id, model, editor, sink, ahead=enqueued.ahead)

    async def _track(self, request_id: str, model: str, sink: Sink) -> None:
        """Record the answer (ids only) so another process can finish it; losing that is not fatal."""

        async def save() -> None:
            await self.book.record(request_id, {"model": model, "sink": sink.state()})

        try:
            await self.book.claim(request_id)
            await save()
        except REDIS_ERRORS:
            log.warning("in-flight record not saved", request_id=request_id)
            return
        sink.on_change = save

    async def _relay(
        self, request_id: str, model: str, editor: StreamingEditor, sink: Sink, *, ahead: int = 0
    ) -> None:
        """Follow the reply stream to its end; a cancelled relay (shutdown) keeps its record for later."""
        try:
            if ahead:
                await editor.finish(messages.queue_position(ahead))
            outcome = await relay_reply(
                queue=self.queue,
                request_id=request_id,
                editor=editor,
                model=model,
                worker_wait_seconds=self.settings.worker_wait_seconds,
            )
            await sink.discard_leftovers()
            log.info("reply relayed", request_id=request_id, status=outcome.status, chars=len(outcome.text))
        except DeliveryFailed as error:
            log.warning("reply undeliverable, generation stopped", request_id=request_id, error=str(error))
            with contextlib.suppress(*REDIS_ERRORS):
                await self.queue.cancel(request_id)
        with contextlib.suppress(*REDIS_ERRORS):
            await self.book.finish(request_id)

    # ------------------------------------------------------------------ resuming and shutdown
    def start_housekeeping(self) -> None:
        if self._housekeeping is None:
            self._housekeeping = asyncio.create_task(self.book.keep_relaying(self.resume_orphans))
            self._housekeeping.add_done_callback(_report_crash)

    async def resume_orphans(self) -> int:
        """Finish answers whose relaying process stopped (this one before a restart, or another replica)."""
        orphans = await self.book.orphans()
        for request_id, record in orphans:
            try:
                model, sink = str(record["model"]), self.sink_from_state(record["sink"])
            except (KeyError, TypeError, ValueError):
                log.warning("unreadable in-flight record dropped", request_id=request_id)
                await self.book.finish(request_id)
                continue
            log.info("resuming an answer", request_id=request_id, messages=len(sink.adopt))
            self._spawn(self._resume(request_id, model, sink))
        return len(orphans)

    async def _resume(self, request_id: str, model: str, sink: Sink) -> None:
        await self._track(request_id, model, sink)
        editor = StreamingEditor(sink, self.pacer)
        try:
            await editor.start(messages.THINKING)  # adopts the first message; the stream replays over it
            if not await self._still_known(request_id):
                log.warning("resumed answer is gone from redis", request_id=request_id)
                await editor.finish(messages.GENERATION_FAILED)
                with contextlib.suppress(*REDIS_ERRORS):
                    await self.book.finish(request_id)
                return
        except DeliveryFailed as error:
            log.warning("resumed answer could not be shown", request_id=request_id, error=str(error))
            with contextlib.suppress(*REDIS_ERRORS):
                await self.book.finish(request_id)
            return
        await self._relay(request_id, model, editor, sink)

    async def _still_known(self, request_id: str) -> bool:
        """Its job or reply stream is still in Redis (both expire with the retention period)."""
        try:
            return bool(await self.queue.redis.exists(keys.reply_stream(request_id), Job.key_for(request_id)))
        except REDIS_ERRORS:
            return True  # cannot tell: the relay reports an unreachable queue itself

    async def shutdown(self) -> None:
        """Stop relaying; records stay (leases released) so the next process resumes the answers at once.

        Bounded: a stalled Redis or Discord must not keep the process from stopping (a lease left behind
        only delays the resume until it lapses).
        """
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        answers = list(self._answers)
        for task in answers:
            task.cancel()
        if answers:
            await asyncio.wait(answers, timeout=SHUTDOWN_SECONDS)
        with contextlib.suppress(TimeoutError, *REDIS_ERRORS):
            async with asyncio.timeout(SHUTDOWN_SECONDS):
                for request_id in list(self.book.held):
                    await self.book.release(request_id)


def place_of(question: Question) -> dict[str, Any]:
    """The routing keywords of `PromptLibrary.resolve` / `.choosable` for where `question` was asked."""
    return {
        "platform": Platform.DISCORD,
        "workspace_id": question.guild_id,
        "channel_id": question.channel_id,
        "parent_channel_id": question.parent_channel_id,
    }


def crash_site(error: BaseException) -> str:
    """Where an unexpected error was raised (`file:line in function`): enough to find the bug.

    The error's message is left out of logs on purpose: it may quote what a user wrote.
    """
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown"
    frame = frames[-1]
    return f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno} in {frame.name}"


def _report_crash(task: asyncio.Task[None]) -> None:
    """A bug in a background task must show in the logs, not vanish with the task."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("discord background task failed", error_type=type(error).__name__, at=crash_site(error))
