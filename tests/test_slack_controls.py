"""The buttons on an answer: Stop while it is written (the asker or an admin), 👍/👎 once it is done."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import redis.asyncio

from bots.access import AccessRules
from bots.slack.blocks import FEEDBACK_BAD_ACTION, FEEDBACK_GOOD_ACTION, STOP_ACTION
from brandbot import keys, messages
from brandbot.contract import FinishReason
from brandbot.emulators.slack import SlackEmulator
from brandbot.feedback import FeedbackRecorder, FeedbackStore, RatingFilter
from brandbot.settings import Settings
from tests.conftest import WorkerProcess
from tests.slack_fixtures import (
    answer_with,
    buttons,
    done_of,
    is_final_answer,
    queued_requests,
    scripted_worker,
    slack_running,
    visible,
)

LONG_PERSONA = """
display_name: Long-winded
model: default
system_prompt: You answer at length.
sampling:
  temperature: 0
  max_new_tokens: 1500
"""


@pytest.fixture
def long_answers(prompts_dir: Path) -> None:
    """Route every question to a persona that writes long answers, so there is time to press Stop."""
    (prompts_dir / "personas" / "longwinded.yaml").write_text(LONG_PERSONA)
    (prompts_dir / "routing.yaml").write_text("default_persona: longwinded\n")


async def test_stop_button_ends_the_generation_for_the_asker_or_an_admin_only(
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    long_answers: None,
    worker_process: WorkerProcess,
    redis_client: redis.Redis,
) -> None:
    slack = slack_emulator
    async with slack_running(slack, settings(), rules=AccessRules(admins=["UADMIN"])) as bot:
        # The seeded tiny model, greedy, writes this one to the persona's 1,500-token cap: time to press Stop.
        question = await bot.mention("C1", "U1", "list all numbers")
        await slack.wait_until(
            lambda: any(STOP_ACTION in buttons(m) for m in bot.bot_messages("C1", question.ts))
        )
        [head] = [m for m in bot.bot_messages("C1", question.ts) if STOP_ACTION in buttons(m)]
        await bot.click(head, STOP_ACTION, user="U2")  # a bystander
        await slack.wait_until(lambda: bool(slack.ephemerals))
        [request] = queued_requests(redis_client)
        assert not redis_client.exists(keys.cancel_flag(request.request_id))
        await bot.click(head, STOP_ACTION, user="UADMIN")
        answer = await bot.wait_for_answer("C1", question.ts)

    [refusal] = slack.ephemerals
    assert (refusal.recipient, refusal.text) == ("U2", messages.SLACK_STOP_NOT_YOURS)
    finished = done_of(redis_client, request.request_id)
    assert finished is not None and finished.finish_reason is FinishReason.CANCELLED
    assert visible(answer).endswith(messages.STOPPED) and is_final_answer(answer)


async def test_feedback_buttons_store_each_persons_rating_against_the_request(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    base = settings()
    connection = redis.asyncio.Redis.from_url(base.redis_url)
    store = FeedbackStore(connection, retention_seconds=base.retention_seconds)
    async with (
        slack_running(slack, base) as bot,
        scripted_worker(base.redis_url, answer_with("A rated answer.")) as taken,
    ):
        rated = await bot.mention("C1", "U1", "rate me")
        answer = await bot.wait_for_answer("C1", rated.ts)
        # The worker keeps each answer for rating (its side of the feedback store).
        FeedbackRecorder(redis_client, retention_seconds=600).record_answer(
            taken[0].request_id,
            persona="default",
            system_prompt="You are Brandbot.",
            turns=[{"role": "user", "content": "rate me"}],
            answer="A rated answer.",
            platform="slack",
        )
        await bot.click(answer, FEEDBACK_GOOD_ACTION, user="U1")
        await bot.click(answer, FEEDBACK_BAD_ACTION, user="U2")
        await bot.click(answer, FEEDBACK_GOOD_ACTION, user="U2")  # changed their mind: one vote each
        await slack.wait_until(lambda: len(slack.ephemerals) == 3)

        unrecorded = await bot.mention("C2", "U1", "an answer the worker did not keep")
        expired = await bot.wait_for_answer("C2", unrecorded.ts)
        await bot.click(expired, FEEDBACK_BAD_ACTION, user="U1")
        await slack.wait_until(lambda: len(slack.ephemerals) == 4)
        ratings = [(record.request_id, score) async for record, score in store.rated(RatingFilter.ALL)]
        await connection.aclose()

    assert [request.keep_for_rating for request in taken] == [True, True]  # the worker keeps them to rate
    assert ratings == [(taken[0].request_id, 1)]
    assert redis_client.hget(keys.feedback(taken[0].request_id), "vote:U2") == b"1"
    assert [e.text for e in slack.ephemerals] == [messages.FEEDBACK_THANKS] * 3 + [messages.FEEDBACK_EXPIRED]
    assert all(e.recipient in ("U1", "U2") and e.thread_ts == rated.ts for e in slack.ephemerals[:3])


@pytest.mark.parametrize("streaming", [True, False], ids=["streamed", "edited"])
async def test_with_feedback_off_answers_have_no_rating_buttons_and_the_worker_keeps_no_copy(
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    worker_process: WorkerProcess,
    redis_client: redis.Redis,
    streaming: bool,
) -> None:
    slack = slack_emulator
    async with slack_running(slack, settings(), feedback_enabled=False, slack_streaming=streaming) as bot:
        question = await bot.mention("C1", "U1", "hello")
        answer = await bot.wait_for_answer("C1", question.ts)
        [request] = queued_requests(redis_client)

    assert visible(answer) and buttons(answer) == []
    assert not request.keep_for_rating
    assert done_of(redis_client, request.request_id) is not None  # the real worker answered it
    assert list(redis_client.scan_iter(match=keys.feedback("*"))) == []
