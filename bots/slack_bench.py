"""`brandbot bench slack`: a burst of mentions through the Slack emulator, timing the Slack front-end.

Not a test: it reports figures. The real front-end (bolt, slack_sdk, Socket Mode, Redis, RQ) runs in
this process; Slack (the emulator in `brandbot/emulators/slack.py`), the people asking and the
workers run in a second process, as they are other machines in production, so their work does not
compete with the front-end's for this interpreter. The workers are stood in for by a replier
answering each job at once through the worker's own `ReplyPublisher`: the figures are the
front-end's, not a model's.

- ack latency: an event envelope sent → its ack received (Slack retries after 3 s without one), for a
  slack-bolt app whose listener does nothing (the floor on this machine) and for brandbot, in one run;
- enqueue latency: the event reaching its listener → its job in Redis;
- first visible message: the event sent → the first message brandbot posts in the asker's thread;
- answers relayed at once: the most reply streams the front-end followed at one time;
- replies delivered: questions whose thread ends with one finished answer, out of those sent.

It uses the Redis at `--redis-url` and its queue names: point it at a scratch database, not at one real
workers serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import secrets
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, TypeVar

import redis
from pydantic import AnyHttpUrl, SecretStr
from rq.job import Job
from rq.serializers import JSONSerializer
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack import build_slack_app
from bots.slack.blocks import FEEDBACK_GOOD_ACTION
from brandbot import keys
from brandbot.contract import DeltaEvent, DoneEvent, FinishReason, StartEvent, Usage
from brandbot.heap import freeze_startup_heap
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.queue import RequestQueue
from brandbot.settings import Settings
from worker.replies import ReplyPublisher

if TYPE_CHECKING:
    from brandbot.emulators.slack import SlackEmulator

RELAY_SAMPLE_SECONDS = 0.05
"""How often the front-end's count of followed reply streams is sampled."""

BENCH_ANSWER = "A benchmark answer: short, so the figures are the front-end's, not a model's."
ACK_WAIT_SECONDS = 60.0
WARM_UP_MENTIONS = 5

T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """What the Slack side does (sent to the second process)."""

    redis_url: str
    model: str
    mentions: int
    users: int
    channels: int
    rate: float  # mentions per second; 0 = all at once
    answer_wait_seconds: float
    connections: int = 1  # Socket Mode connections of the front-end
    answers: bool = True  # False: the no-op app, which answers nothing


@dataclass
class BenchResult:
    plan: Plan
    delivered: int
    ack_seconds: list[float]
    noop_ack_seconds: list[float]
    enqueue_seconds: list[float]
    first_visible_seconds: list[float]
    relayed_at_once: int
    send_seconds: float
    total_seconds: float
    edit_interval: float
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        plan = self.plan
        pace = "all at once" if not plan.rate else f"{plan.rate:g}/s"
        ratio = percentile(self.ack_seconds, 99) / percentile(self.noop_ack_seconds, 99)
        return [
            f"mentions sent: {plan.mentions} from {plan.users} users in {self.send_seconds:.2f} s "
            f"({pace}, {plan.channels} channels, {plan.connections} Socket Mode connection(s), "
            f"edit interval {self.edit_interval:g} s per channel)",
            f"ack, no-op bolt app:    {_p50_p99(self.noop_ack_seconds)}",
            f"ack, brandbot:          {_p50_p99(self.ack_seconds)}   p99 × no-op: {ratio:.2f}   (goal ≤ 1.1)",
            f"enqueue:                {_p50_p99(self.enqueue_seconds)}   (goal p99 ≤ 100 ms)",
            f"first visible message:  {_p50_p99(self.first_visible_seconds)}   (goal p99 ≤ 300 ms)",
            f"answers relayed at once: {self.relayed_at_once} (most at one time)",
            f"replies delivered: {self.delivered}/{plan.mentions} in {self.total_seconds:.1f} s",
            *self.notes,
        ]


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    if pct >= 100 or len(values) == 1:
        return max(values)
    return statistics.quantiles(values, n=100, method="inclusive")[max(int(pct) - 1, 0)]


