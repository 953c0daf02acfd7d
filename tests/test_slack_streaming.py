"""How an answer appears in Slack: a placeholder at once, then streamed text, then one final message.

The exact text matters here (code fences across a message boundary, `<!channel>` split over two deltas),
so a scripted worker answers: it takes the job off the queue and publishes the contract's events like
`brandbot worker`, with a script instead of a model.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import pytest
import redis

from bots.slack.blocks import FEEDBACK_GOOD_ACTION, STOP_ACTION
from bots.slack.sink import SLACK_MARKDOWN_LIMIT
from brandbot import messages
from brandbot.contract import DeltaEvent, GenerationRequest, ReplyEvent, StartEvent
from brandbot.emulators.slack import Call, Message, SlackEmulator, ts_key
from brandbot.settings import Settings
from tests.slack_fixtures import (
    answer_with,
    buttons,
    done,
    is_final_answer,
    scripted_worker,
    slack_running,
    visible,
)

ANSWER = "Here is **how** it works:\n\n1. First\n2. Then `code`\n\nDone."
STREAM_CALLS = ("chat.startStream", "chat.appendStream", "chat.stopStream")


def streamed_text(slack: SlackEmulator) -> str:
    """Everything the streaming calls sent, in order (for a test with one streamed answer)."""
    calls = sorted((c for m in STREAM_CALLS for c in slack.calls_to(m)), key=lambda c: c.at)
    return "".join(c.params.get("markdown_text") or "" for c in calls)


async def test_answer_streams_through_slacks_streaming_api_and_leaves_one_message(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    base = settings()
    async with (
        slack_running(slack_emulator, base) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER, chunk=7), step_seconds=0.1),
    ):
        question = await bot.mention("C1", "U1", "how does it work?")
        answer = await bot.wait_for_answer("C1", question.ts)

    slack = slack_emulator
    [placeholder] = slack.calls_to("chat.postMessage")
    assert placeholder.params["text"] == messages.THINKING
    assert STOP_ACTION in buttons_of(placeholder)
    [start] = slack.calls_to("chat.startStream")
    assert start.at > placeholder.at
    assert start.params["thread_ts"] == question.ts
    assert (start.params["recipient_user_id"], start.params["recipient_team_id"]) == ("U1", slack.team_id)
    [stop] = slack.calls_to("chat.stopStream")
    assert all(start.at < c.at < stop.at for c in slack.calls_to("chat.appendStream"))
    # The answer arrived in pieces that add up to it; the stop carries the feedback buttons.
    assert len(start.params["markdown_text"]) < len(ANSWER) and slack.calls_to("chat.appendStream")
    assert streamed_text(slack) == ANSWER == visible(answer)
    assert is_final_answer(answer) and stop.params["ts"] == answer.ts
    assert FEEDBACK_GOOD_ACTION in buttons_of(stop)
    # The placeholder went once the answer was complete: one message per question.
    placeholder_message, streamed_message = ours_ever(slack, "C1")
    assert streamed_message.ts == answer.ts and slack.deleted == [placeholder_message]
    assert slack.calls_to("chat.delete")[0].at > stop.at


async def test_without_the_streaming_api_the_placeholder_becomes_the_answer_through_edits(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    base = settings()
    slack_emulator.fail_next("chat.startStream", "unknown_method")
    async with (
        slack_running(slack_emulator, base) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER, chunk=7)),
    ):
        first = await bot.mention("C1", "U1", "one")
        answer = await bot.wait_for_answer("C1", first.ts)
        second = await bot.mention("C2", "U1", "two")
        await bot.wait_for_answer("C2", second.ts)

    slack = slack_emulator
    assert len(slack.calls_to("chat.startStream")) == 1  # refused once: not tried again
    head = slack.calls_to("chat.postMessage")[0]
    assert ours_ever(slack, "C1") == [answer] and not slack.deleted
    updates = [c for c in slack.calls_to("chat.update") if c.params["ts"] == answer.ts]
    assert updates[-1].params["blocks"][0] == {"type": "markdown", "text": ANSWER}
    assert FEEDBACK_GOOD_ACTION in buttons(answer) and visible(answer) == ANSWER
    assert head.params["text"] == messages.THINKING
    # While it grew, the answer kept its Stop button and showed a cursor.
    assert any(STOP_ACTION in buttons_of(c) and "▍" in c.params["text"] for c in updates)


async def test_a_stream_refused_in_one_place_only_sends_that_answer_through_edits(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    base = settings()
    slack_emulator.fail_next("chat.startStream", "channel_type_not_supported")  # e.g. a shared channel
    async with (
        slack_running(slack_emulator, base) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER, chunk=7)),
    ):
        shared = await bot.mention("C1", "U1", "one")
        by_edits = await bot.wait_for_answer("C1", shared.ts)
        ordinary = await bot.mention("C2", "U1", "two")
        streamed = await bot.wait_for_answer("C2", ordinary.ts)

    assert visible(by_edits) == visible(streamed) == ANSWER
    assert [c.params["channel"] for c in slack_emulator.calls_to("chat.startStream")] == ["C1", "C2"]
    assert [c.params["ts"] for c in slack_emulator.calls_to("chat.stopStream")] == [streamed.ts]


async def test_edits_are_paced_per_channel_across_all_requests(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    base = settings(edit_interval_seconds=0.3)
    text = " ".join(f"word{i}" for i in range(120))
    async with (
        slack_running(slack_emulator, base, slack_streaming=False) as bot,
        scripted_worker(base.redis_url, answer_with(text, chunk=5), step_seconds=0.005),
    ):
        questions = [await bot.mention("C1", f"U{i}", f"question {i}") for i in range(3)]
        other = await bot.mention("C2", "U9", "elsewhere")
        for question in questions:
            await bot.wait_for_answer("C1", question.ts)
        await bot.wait_for_answer("C2", other.ts)

    def edits_in(channel: str) -> list[Call]:
        found = [c for c in slack_emulator.calls_to("chat.update") if c.params["channel"] == channel]
        return sorted(found, key=lambda c: c.at)

    deltas = len(range(0, len(text), 5))
    assert len(edits_in("C1")) < deltas  # coalesced: three answers of many deltas each, few edits
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(edits_in("C1"))]
    assert min(gaps) >= 0.3 * 0.95  # one channel: one edit per interval, whichever request it belongs to
    # Another channel has a pace of its own: its edits went on between those of the first.
    first_channel = [c.at for c in edits_in("C1")]
    assert any(first_channel[0] < c.at < first_channel[-1] for c in edits_in("C2"))
    for question in questions:
        [answer] = bot.bot_messages("C1", question.ts)
        assert visible(answer) == text


async def test_long_answer_continues_in_follow_ups_without_breaking_a_code_fence(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    code = "\n".join(f"    value_{i} = compute({i})  # step {i}" for i in range(500))
    text = "Intro paragraph.\n\n```python\n" + code + "\n```\n\nClosing words."
    assert len(text) > SLACK_MARKDOWN_LIMIT
    base = settings()
    async with (
        slack_running(slack_emulator, base) as bot,
        scripted_worker(base.redis_url, answer_with(text, chunk=2000)),
    ):
        question = await bot.mention("C1", "U1", "show me the code")
        await bot.emulator.wait_until(
            lambda: any(is_final_answer(m) for m in bot.bot_messages("C1", question.ts)), timeout=30
        )
        await bot.emulator.wait_until(
            lambda: all(
                not m.streaming and STOP_ACTION not in buttons(m) for m in bot.bot_messages("C1", question.ts)
            )
        )
        parts = bot.bot_messages("C1", question.ts)

    shown = [visible(m) for m in parts]
    assert len(shown) >= 2 and all(len(part) <= SLACK_MARKDOWN_LIMIT for part in shown)
    for part in shown:
        assert len(re.findall(r"^```", part, flags=re.MULTILINE)) % 2 == 0, "a fence left open"
    assert shown[0].startswith("Intro paragraph.") and shown[-1].endswith("Closing words.")
    assert shown[1].startswith("```python\n")  # the fence reopens, with its language
    joined = "\n".join(shown)
    assert all(f"value_{i} = compute({i})" in joined for i in range(500))


async def test_markdown_is_sent_as_mrkdwn_when_native_markdown_is_off(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    text = (
        "# Steps\n\n**Bold**, *italic* and ~~old~~ — see [the guide](https://example.com/guide).\n- `a`\n- b"
    )
    base = settings()
    async with (
        slack_running(slack_emulator, base, slack_native_markdown=False) as bot,
        scripted_worker(base.redis_url, answer_with(text)),
    ):
        question = await bot.mention("C1", "U1", "format please")
        answer = await bot.wait_for_answer("C1", question.ts)

    expected = (
        "*Steps*\n\n*Bold*, _italic_ and ~old~ — see <https://example.com/guide|the guide>.\n• `a`\n• b"
    )
    assert answer.blocks is not None and answer.blocks[0] == {
        "type": "section",
        "text": {"type": "mrkdwn", "text": expected},
    }
    assert answer.text == expected and answer.markdown_text is None
    assert not slack_emulator.calls_to("chat.startStream")  # the streaming API takes Markdown only
    assert all("markdown_text" not in c.params for c in slack_emulator.calls_to("chat.update"))


@pytest.mark.parametrize("streaming", [True, False])
async def test_mentions_in_generated_text_notify_no_one(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], streaming: bool
) -> None:
    text = "Attention <!channel> and <!here|here>, also <!subteam^S0TEAM|@admins> and @everyone: hi <@U0CEO>"

    def split_the_ping(_request: GenerationRequest) -> list[ReplyEvent]:
        pieces = [
            "Attention <!chan",
            "nel> and <!here|h",
            "ere>, also <!subteam^S0TEAM|@ad",
            "mins> and @every",
        ]
        pieces.append(text[len("".join(pieces)) :])
        return [StartEvent(), *(DeltaEvent(text=p) for p in pieces), done(text)]

    base = settings()
    async with (
        slack_running(slack_emulator, base, slack_streaming=streaming) as bot,
        scripted_worker(base.redis_url, split_the_ping, step_seconds=0.25),
    ):
        question = await bot.mention("C1", "U1", "say hi to everyone")
        answer = await bot.wait_for_answer("C1", question.ts)

    sent = [c for calls in slack_emulator.calls.values() for c in calls]
    payloads = " ".join(str(c.params) for c in sent if c.method.startswith("chat."))
    assert not re.search(r"<!(channel|here|everyone|subteam)|<@U0CEO", payloads)
    assert not re.search(r"@(here|channel|everyone)\b", payloads)  # written as @\u200bhere: no ping
    # Every streamed piece together never forms a ping either: what a reader sees is the neutral text.
    assert "<!" not in visible(answer) and "@\u200bchannel" in visible(answer)


async def test_a_retried_worker_attempt_restarts_the_answer_instead_of_adding_one(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    def crash_then_retry(_request: GenerationRequest) -> list[ReplyEvent]:
        first: list[ReplyEvent] = [StartEvent(attempt=1)]
        first += [DeltaEvent(attempt=1, text=f"first try {i}. ") for i in range(8)]
        second: list[ReplyEvent] = [
            StartEvent(attempt=2),
            DeltaEvent(attempt=2, text="Second try, complete."),
        ]
        return [*first, *second, done("Second try, complete.", attempt=2)]

    base = settings()
    async with (
        slack_running(slack_emulator, base) as bot,
        scripted_worker(base.redis_url, crash_then_retry, step_seconds=0.1),
    ):
        question = await bot.mention("C1", "U1", "hello")
        answer = await bot.wait_for_answer("C1", question.ts)

    assert visible(answer) == "Second try, complete." and is_final_answer(answer)
    first_stream = slack_emulator.calls_to("chat.startStream")[0]
    assert "first try" in (first_stream.params.get("markdown_text") or "")
    restarted = [c for c in slack_emulator.calls_to("chat.update") if c.params["text"] == messages.RESTARTING]
    assert restarted, "the placeholder said it starts over"
    assert any("first try" in visible(m) for m in slack_emulator.deleted)


async def test_slack_rate_limits_and_too_long_refusals_still_end_in_the_answer(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    slack.fail_next("chat.postMessage", "ratelimited", status=429, headers={"Retry-After": "1"})
    slack.fail_next("chat.update", "msg_too_long", times=1)
    base = settings()
    async with (
        slack_running(slack, base, slack_streaming=False) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER)),
    ):
        question = await bot.mention("C1", "U1", "despite everything?")
        answer = await bot.wait_for_answer("C1", question.ts)

    assert visible(answer) == ANSWER and is_final_answer(answer)
    [first_try, retry] = slack.calls_to("chat.postMessage")  # slack_sdk waited out Retry-After
    assert retry.at - first_try.at >= 0.9


def buttons_of(call: Call) -> list[str]:
    blocks: list[dict[str, Any]] = call.params.get("blocks") or []
    return [e["action_id"] for b in blocks if b.get("type") == "actions" for e in b["elements"]]


def ours_ever(slack: SlackEmulator, channel: str) -> list[Message]:
    """The bot's messages in a channel, deleted ones included, oldest first."""
    found = [*slack.deleted, *slack.messages_in(channel)]
    return sorted(
        (m for m in found if m.user == slack.bot_user_id and m.channel == channel), key=lambda m: ts_key(m.ts)
    )
