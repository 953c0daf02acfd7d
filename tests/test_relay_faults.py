"""Faults met while answers are relayed, through the real processes: a question that kills every worker
it lands on, and a Redis restart in the middle of many streaming answers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from brandbot import keys, messages
from brandbot.contract import DeltaEvent, ReplyEvent, StartEvent
from brandbot.emulators.slack import SlackEmulator
from brandbot.settings import Settings
from brandbot.streams import REDIS_OUTAGE
from tests.conftest import PrivateRedis, SlackBot, WorkerProcess, set_sampling, wait_for_worker
from tests.slack_fixtures import (
    MODEL_QUEUE,
    done,
    is_final_answer,
    reply_events,
    slack_running,
    visible,
)
from worker.faults import DIE_ON_PROMPT_TEXT
from worker.replies import ReplyPublisher

FAST_RECOVERY = {"job_heartbeat_ttl_seconds": 3, "recovery_interval_seconds": 1.0}
"""A killed worker's job is noticed within seconds, so the test sees RQ retry it and then give up."""


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 90.0) -> None:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


def attempt_started(client: redis.Redis, request_id: str, attempt: int) -> bool:
    return any(
        isinstance(event, StartEvent) and event.attempt == attempt
        for event in reply_events(client, request_id)
    )


def only_request_id(client: redis.Redis) -> str:
    [stream] = list(client.scan_iter(match=keys.reply_stream("*")))
    return keys.as_text(stream).removeprefix(keys.reply_stream(""))