def _ms(values: list[float], pct: float) -> str:
    return f"{percentile(values, pct) * 1000:7.1f} ms"


def _p50_p99(values: list[float]) -> str:
    return f"p50 {_ms(values, 50)}  p99 {_ms(values, 99)}"


async def run_slack_bench(
    settings: Settings,
    *,
    mentions: int = 500,
    users: int = 100,
    channels: int = 50,
    rate: float = 0.0,
    connections: int = 1,
    answer_wait_seconds: float = 180.0,
    progress: Callable[[str], None] = print,
) -> BenchResult:
    """Send `mentions` mentions from `users` people over `channels` channels, all at once (`rate` 0) or
    `rate` per second, first to a no-op slack-bolt app and then to brandbot's front-end, and time both."""
    prompts = LivePromptLibrary(settings.prompts_dir)
    model = prompts.current().default_persona().model
    plan = Plan(settings.redis_url, model, mentions, users, channels, rate, answer_wait_seconds, connections)
    progress(f"no-op slack-bolt app: sending {mentions} mentions…")
    noop = await _with_slack_side(
        replace(plan, answers=False), lambda emulator, pipe: _noop_under_load(emulator, plan, pipe)
    )
    progress(f"brandbot: sending {mentions} mentions; waiting for acks and answers…")
    result = await _with_slack_side(
        plan, lambda emulator, pipe: _front_end_under_load(settings, emulator, prompts, plan, pipe)
    )
    result.noop_ack_seconds = list(noop["ack_seconds"])
    return result


async def _with_slack_side(plan: Plan, front_end: Callable[[dict[str, str], Connection], Awaitable[T]]) -> T:
    """Run the Slack side (emulator, people, instant workers) in a process of its own around `front_end`."""
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    slack_side = multiprocessing.get_context("spawn").Process(
        target=slack_side_main, args=(theirs, plan), name="bench-slack-side", daemon=True
    )
    slack_side.start()
    try:
        emulator: dict[str, str] = await asyncio.to_thread(ours.recv)
        return await front_end(emulator, ours)
    finally:
        slack_side.join(timeout=10)
        if slack_side.is_alive():
            slack_side.kill()


async def _noop_under_load(emulator: dict[str, str], plan: Plan, pipe: Connection) -> dict[str, Any]:
    """The floor: a slack-bolt app whose listener does nothing, over as many connections as ours."""
    app = AsyncApp(
        client=AsyncWebClient(token=emulator["bot_token"], base_url=emulator["api_url"]),
        request_verification_enabled=False,
    )

    @app.event("app_mention")
    async def do_nothing() -> None:
        """Acknowledged by bolt before the listener runs, as ours is."""

    handlers = [AsyncSocketModeHandler(app, emulator["app_token"]) for _ in range(plan.connections)]
    try:
        for handler in handlers:
            await handler.connect_async()
        pipe.send("go")
        return dict(await asyncio.to_thread(pipe.recv))
    finally:
        for handler in handlers:
            await handler.close_async()


async def _front_end_under_load(
    settings: Settings,
    emulator: dict[str, str],
    prompts: LivePromptLibrary,
    plan: Plan,
    pipe: Connection,
) -> BenchResult:
    settings = settings.model_copy(
        update={
            "slack_bot_token": SecretStr(emulator["bot_token"]),
            "slack_app_token": SecretStr(emulator["app_token"]),
            "slack_api_url": AnyHttpUrl(emulator["api_url"]),
        }
    )
    queue = RequestQueue.from_settings(settings)
    enqueue_seconds: list[float] = []
    app = build_slack_app(settings=settings, queue=queue, prompts=prompts, on_enqueued=enqueue_seconds.append)
    await app.start_background()
    freeze_startup_heap()  # as `brandbot slack` does
    handlers = [AsyncSocketModeHandler(app, emulator["app_token"]) for _ in range(plan.connections)]
    most_followed = 0

    async def watch_relays() -> None:
        nonlocal most_followed
        while True:
            most_followed = max(most_followed, queue.following)
            await asyncio.sleep(RELAY_SAMPLE_SECONDS)

    watcher = asyncio.create_task(watch_relays())
    try:
        for handler in handlers:
            await handler.connect_async()
        pipe.send("go")
        outcome: dict[str, Any] = await asyncio.to_thread(pipe.recv)
    finally:
        watcher.cancel()
        for handler in handlers:
            await handler.close_async()
        await app.shutdown()
        await queue.close()
    return BenchResult(
        plan=plan,
        delivered=int(outcome["delivered"]),
        ack_seconds=list(outcome["ack_seconds"]),
        noop_ack_seconds=[],
        enqueue_seconds=enqueue_seconds,
        first_visible_seconds=list(outcome["first_visible_seconds"]),
        relayed_at_once=most_followed,
        send_seconds=float(outcome["send_seconds"]),
        total_seconds=float(outcome["total_seconds"]),
        edit_interval=settings.edit_interval_seconds,
    )


