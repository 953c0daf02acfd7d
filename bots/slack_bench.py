"""`brandbot bench slack`: a burst of mentions through the Slack emulator, timing the Slack front-end.

Not a test: it reports figures. The real front-end (bolt, slack_sdk, Socket Mode, Redis, RQ) runs in
this process; Slack (the emulator in `brandbot/emulators/slack.py`), the people asking and the
workers run in a second process, as they are other machines in production, so their work does not
compete with the front-end's for this interpreter. The workers are stood in for by a replier
answering each job at once through the worker's own `ReplyPublisher`: the figures are the
front-end's, not a model's.

- ack latency: an event envelope sent → its ack received (Slack retries after 3 s without one);
- enqueue latency: the event reaching its listener → its job in Redis;
- replies delivered: questions whose thread ends with one finished answer, out of those sent.

It uses the Redis at `--redis-url` and its queue names: point it at a scratch database, not at one real
workers serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import redis
from pydantic import AnyHttpUrl, SecretStr
from rq.job import Job
from rq.serializers import JSONSerializer
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

from bots.slack import build_slack_app
from bots.slack.blocks import FEEDBACK_GOOD_ACTION
from brandbot import keys
from brandbot.contract import DeltaEvent, DoneEvent, FinishReason, StartEvent, Usage
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.queue import RequestQueue
from brandbot.settings import Settings
from worker.replies import ReplyPublisher

if TYPE_CHECKING:
    from brandbot.emulators.slack import SlackEmulator

BENCH_ANSWER = "A benchmark answer: short, so the figures are the front-end's, not a model's."
ACK_WAIT_SECONDS = 60.0


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


@dataclass
class BenchResult:
    plan: Plan
    delivered: int
    ack_seconds: list[float]
    enqueue_seconds: list[float]
    send_seconds: float
    total_seconds: float
    edit_interval: float
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        plan = self.plan
        pace = "all at once" if not plan.rate else f"{plan.rate:g}/s"
        return [
            f"mentions sent: {plan.mentions} from {plan.users} users in {self.send_seconds:.2f} s "
            f"({pace}, {plan.channels} channels, edit interval {self.edit_interval:g} s per channel)",
            f"ack latency:     p50 {_ms(self.ack_seconds, 50)}  p99 {_ms(self.ack_seconds, 99)}  "
            f"max {_ms(self.ack_seconds, 100)}   (target p99 < 100 ms)",
            f"enqueue latency: p50 {_ms(self.enqueue_seconds, 50)}  p99 {_ms(self.enqueue_seconds, 99)}  "
            f"max {_ms(self.enqueue_seconds, 100)}   (target p99 < 10 ms)",
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


async def run_slack_bench(
    settings: Settings,
    *,
    mentions: int = 500,
    users: int = 100,
    channels: int = 50,
    rate: float = 0.0,
    answer_wait_seconds: float = 180.0,
    progress: Callable[[str], None] = print,
) -> BenchResult:
    """Send `mentions` mentions from `users` people over `channels` channels, all at once (`rate` 0) or
    `rate` per second, and time the front-end."""
    prompts = LivePromptLibrary(settings.prompts_dir)
    model = prompts.current().default_persona().model
    plan = Plan(settings.redis_url, model, mentions, users, channels, rate, answer_wait_seconds)
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    slack_side = multiprocessing.get_context("spawn").Process(
        target=slack_side_main, args=(theirs, plan), name="bench-slack-side", daemon=True
    )
    slack_side.start()
    try:
        emulator: dict[str, str] = await asyncio.to_thread(ours.recv)
        return await _front_end_under_load(settings, emulator, prompts, plan, ours, progress)
    finally:
        slack_side.join(timeout=10)
        if slack_side.is_alive():
            slack_side.kill()


async def _front_end_under_load(
    settings: Settings,
    emulator: dict[str, str],
    prompts: LivePromptLibrary,
    plan: Plan,
    pipe: Connection,
    progress: Callable[[str], None],
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
    handler = AsyncSocketModeHandler(app, emulator["app_token"])
    try:
        await handler.connect_async()
        pipe.send("go")
        progress(f"sending {plan.mentions} mentions; waiting for acks and answers…")
        outcome: dict[str, Any] = await asyncio.to_thread(pipe.recv)
    finally:
        await handler.close_async()
        await app.shutdown()
        await queue.close()
    return BenchResult(
        plan=plan,
        delivered=int(outcome["delivered"]),
        ack_seconds=list(outcome["ack_seconds"]),
        enqueue_seconds=enqueue_seconds,
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
        with InstantReplier(plan.redis_url, plan.model):
            await asyncio.to_thread(pipe.recv)  # the front-end is connecting
            await emulator.wait_for_client()
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

    async def run(self) -> dict[str, Any]:
        events = self._questions()
        started = time.monotonic()
        sent_at = await self._send(events)
        send_seconds = time.monotonic() - started
        slack = self.emulator
        await slack.wait_until(lambda: len(slack.acks) >= len(events), timeout=ACK_WAIT_SECONDS, what="acks")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.plan.answer_wait_seconds):
                while self._delivered(events) < len(events):  # noqa: ASYNC110 - no event to await here
                    await asyncio.sleep(0.5)
        return {
            "delivered": self._delivered(events),
            "ack_seconds": [slack.acks[e].at - at for e, at in sent_at.items() if e in slack.acks],
            "send_seconds": send_seconds,
            "total_seconds": time.monotonic() - started,
        }

    def _questions(self) -> list[dict[str, Any]]:
        events = []
        slack, plan = self.emulator, self.plan
        for i in range(plan.mentions):
            channel, user = f"CB{i % plan.channels:04d}", f"UB{i % plan.users:04d}"
            text = f"<@{slack.bot_user_id}> benchmark question {i}"
            message = slack.add_user_message(channel=channel, user=user, text=text)
            event = {"type": "app_mention", "channel": channel, "user": user, "text": text, "ts": message.ts}
            events.append({**event, "team": slack.team_id})
        return events

    async def _send(self, events: list[dict[str, Any]]) -> dict[str, float]:
        sent_at: dict[str, float] = {}

        async def send(event: dict[str, Any]) -> None:
            at = time.monotonic()  # CLOCK_MONOTONIC: the same clock in both processes
            sent_at[await self.emulator.send_event(event)] = at

        if not self.plan.rate:
            await asyncio.gather(*(send(event) for event in events))
            return sent_at
        start = time.monotonic()
        for index, event in enumerate(events):
            await asyncio.sleep(max(start + index / self.plan.rate - time.monotonic(), 0))
            await send(event)
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