async def test_question_that_kills_every_worker_ends_in_one_visible_error(
    slack_bot: SlackBot,
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    poisoned = {"env": {DIE_ON_PROMPT_TEXT: "the poison question"}, **FAST_RECOVERY}
    worker = start_worker(**poisoned)
    slack = slack_bot.emulator
    question, envelope = await slack.send_user_message(
        channel="C1", user="U1", text=f"<@{slack.bot_user_id}> the poison question", event_type="app_mention"
    )
    await slack.wait_for_ack(envelope)
    await wait_for(lambda: bool(list(redis_client.scan_iter(match=keys.reply_stream("*")))), "a pickup")
    request_id = only_request_id(redis_client)
    for attempt in (1, 2):  # one try and RQ's one retry, each on a worker that dies of it
        await wait_for(lambda n=attempt: attempt_started(redis_client, request_id, n), f"attempt {attempt}")
        await wait_for(
            lambda w=worker: w.process.poll() is not None, f"the worker killed by attempt {attempt}"
        )
        worker = start_worker(**poisoned)  # notices the abandoned job: a retry, then RQ gives up

    def one_error_shown() -> bool:
        return [visible(m) for m in slack_bot.bot_messages("C1", question.ts)] == [messages.ANSWER_LOST]

    await wait_for(one_error_shown, "the error in the thread")
    await asyncio.sleep(1.0)  # nothing else follows it
    assert [visible(m) for m in slack_bot.bot_messages("C1", question.ts)] == [messages.ANSWER_LOST]


OUTAGE_SECONDS = 8.0
"""Longer than redis-py's own retries of one command (about 4 s), well inside the ride-out window."""


@pytest.mark.timeout(400)
async def test_redis_restart_mid_answers_leaves_twenty_complete_answers(
    durable_redis: PrivateRedis,
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    prompts_dir: Path,
) -> None:
    persona = prompts_dir / "personas" / "default.yaml"
    # Long enough to be streaming when Redis goes away, also on an idle machine (sampled: the tiny model's
    # greedy answers end early).
    set_sampling(persona, max_new_tokens=1024, temperature=0.3, repetition_penalty=1.0)
    base = settings(redis_url=durable_redis.url, edit_interval_seconds=0.5)
    worker = start_worker(redis_url=durable_redis.url, wait=False)
    wait_for_worker(redis.Redis.from_url(durable_redis.url), worker.process, worker.log_path)
    slack = slack_emulator
    async with slack_running(slack, base) as bot:
        questions = [
            await bot.mention(f"C{index % 4}", f"U{index}", f"tell me a long story, number {index}")
            for index in range(20)
        ]
        # Edited in place (chat.update) or streamed (chat.appendStream), whichever the sink chose.
        await wait_for(
            lambda: len(slack.calls_to("chat.appendStream")) + len(slack.calls_to("chat.update")) >= 4,
            "answers streaming",
        )
        durable_redis.stop()
        await asyncio.sleep(OUTAGE_SECONDS)
        durable_redis.start()
        answers = [await bot.wait_for_answer(q.channel, q.ts, timeout=120) for q in questions]

    assert all(is_final_answer(answer) for answer in answers)
    shown = [visible(m) for channel in ("C0", "C1", "C2", "C3") for m in slack.messages_in(channel)]
    assert messages.QUEUE_UNREACHABLE not in shown
    assert worker.process.poll() is None, "the worker died of the outage"


STORY = " ".join(f"word{index}" for index in range(60))


@asynccontextmanager
async def patient_scripted_worker(redis_url: str, *, step_seconds: float) -> AsyncIterator[list[str]]:
    """A stand-in for `brandbot worker` (no model) that rides out Redis outages as a worker should:
    every job is answered with `STORY`, a few words per `step_seconds`; writes wait for Redis to return.
    Yields the request ids it took."""
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1)
    publisher = ReplyPublisher(client, retention_seconds=600)
    taken: list[str] = []

    def patiently(call: Callable[[], object]) -> object:
        while True:
            try:
                return call()
            except REDIS_OUTAGE:
                time.sleep(0.2)

    async def answer(request_id: str) -> None:
        words = STORY.split(" ")
        events: list[ReplyEvent] = [StartEvent()]
        events += [DeltaEvent(text=" ".join(words[i : i + 3]) + " ") for i in range(0, len(words), 3)]
        for event in [*events, done(STORY)]:
            await asyncio.to_thread(patiently, lambda e=event: publisher.publish(request_id, e))  # type: ignore[misc]
            await asyncio.sleep(step_seconds)

    def take_job() -> object:
        return client.blpop([MODEL_QUEUE], timeout=0.2)

    async def work() -> None:
        async with asyncio.TaskGroup() as group:
            while True:
                popped: Any = await asyncio.to_thread(patiently, take_job)
                if popped is not None:
                    taken.append(keys.as_text(popped[1]))
                    group.create_task(answer(keys.as_text(popped[1])))

    task = asyncio.create_task(work())
    try:
        yield taken
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        client.close()


async def test_redis_restart_mid_answers_is_ridden_out_by_the_front_end(
    durable_redis: PrivateRedis, slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    """The front-end's half of the restart story, with a worker stand-in that survives the outage."""
    base = settings(redis_url=durable_redis.url, edit_interval_seconds=0.5)
    slack = slack_emulator
    async with (
        slack_running(slack, base) as bot,
        patient_scripted_worker(durable_redis.url, step_seconds=0.3) as taken,
    ):
        questions = [
            await bot.mention(f"C{index % 4}", f"U{index}", f"tell me a story, number {index}")
            for index in range(20)
        ]
        await wait_for(lambda: len(taken) == 20, "every question taken by the worker")
        await wait_for(lambda: len(slack.calls_to("chat.appendStream")) >= 20, "answers streaming")
        durable_redis.stop()
        await asyncio.sleep(OUTAGE_SECONDS)
        durable_redis.start()
        answers = [await bot.wait_for_answer(q.channel, q.ts, timeout=90) for q in questions]

    assert [visible(answer) for answer in answers] == [STORY] * 20
    assert all(is_final_answer(answer) for answer in answers)
    assert len(slack.calls_to("chat.startStream")) == 20  # each answer stayed in its first message
    shown = [visible(m) for channel in ("C0", "C1", "C2", "C3") for m in slack.messages_in(channel)]
    assert messages.QUEUE_UNREACHABLE not in shown