# ---------------------------------------------------------------------- the second process
def slack_side_main(pipe: Connection, plan: Plan) -> None:
    """Slack, the people asking and the workers, in a process of their own."""
    asyncio.run(_slack_side(pipe, plan))


async def _slack_side(pipe: Connection, plan: Plan) -> None:
    emulator = load_emulator()()
    await emulator.start()
    try:
        pipe.send(
            {"api_url": emulator.api_url, "app_token": emulator.app_token, "bot_token": emulator.bot_token}
        )
        emulator.spread_envelopes = True  # as Slack: each event down one of the app's connections
        with InstantReplier(plan.redis_url, plan.model):
            await asyncio.to_thread(pipe.recv)  # the front-end is connecting
            await emulator.wait_until(
                lambda: emulator.open_connections >= plan.connections, timeout=60, what="the connections"
            )
            pipe.send(await Burst(emulator, plan).run())
    finally:
        await emulator.stop()


def load_emulator() -> type[SlackEmulator]:
    from brandbot.emulators.slack import SlackEmulator

    return SlackEmulator


class InstantReplier:
    """Stands in for the workers: takes each job off the model's queue and answers it at once."""

    def __init__(self, redis_url: str, model: str) -> None:
        self._client = redis.Redis.from_url(redis_url)
        self._publisher = ReplyPublisher(self._client, retention_seconds=600)
        self._queue = f"rq:queue:{keys.model_queue(model)}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="bench-replier", daemon=True)

    def __enter__(self) -> InstantReplier:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.close()

    def _serve(self) -> None:
        usage = Usage(prompt_tokens=10, completion_tokens=20, total_ms=1.0)
        half = len(BENCH_ANSWER) // 2
        while not self._stop.is_set():
            popped = self._client.blpop([self._queue], timeout=0.2)
            if popped is None:
                continue
            job = Job.fetch(keys.as_text(popped[1]), connection=self._client, serializer=JSONSerializer)
            request_id = str(job.args[0]["request_id"])
            for event in (
                StartEvent(),
                DeltaEvent(text=BENCH_ANSWER[:half]),
                DeltaEvent(text=BENCH_ANSWER[half:]),
                DoneEvent(text=BENCH_ANSWER, finish_reason=FinishReason.STOP, usage=usage),
            ):
                self._publisher.publish(request_id, event)


