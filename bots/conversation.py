"""The conversation core: a question's whole life, the same for every chat platform.

In order: intake (the adapter turns a platform event into a `Question` and a `Reception`) → allowed?
(access, length, persona: no network) → seen before? (marked seen, recorded in flight and leased in one
Redis step, so no crash leaves a question seen but unrecorded; the rate limit in the same pipeline) →
acknowledge → the sign of life goes up while the conversation is read and the request queued → relay the
reply stream → finish. In a burst, each step is done for every question before the next (`bots.burst`).
Every answer keeps an in-flight record and a lease (`bots.relay_book`): a restarted or second front-end
resumes answers whose process stopped, and a relay whose lease was taken over stops. On shutdown,
questions already being taken in are taken in to the end (queued and recorded); relays stop and leave
their records for the next process.

```python
conversations = Conversations(adapter=slack, settings=settings, queue=queue, prompts=prompts, access=rules)
conversations.start_housekeeping()
conversations.receive(question, reception)  # returns at once; the answer runs as a task
await conversations.shutdown()
```
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import traceback
import unicodedata
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rq.job import Job

from bots.access import AccessRules, Asker, RateLimiter, Refusal, check_access
from bots.burst import Arrival, BurstOrder
from bots.metrics import FrontEndError, FrontEndMetrics
from bots.relay import ChannelPacer, relay_reply
from bots.relay_book import REDIS_ERRORS, RelayBook
from bots.script_batch import ScriptBatcher
from bots.surface import AnswerEditor, AnswerSink, ChatAdapter, Reception, Undeliverable
from brandbot import keys, messages
from brandbot.contract import Platform, new_request_id
from brandbot.errors import QueueUnavailable
from brandbot.logs import get_logger
from brandbot.promptfiles.library import Resolution
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.queue import Enqueued, RequestQueue
from brandbot.settings import Settings
from brandbot.usage import CHAT, AsyncUsageRecorder, UsageGroup, outcome_counts

log = get_logger(__name__)

INTAKE_AT_ONCE = 512
"""Questions taken in at once; more wait their turn (a burst is queued, not refused). A company-wide
announcement's burst of hundreds fits: their Redis work shares pipelines, so taking them in together costs
a few round trips, where a few dozen at a time kept the last ones waiting a second to start."""

INTAKE_REDIS_SECONDS = 1.5
"""Redis work of intake (seen? rate limit?) gets this long where the platform needs an acknowledgement
soon: Discord drops an interaction not deferred within 3 s."""

PATIENT_INTAKE_SECONDS = 10.0
"""Where nothing expires (a Slack event bolt has acked, a Discord message, a terminal line), intake waits
out a Redis restart or a Sentinel failover this long before telling the asker it cannot reach the workers."""

INTAKE_RETRY_SECONDS = 0.25
"""Pause between two tries of intake's Redis work while Redis is unavailable."""

SHUTDOWN_SECONDS = 10.0
"""At stop, questions being taken in get this long to be queued and recorded; relays and leases as long."""

Done = TypeVar("Done")

EnqueueObserver = Callable[[float], None]
"""Called with the seconds from an event reaching its listener to its job being in Redis (benchmarks)."""


@dataclass(frozen=True)
class Question:
    """One question, whatever the platform: who asks where, and what (as addressed to the bot)."""

    platform: Platform
    event_ids: tuple[str, ...]  # every id a retry, replay or twin delivery of it carries
    asker: Asker
    text: str
    workspace_id: str | None
    channel_id: str  # the channel, thread or DM it was asked in
    parent_channel_id: str | None = None  # a thread's channel
    requested_persona: str | None = None
    explicit: bool = True  # addressed to the bot on purpose: refusals are explained
    conversation_id: str | None = None  # the thread the answer goes to (the bot joins it)
    followup: bool = False  # a reply without a mention: for the bot only in a thread it joined
    received_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Refused:
    """The question is not answered; `text` tells the asker why."""

    text: str
    privately: bool = True


@dataclass(frozen=True)
class Accepted:
    """A question that is queued, with its placeholder up: what is left is relaying its answer."""

    request_id: str
    model: str
    editor: AnswerEditor
    sink: AnswerSink
    ahead: int = 0
    usage: UsageGroup | None = None  # what the answer is counted under (`brandbot usage`)
    asked_at: float | None = None  # `Question.received_at`; None for an answer resumed by another process


