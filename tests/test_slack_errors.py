"""Every way an answer can fail ends in a short message in the thread, never in silence or a stuck
"Thinking…"; Slack refusing a message stops the generation it was for."""

from __future__ import annotations

from collections.abc import Callable

import redis

from bots.slack.blocks import FEEDBACK_GOOD_ACTION, STOP_ACTION
from brandbot import keys, messages
from brandbot.contract import (
    DeltaEvent,
    ErrorEvent,
    ErrorKind,
    FinishReason,
    GenerationRequest,
    ReplyEvent,
    StartEvent,
)
from brandbot.emulators.slack import SlackEmulator
from brandbot.settings import Settings
from tests.conftest import WorkerProcess
from tests.slack_fixtures import (
    answer_with,
    buttons,
    done_of,
    queued_requests,
    scripted_worker,
    slack_running,
    visible,
)


async def test_no_worker_for_the_model_is_said_after_a_short_wait(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    async with slack_running(slack_emulator, settings(worker_wait_seconds=1.0)) as bot:
        question = await bot.mention("C1", "U1", "anyone home?")
        answer = await bot.wait_for_answer("C1", question.ts, timeout=20)

    assert visible(answer) == messages.NO_WORKER and buttons(answer) == []
    [request] = queued_requests(redis_client)
    assert redis_client.exists(keys.cancel_flag(request.request_id))  # a worker starting later skips it


async def test_generation_deadline_ends_the_answer_marked_cut_short(
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
) -> None:
    start_worker(generation_deadline_seconds=0.001)  # passed before the model's first step ends
    async with slack_running(slack_emulator, settings()) as bot:
        question = await bot.mention("C1", "U1", "write me a novel")
        answer = await bot.wait_for_answer("C1", question.ts)

    [request] = queued_requests(redis_client)
    finished = done_of(redis_client, request.request_id)
    assert finished is not None and finished.finish_reason is FinishReason.DEADLINE
    assert visible(answer).endswith(messages.CUT_SHORT)


async def test_generation_error_after_partial_text_replaces_it_with_a_short_message(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    def fail_midway(_request: GenerationRequest) -> list[ReplyEvent]:
        partial = [DeltaEvent(text=f"half an answer {i} ") for i in range(6)]
        return [StartEvent(), *partial, ErrorEvent(kind=ErrorKind.ENGINE, message=messages.GENERATION_FAILED)]

    base = settings()
    async with (
        slack_running(slack_emulator, base) as bot,
        scripted_worker(base.redis_url, fail_midway, step_seconds=0.1),
    ):
        question = await bot.mention("C1", "U1", "go")
        answer = await bot.wait_for_answer("C1", question.ts)

    assert visible(answer) == messages.GENERATION_FAILED and buttons(answer) == []
    assert any("half an answer" in visible(m) for m in slack_emulator.deleted)  # the partial stream is gone


async def test_placeholder_refused_by_slack_drops_the_question_and_its_generation(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    slack.fail_next("chat.postMessage", "channel_not_found")
    base = settings()
    async with slack_running(slack, base) as bot, scripted_worker(base.redis_url, answer_with("Fine.")):
        lost = await bot.mention("C1", "U1", "into the void")
        await slack.wait_until(lambda: bool(queued_requests(redis_client)))
        [request] = queued_requests(redis_client)
        await slack.wait_until(lambda: bool(redis_client.exists(keys.cancel_flag(request.request_id))))
        later = await bot.mention("C2", "U1", "and here?")
        answer = await bot.wait_for_answer("C2", later.ts)

    assert not bot.bot_messages("C1", lost.ts)
    assert FEEDBACK_GOOD_ACTION in buttons(answer)


async def test_answer_deleted_while_streaming_stops_its_generation(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    base = settings()
    text = " ".join(f"word{i}" for i in range(80))
    async with (
        slack_running(slack, base) as bot,
        scripted_worker(base.redis_url, answer_with(text, chunk=10), step_seconds=0.1),
    ):
        question = await bot.mention("C1", "U1", "go on")
        await slack.wait_until(lambda: bool(slack.calls_to("chat.appendStream")))
        slack.fail_next("chat.appendStream", "message_not_found", times=50)  # a moderator deleted it
        [request] = queued_requests(redis_client)
        await slack.wait_until(lambda: bool(redis_client.exists(keys.cancel_flag(request.request_id))))
        # Tidying the placeholder (dropping its Stop button) may race the flag; a new message may not.
        writes = ("chat.postMessage", "chat.startStream")

        def written() -> int:
            return sum(len(slack.calls_to(method)) for method in writes)

        # An append already on its way when the flag went up may still land (and fail): that is not a write.
        written_then = written()
        await slack.wait_until(lambda: done_of(redis_client, request.request_id) is not None, timeout=20)

    assert written() == written_then  # no new message after that
    # What could be cleaned up was: no Stop button is left on a placeholder for an answer that is gone.
    assert all(STOP_ACTION not in buttons(m) for m in bot.bot_messages("C1", question.ts))