@dataclass
class Burst:
    """The people: `mentions` questions from `users` users over `channels` channels."""

    emulator: SlackEmulator
    plan: Plan
    _asked_at: dict[str, float] = field(default_factory=dict)  # question ts -> when its event was sent
    # In every id, so a second run on the same database is not taken for Slack replaying the first one's
    # events (the front-end remembers what it has seen, and each asker's rate limit, for a while).
    tag: str = field(default_factory=lambda: secrets.token_hex(3).upper())

    async def run(self) -> dict[str, Any]:
        await self._warm_up()
        events = self._questions()
        started = time.monotonic()
        sent_at = await self._send(events)
        send_seconds = time.monotonic() - started
        slack = self.emulator
        await slack.wait_until(lambda: len(slack.acks) >= len(events), timeout=ACK_WAIT_SECONDS, what="acks")
        if self.plan.answers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.plan.answer_wait_seconds):
                    while self._delivered(events) < len(events):  # noqa: ASYNC110 - no event to await here
                        await asyncio.sleep(0.5)
        return {
            "delivered": self._delivered(events) if self.plan.answers else 0,
            "ack_seconds": [slack.acks[e].at - at for e, at in sent_at.items() if e in slack.acks],
            "first_visible_seconds": self._first_visible(self._asked_at),
            "send_seconds": send_seconds,
            "total_seconds": time.monotonic() - started,
        }

    async def _warm_up(self) -> None:
        """A few mentions first, not counted: both apps meet the burst warm (imports, connections)."""
        slack = self.emulator
        envelopes = []
        for i in range(WARM_UP_MENTIONS):
            text = f"<@{slack.bot_user_id}> warm-up {i}"
            channel, user = f"CW{self.tag}", f"UW{self.tag}"
            message = slack.add_user_message(channel=channel, user=user, text=text)
            event = {"type": "app_mention", "channel": channel, "user": user, "text": text}
            envelopes.append(
                await slack.send_event(
                    {**event, "ts": message.ts, "team": slack.team_id}, event_id=f"EvW{self.tag}{i:04d}"
                )
            )
        await slack.wait_until(lambda: all(e in slack.acks for e in envelopes), timeout=ACK_WAIT_SECONDS)

    def _first_visible(self, asked_at: dict[str, float]) -> list[float]:
        """Per question: from its event sent to the first message posted in its thread."""
        first: dict[str, float] = {}
        for method in ("chat.postMessage", "chat.startStream"):
            for call in self.emulator.calls.get(method, []):
                thread = str(call.params.get("thread_ts", ""))
                if thread in asked_at and (thread not in first or call.at < first[thread]):
                    first[thread] = call.at
        return [at - asked_at[thread] for thread, at in first.items()]

    def _questions(self) -> list[dict[str, Any]]:
        events = []
        slack, plan = self.emulator, self.plan
        for i in range(plan.mentions):
            channel, user = f"CB{self.tag}{i % plan.channels:04d}", f"UB{self.tag}{i % plan.users:04d}"
            text = f"<@{slack.bot_user_id}> benchmark question {i}"
            message = slack.add_user_message(channel=channel, user=user, text=text)
            event = {"type": "app_mention", "channel": channel, "user": user, "text": text, "ts": message.ts}
            events.append({**event, "team": slack.team_id})
        return events

    async def _send(self, events: list[dict[str, Any]]) -> dict[str, float]:
        sent_at: dict[str, float] = {}

        async def send(index: int, event: dict[str, Any]) -> None:
            at = time.monotonic()  # CLOCK_MONOTONIC: the same clock in both processes
            sent_at[await self.emulator.send_event(event, event_id=f"Ev{self.tag}{index:06d}")] = at
            self._asked_at[event["ts"]] = at

        if not self.plan.rate:
            await asyncio.gather(*(send(index, event) for index, event in enumerate(events)))
            return sent_at
        start = time.monotonic()
        for index, event in enumerate(events):
            await asyncio.sleep(max(start + index / self.plan.rate - time.monotonic(), 0))
            await send(index, event)
        return sent_at

    def _delivered(self, events: list[dict[str, Any]]) -> int:
        """Questions whose thread holds a finished answer (feedback buttons, stream closed)."""
        slack = self.emulator
        return sum(
            1
            for event in events
            if any(
                FEEDBACK_GOOD_ACTION in _buttons(m.blocks) and not m.streaming
                for m in slack.messages_in(event["channel"], event["ts"])
                if m.user == slack.bot_user_id
            )
        )


def _buttons(blocks: list[dict[str, Any]] | None) -> list[Any]:
    found: list[Any] = []
    for block in blocks or []:
        elements = block.get("elements")
        if block.get("type") == "actions" and isinstance(elements, list):
            found.extend(element.get("action_id") for element in elements if isinstance(element, dict))
    return found