class Conversations:
    """Takes questions in and relays their answers; one per front-end process and platform."""

    def __init__(
        self,
        *,
        adapter: ChatAdapter,
        settings: Settings,
        queue: RequestQueue,
        prompts: LivePromptLibrary,
        access: Callable[[], AccessRules],
        pacer: ChannelPacer | None = None,
        on_enqueued: EnqueueObserver | None = None,
        metrics: FrontEndMetrics | None = None,
    ) -> None:
        self.adapter = adapter
        self.settings = settings
        self.queue = queue
        self.prompts = prompts
        self.access = access
        self.pacer = pacer or ChannelPacer(settings.edit_interval_seconds)
        self.on_enqueued = on_enqueued
        self.platform = adapter.platform.value
        self.metrics = metrics or FrontEndMetrics(platform=self.platform)
        scripts = ScriptBatcher(queue.redis)  # a burst's intake scripts share pipelines
        self.rate_limiter = RateLimiter(queue.redis, scripts=scripts)
        self.book = RelayBook(
            queue.redis, platform=self.platform, retention_seconds=settings.retention_seconds, scripts=scripts
        )
        self.usage = AsyncUsageRecorder(queue.redis, retention_days=settings.usage_retention_days)
        self.order = BurstOrder()  # in a burst: every ack, then every enqueue, every placeholder, answers
        self._intake_slots = asyncio.Semaphore(INTAKE_AT_ONCE)
        self._intakes: set[asyncio.Task[asyncio.Task[None] | None]] = set()
        self._relays: set[asyncio.Task[None]] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_relaying = asyncio.Event()

    # ------------------------------------------------------------------ intake
    def receive(self, question: Question, reception: Reception) -> None:
        """Take the question in and answer it, in the background (the event handler returns at once)."""
        if self._stopping:
            # Not marked seen: a replay of the event reaches the next process.
            log.info(
                "question arrived during shutdown, left to the next process", event_id=question.event_ids[0]
            )
            return
        self._track(self._intakes, self._take_in(question, reception, self.order.arrive()))

    async def take(self, question: Question, reception: Reception) -> asyncio.Task[None] | None:
        """Take the question in now (a bug reaches the caller); the answer then runs in the background.

        Returns the task relaying the answer, None if there is none (refused, or left to another process):
        a front-end that answers one question at a time (the terminal) waits for it.
        """
        if self._stopping:
            log.info(
                "question arrived during shutdown, left to the next process", event_id=question.event_ids[0]
            )
            return None
        arrival = self.order.arrive()
        return await asyncio.shield(self._track(self._intakes, self._take_in(question, reception, arrival)))

    async def _take_in(
        self, question: Question, reception: Reception, arrival: Arrival
    ) -> asyncio.Task[None] | None:
        self.metrics.events.inc()
        try:
            await self.order.arrivals_settled()  # the rest of a burst is acknowledged first
            async with self._intake_slots:
                accepted = await self._accept(question, reception, arrival)
        finally:
            arrival.shown()  # whatever became of it, it holds back no other question any more
        if accepted is None:
            return None
        if self._stopping:
            # Queued and recorded: the next process relays it (the lease is released at shutdown).
            log.info("answer left to the next process", request_id=accepted.request_id)
            return None
        return self._track(self._relays, self._relay(accepted))

    def refusal(self, question: Question) -> Refused | None:
        """Why this person may not ask here (access rules only), or None."""
        rules = self.access()
        refusal = check_access(rules, question.asker)
        if refusal is None and question.parent_channel_id and question.channel_id in rules.block_channels:
            refusal = Refusal.CHANNEL  # a thread follows its channel's rules, its own id is checked on top
        if refusal is None:
            return None
        log.info("question refused", refusal=refusal.value, user_id=question.asker.user_id)
        return Refused(self.adapter.refusal_text(refusal))

    def verdict(self, question: Question, reception: Reception) -> Resolution | Refused:
        """The persona that answers, or why not (access, no text, too long, a persona not to be picked)."""
        refused = self.refusal(question)
        if refused is not None:
            return refused
        rules = self.access()
        if is_blank(question.text):
            return Refused(reception.empty_hint, privately=False)
        limit = rules.max_question_chars or self.settings.max_question_chars
        if len(question.text) > limit:
            return Refused(messages.TOO_LONG.format(length=len(question.text), limit=limit))
        library = self.prompts.current()
        place: dict[str, Any] = {
            "platform": question.platform,
            "workspace_id": question.workspace_id,
            "channel_id": question.channel_id,
            "parent_channel_id": question.parent_channel_id,
        }
        resolution = library.resolve(**place, requested=question.requested_persona)
        if resolution.refused_request is not None:
            choosable = [persona.name for persona in library.choosable(**place)]
            return Refused(messages.discord_persona_refused(resolution.refused_request, choosable))
        return resolution

    async def _accept(self, question: Question, reception: Reception, arrival: Arrival) -> Accepted | None:
        """Screen the question; if it is to be answered, record it, show life and queue it."""
        verdict = self.verdict(question, reception)
        request_id = new_request_id()
        sink = reception.open_sink(request_id)
        give_up_at = time.monotonic() + reception.intake_patience_seconds
        while True:
            try:
                async with asyncio.timeout(max(give_up_at - time.monotonic(), INTAKE_RETRY_SECONDS)):
                    screened = await self._screen_in_redis(question, reception, verdict, request_id, sink)
                break
            except (*REDIS_ERRORS, TimeoutError):
                # Marking seen is idempotent per request id: repeating a try whose reply was lost is safe.
                if time.monotonic() + INTAKE_RETRY_SECONDS < give_up_at:
                    await asyncio.sleep(INTAKE_RETRY_SECONDS)
                    continue
                log.warning("redis unreachable, question not taken", event_id=question.event_ids[0])
                self.metrics.error(FrontEndError.REDIS_UNREACHABLE)
                with contextlib.suppress(*REDIS_ERRORS):
                    await self.book.forget(request_id)
                if question.explicit:
                    await reception.tell(messages.QUEUE_UNREACHABLE, privately=False)
                return None
        if screened is None:
            return None
        wait, notify_wait = screened
        if isinstance(verdict, Refused):
            if question.explicit:
                await reception.tell(verdict.text, privately=verdict.privately)
            return None
        if wait:
            log.info("question rate limited", user_id=question.asker.user_id, wait_s=wait)
            await self._forget(request_id)
            if notify_wait:
                await reception.tell(messages.RATE_LIMITED.format(seconds=wait), privately=True)
            return None
        if not await reception.acknowledge():
            log.warning(
                "the platform gave up on the question before it was acknowledged", request_id=request_id
            )
            await self._forget(request_id)
            return None
        self.metrics.acks.inc()
        return await self._start_answer(question, reception, verdict, request_id, sink, arrival)

    async def _screen_in_redis(
        self,
        question: Question,
        reception: Reception,
        verdict: Resolution | Refused,
        request_id: str,
        sink: AnswerSink,
    ) -> tuple[int, bool] | None:
        """Seen before? (marked seen and recorded at once) then rate limit: the seconds to wait and whether to
        say so; None when the question is not for us or was seen before. Raises on Redis errors."""
        if question.followup and not await self._joined(question):
            return None
        if isinstance(verdict, Refused):
            fresh, wait = await self.book.first_sight(question.event_ids, request_id), 0
        else:
            usage = self._usage_group(question, verdict)
            record = {"model": verdict.persona.model, "sink": sink.state(), "usage": list(usage.parts())}
            # One pipeline for both (`ScriptBatcher`, in this order): the rate limit charges only the intake
            # that took the question, so a retry of it costs the asker nothing.
            fresh, wait = await asyncio.gather(
                self.book.take(question.event_ids, request_id, record),
                self._rate_limit_wait(question, taker=request_id),
            )
        if not fresh:
            log.info("duplicate event ignored", event_id=question.event_ids[0])
            return None
        notify_wait = wait > 0 and (
            reception.answers_every_refusal or await self._first_notice(question, wait)
        )
        return wait, notify_wait

    async def _joined(self, question: Question) -> bool:
        assert question.conversation_id is not None
        return bool(
            await self.queue.redis.exists(keys.joined_conversation(self.platform, question.conversation_id))
        )

    async def _rate_limit_wait(self, question: Question, *, taker: str) -> int:
        """0 if the asker may ask now, else the whole seconds to wait (charged only if `taker` took it)."""
        seen = keys.seen_event(self.platform, question.event_ids[0])
        wait = await self.rate_limiter.acquire(
            self.platform, question.asker.user_id, self.access().rate_limit, charge_if=(seen, taker)
        )
        return max(math.ceil(wait), 1) if wait > 0 else 0

    async def _first_notice(self, question: Question, seconds: int) -> bool:
        """Tell a limited asker once per wait, so spamming the bot cannot make it spam back."""
        notice = keys.rate_limit_notice(self.platform, question.asker.user_id)
        return bool(await self.queue.redis.set(notice, b"1", nx=True, ex=max(seconds, 1)))

    async def _forget(self, request_id: str) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self.book.forget(request_id)

    # ------------------------------------------------------------------ answering
    async def _start_answer(
        self,
        question: Question,
        reception: Reception,
        resolution: Resolution,
        request_id: str,
        sink: AnswerSink,
        arrival: Arrival,
    ) -> Accepted | None:
        """The placeholder goes up while the request is built and queued: neither waits for the other (in a
        burst, placeholders wait for the rest of the burst to be queued: `bots.burst`)."""
        model = resolution.persona.model
        usage = self._usage_group(question, resolution)
        sink.on_change = self._saver(request_id, model, sink, usage)
        editor = self.adapter.editor(sink, self.pacer)
        shown, enqueued = await asyncio.gather(
            self._show_life(editor, request_id, arrival),
            self._enqueue(question, reception, resolution, request_id, arrival),
            return_exceptions=True,
        )
        if isinstance(enqueued, BaseException):
            # A bug, not an outage: say so rather than leave "Thinking…" up forever.
            log.error("request not built", request_id=request_id, **crash_report(enqueued))
            self.metrics.error(FrontEndError.BUG)
            if shown is True:
                await self._finish_quietly(editor, messages.GENERATION_FAILED)
            await self._finish(request_id)
            return None
        if shown is not True:
            if enqueued is not None:
                await self._cancel_quietly(request_id)  # nowhere to show it: do not spend a GPU on it
            await self._finish(request_id)
            return None
        if enqueued is None:
            await self._finish_quietly(editor, messages.QUEUE_UNREACHABLE)
            await self._finish(request_id)
            return None
        if question.conversation_id is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                joined = keys.joined_conversation(self.platform, question.conversation_id)
                await self.queue.redis.set(joined, b"1", ex=self.settings.retention_seconds)
        await self._count(request_id, usage, {"questions": 1})
        return Accepted(request_id, model, editor, sink, enqueued.ahead, usage, question.received_at)

    def _usage_group(self, question: Question, resolution: Resolution) -> UsageGroup:
        """What this question's usage is counted under (the same as the worker's: the request's target)."""
        return UsageGroup(
            platform=self.platform,
            channel=question.parent_channel_id or question.channel_id,
            persona=resolution.persona.name,
            model=resolution.persona.model,
        )

    async def _count(self, request_id: str, usage: UsageGroup | None, counts: dict[str, int]) -> None:
        """Add to the usage counters (`brandbot usage`); a lost count is not worth failing an answer."""
        if usage is None:
            return
        try:
            await self.usage.record(CHAT, usage, counts)
        except REDIS_ERRORS:
            log.warning("usage not counted", request_id=request_id)

    async def _count_outcome(self, answer: Accepted, status: str) -> None:
        shown_after = None if answer.asked_at is None else (time.perf_counter() - answer.asked_at) * 1000
        counts = outcome_counts(answered=status == "done", final_ms=shown_after)
        await self._count(answer.request_id, answer.usage, counts)

    def _saver(
        self, request_id: str, model: str, sink: AnswerSink, usage: UsageGroup | None
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        """Keep the in-flight record in step with the messages shown; losing that is not fatal."""

        async def save() -> None:
            try:
                record = {"model": model, "sink": sink.state()}
                if usage is not None:
                    record["usage"] = list(usage.parts())
                await self.book.record(request_id, record)
            except REDIS_ERRORS:
                log.warning("in-flight record not saved", request_id=request_id)

        return save

    async def _show_life(self, editor: AnswerEditor, request_id: str, arrival: Arrival) -> bool:
        await self.order.queued_first()
        try:
            await editor.start(messages.THINKING)
            return True
        except Undeliverable as error:
            log.warning("placeholder not shown, question dropped", request_id=request_id, error=error)
            return False
        finally:
            arrival.shown()

    async def _enqueue(
        self,
        question: Question,
        reception: Reception,
        resolution: Resolution,
        request_id: str,
        arrival: Arrival,
    ) -> Enqueued | None:
        try:
            request = await reception.request(
                request_id=request_id, persona=resolution.persona.name, look_up_names=not self.order.in_burst
            )
            # The worker keeps a copy of the conversation only where people can rate the answer.
            request = request.model_copy(update={"keep_for_rating": self.adapter.rates_answers})
            enqueued = await self.queue.enqueue(request, model=resolution.persona.model)
        except QueueUnavailable:
            log.warning("redis unreachable, request not queued", request_id=request_id)
            self.metrics.error(FrontEndError.NOT_QUEUED)
            return None
        finally:
            arrival.queued()
        seconds = time.perf_counter() - question.received_at
        self.metrics.enqueue_latency.observe(seconds)
        if self.on_enqueued is not None:
            self.on_enqueued(seconds)
        log.info(
            "request queued",
            request_id=request_id,
            event_id=question.event_ids[0],
            persona=request.persona,
            ahead=enqueued.ahead,
            turns=len(request.turns),
            chars=len(request.turns[-1].content),
        )
        return enqueued

    async def _relay(self, answer: Accepted) -> None:
        """Follow the reply stream to its end; a cancelled relay (shutdown) keeps its record for later."""
        await self.order.shown_first()  # in a burst, every placeholder goes up before answers are relayed
        self.metrics.answers_in_flight.inc()
        try:
            await self._relay_to_the_end(answer)
        finally:
            self.metrics.answers_in_flight.dec()

    async def _relay_to_the_end(self, answer: Accepted) -> None:
        request_id, editor, sink = answer.request_id, answer.editor, answer.sink
        try:
            if answer.ahead:
                with contextlib.suppress(Undeliverable):
                    await editor.show_status(messages.queue_position(answer.ahead))
            outcome = await relay_reply(
                queue=self.queue,
                request_id=request_id,
                editor=editor,
                model=answer.model,
                worker_wait_seconds=self.settings.worker_wait_seconds,
                still_held=lambda: self.book.holds(request_id),
                stop=self._stop_relaying,
            )
            if outcome.status in ("stopped", "lost_lease"):
                return  # the record stays for the next process, or another process holds it now
            if outcome.status != "done":
                self.metrics.error(outcome.status)  # error, no_worker, unreachable, lost, timeout
            await self._count_outcome(answer, outcome.status)
            await sink.discard_leftovers()
            log.info("reply relayed", request_id=request_id, status=outcome.status, chars=len(outcome.text))
        except Undeliverable as error:
            log.warning("reply undeliverable, generation stopped", request_id=request_id, error=error)
            self.metrics.error(FrontEndError.UNDELIVERABLE)
            await self._cancel_quietly(request_id)
            await sink.abandon()
        except Exception as error:
            # A bug, not an outage: stop the generation and say so, rather than leave it up forever.
            log.error("relaying failed", request_id=request_id, **crash_report(error))
            self.metrics.error(FrontEndError.BUG)
            await self._cancel_quietly(request_id)
            await self._finish_quietly(editor, messages.GENERATION_FAILED)
            await self._count_outcome(answer, "error")
        with contextlib.suppress(Undeliverable):
            await sink.after_answer()
        await self._finish(request_id)

    async def _finish(self, request_id: str) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self.book.finish(request_id)

    async def _cancel_quietly(self, request_id: str) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self.queue.cancel(request_id)

    @staticmethod
    async def _finish_quietly(editor: AnswerEditor, text: str) -> None:
        with contextlib.suppress(Undeliverable):
            await editor.finish(text)

    # ------------------------------------------------------------------ resuming
    def start_housekeeping(self) -> None:
        """Renew leases; resume answers a stopped process left behind."""
        if self._housekeeping is None:
            self._housekeeping = asyncio.create_task(self.book.keep_relaying(self.resume_orphans))
            self._housekeeping.add_done_callback(_report_crash)

    async def resume_orphans(self) -> int:
        """Finish answers whose relaying process stopped (this one before a restart, or another replica)."""
        if self._stopping:
            return 0
        orphans = await self.book.orphans()
        for request_id, record in orphans:
            try:
                model, sink = str(record["model"]), self.adapter.sink_from_state(request_id, record["sink"])
            except (KeyError, TypeError, ValueError):
                log.warning("unreadable in-flight record dropped", request_id=request_id)
                await self.book.finish(request_id)
                continue
            log.info("resuming an answer", request_id=request_id, messages=len(sink.adopt))
            usage = UsageGroup.from_record(record.get("usage"))
            self._track(self._relays, self._resume(request_id, model, sink, usage))
        return len(orphans)

    async def _resume(self, request_id: str, model: str, sink: AnswerSink, usage: UsageGroup | None) -> None:
        sink.on_change = self._saver(request_id, model, sink, usage)
        editor = self.adapter.editor(sink, self.pacer)
        try:
            await sink.prepare_resume()
            await editor.start(messages.THINKING)  # adopts the first message; the stream replays over it
            if not await self._still_known(request_id):
                log.warning("resumed answer is gone from redis", request_id=request_id)
                await editor.finish(messages.GENERATION_FAILED)
                await self._finish(request_id)
                return
        except Undeliverable as error:
            log.warning("resumed answer could not be shown", request_id=request_id, error=error)
            await self._finish(request_id)
            return
        await self._relay(Accepted(request_id, model, editor, sink, usage=usage))

    async def _still_known(self, request_id: str) -> bool:
        """Its job or reply stream is still in Redis (a crash before queueing, expiry, or lost data: not)."""
        try:
            return bool(await self.queue.redis.exists(keys.reply_stream(request_id), Job.key_for(request_id)))
        except REDIS_ERRORS:
            return True  # cannot tell: the relay reports an unreachable queue itself

    # ------------------------------------------------------------------ shutdown
    async def shutdown(self) -> None:
        """Finish taking in what was accepted, stop relaying, release the leases (records stay), so the
        next process resumes every answer at once. Bounded: a stalled Redis or chat cannot hold the stop."""
        self._stopping = True
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        intakes = list(self._intakes)
        if intakes:
            log.info("finishing intake before stopping", questions=len(intakes))
            await asyncio.wait(intakes, timeout=SHUTDOWN_SECONDS)
        # Relays stop between two chat writes, so no message is posted without its id in the record (a
        # cancelled post can land in the chat unrecorded: the next process would post it again).
        self._stop_relaying.set()
        if self._relays:
            await asyncio.wait(list(self._relays), timeout=SHUTDOWN_SECONDS)
        pending = [*self._intakes, *self._relays]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=SHUTDOWN_SECONDS)
        with contextlib.suppress(TimeoutError, *REDIS_ERRORS):
            async with asyncio.timeout(SHUTDOWN_SECONDS):
                for request_id in list(self.book.held):
                    await self.book.release(request_id)

    def _track(self, tasks: set[asyncio.Task[Done]], work: Coroutine[Any, Any, Done]) -> asyncio.Task[Done]:
        task: asyncio.Task[Done] = asyncio.create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(_report_crash)
        return task

    @property
    def busy(self) -> int:
        """Questions being taken in plus answers being relayed (tests check nothing is left behind)."""
        return len(self._intakes) + len(self._relays)


INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
"""Controls (NUL, tabs), format characters (zero-width, direction overrides, BOM) and separators."""


def is_blank(text: str) -> bool:
    """Nothing a person could read: a question of zero-width or control characters is as empty as one of
    spaces, and gets the hint rather than a model's guess at nothing."""
    return all(unicodedata.category(character) in INVISIBLE_CATEGORIES for character in text)


def crash_site(error: BaseException) -> str:
    """Where an unexpected error was raised (`file:line in function`): enough to find the bug.

    The error's message is left out of logs on purpose: it may quote what a user wrote.
    """
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown"
    frame = frames[-1]
    return f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno} in {frame.name}"


def crash_report(error: BaseException) -> dict[str, str]:
    return {"error_type": type(error).__name__, "at": crash_site(error)}


def _report_crash(task: asyncio.Task[Any]) -> None:
    """A bug in a background task must show in the logs, not vanish with the task."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("conversation task failed", **crash_report(error))
