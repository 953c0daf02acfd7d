"""What makes the bot answer in Slack, and what it reads first: mentions, DMs, thread replies, assistant
threads — and the thread's earlier messages as the conversation, with people's names."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from ruamel.yaml import YAML

import bots.slack
from bots.slack.context import MAX_CONTEXT_CHARS, MAX_CONTEXT_MESSAGES, MAX_TURN_CHARS
from brandbot import messages
from brandbot.contract import Role
from brandbot.emulators.slack import SlackEmulator
from brandbot.settings import Settings
from tests.conftest import WorkerProcess, length_note
from tests.slack_fixtures import (
    MODEL_QUEUE,
    answer_with,
    done,
    done_of,
    is_final_answer,
    queued_requests,
    scripted_worker,
    slack_running,
    visible,
)

ANSWER = "Sure, here you go."


async def test_direct_message_needs_no_mention_and_is_answered_in_its_thread(
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    worker_process: WorkerProcess,
    redis_client: redis.Redis,
) -> None:
    slack = slack_emulator
    async with slack_running(slack, settings()) as bot:
        question, envelope = await slack.send_user_message(
            channel="D100", user="U1", text="how do I reset my password?", channel_type="im"
        )
        await slack.wait_for_ack(envelope)
        answer = await bot.wait_for_answer("D100", question.ts)

    assert answer.thread_ts == question.ts and is_final_answer(answer)
    [request] = queued_requests(redis_client)
    finished = done_of(redis_client, request.request_id) or done("")
    assert visible(answer) == finished.text.strip() + length_note(finished)
    assert request.turns[-1].content == "how do I reset my password?"
    assert (request.target.channel_id, request.target.thread_id) == ("D100", question.ts)
    assert request.channel_name == ""  # the template says "a direct message"


async def test_reply_in_a_thread_the_bot_answers_in_continues_without_a_new_mention(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    base = settings()
    slack = slack_emulator
    slack.add_user("U1", "alice")
    slack.add_user("U2", "bob")
    async with (
        slack_running(slack, base) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER)) as taken,
    ):
        root = await bot.mention("C1", "U1", "what is our refund policy?")
        await bot.wait_for_answer("C1", root.ts)
        _follow_up, envelope = await slack.send_user_message(
            channel="C1", user="U2", text="and for annual plans?", thread_ts=root.ts
        )
        await slack.wait_for_ack(envelope)
        await slack.wait_until(lambda: len(taken) == 2, what="the follow-up to be queued")
        await slack.wait_until(lambda: len(bot.bot_messages("C1", root.ts)) == 2)
        answers = bot.bot_messages("C1", root.ts)
        await slack.wait_until(lambda: all(is_final_answer(m) for m in bot.bot_messages("C1", root.ts)))

    assert [m.thread_ts for m in answers] == [root.ts, root.ts]
    conversation = taken[1].turns
    assert [(t.role, t.content, t.name) for t in conversation] == [
        (Role.USER, "what is our refund policy?", "alice"),
        (Role.ASSISTANT, ANSWER, None),
        (Role.USER, "and for annual plans?", "bob"),
    ]
    assert taken[1].user.display_name == "bob"


async def test_a_slow_name_lookup_does_not_hold_the_question_back_and_serves_the_next_one(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    base = settings()
    slack = slack_emulator
    slack.add_user("U1", "alice")
    slack.held["users.info"] = asyncio.Event()  # Slack says who U1 is only when the test lets it
    async with (
        slack_running(slack, base) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER)) as taken,
    ):
        first = await bot.mention("C1", "U1", "first question")
        await slack.wait_until(lambda: len(taken) == 1, what="the question queued without its asker's name")
        await bot.wait_for_answer("C1", first.ts)
        slack.held["users.info"].set()
        second = await bot.mention("C2", "U1", "second question")
        await bot.wait_for_answer("C2", second.ts)

    assert [request.user.display_name for request in taken] == ["", "alice"]
    assert [turn.name for request in taken for turn in request.turns] == [None, "alice"]
    asked_about = [call.params["user"] for call in slack.calls_to("users.info")]
    assert asked_about.count("U1") == 1  # the slow lookup went on and served the next question


async def test_thread_replies_not_meant_for_the_bot_are_left_alone(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    base = settings()
    slack = slack_emulator
    async with (
        slack_running(slack, base) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER)) as taken,
    ):
        root = await bot.mention("C1", "U1", "hello")
        await bot.wait_for_answer("C1", root.ts)
        people_talking = slack.add_user_message(channel="C1", user="U2", text="unrelated")
        for text, thread in (
            ("<@U3> can you check this?", root.ts),  # addressed to someone else
            ("<!here> heads up", root.ts),  # a crowd ping, not a question
            ("just chatting", people_talking.ts),  # a thread the bot is not part of
        ):
            _message, envelope = await slack.send_user_message(
                channel="C1", user="U2", text=text, thread_ts=thread
            )
            await slack.wait_for_ack(envelope)
        await bot.mention("C9", "U1", "still there?")  # answered: the ones above were seen and dropped
        await slack.wait_until(lambda: len(taken) == 2)

    assert [r.turns[-1].content for r in taken] == ["hello", "still there?"]
    # People talking among themselves cost no look-ups: only those who ask the bot are named.
    assert {call.params["user"] for call in slack.calls_to("users.info")} == {"U1"}


async def test_thread_follow_ups_can_be_switched_off_in_routing(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], prompts_dir: Path
) -> None:
    (prompts_dir / "routing.yaml").write_text(
        "default_persona: default\nslack:\n  thread_follow_ups: false\n"
    )
    base = settings()
    slack = slack_emulator
    async with (
        slack_running(slack, base) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER)) as taken,
    ):
        root = await bot.mention("C1", "U1", "hello")
        await bot.wait_for_answer("C1", root.ts)
        _reply, envelope = await slack.send_user_message(
            channel="C1", user="U1", text="more?", thread_ts=root.ts
        )
        await slack.wait_for_ack(envelope)
        again = await bot.mention("C1", "U1", "more, with a mention", thread_ts=root.ts)
        await slack.wait_until(lambda: len(taken) == 2)

    assert taken[1].turns[-1].content == "more, with a mention"
    assert taken[1].target.message_id == again.ts


async def test_edits_bot_posts_own_messages_and_crowd_pings_never_trigger(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    base = settings()
    slack = slack_emulator
    mention = f"<@{slack.bot_user_id}> hi"
    ignored: list[dict[str, Any]] = [
        direct("1.1", user="U1", text="<!here>"),
        direct("1.2", user="U1", text="@channel"),
        direct(
            "1.4", subtype="message_changed", message={"user": "U1", "text": "edited question", "ts": "1.3"}
        ),
        direct("1.5", user="U1", text="a question, edited", edited={"user": "U1", "ts": "1.6"}),
        direct("1.7", user="U7", bot_id="B7", text="another bot asks"),
        direct("1.8", subtype="bot_message", text="a bot posts"),
        direct("1.9", user=slack.bot_user_id, text="the bot's own message"),
        {"type": "app_mention", "channel": "C1", "user": "U9", "bot_id": "B9", "text": mention, "ts": "2.1"},
        {
            "type": "message",
            "channel": "C1",
            "channel_type": "channel",
            "user": "U1",
            "text": "hi",
            "ts": "2.2",
        },
    ]
    async with slack_running(slack, base) as bot:
        for event in ignored:
            await slack.wait_for_ack(await slack.send_event(event))
        question = await bot.mention("C5", "U1", "a real question")
        await slack.wait_until(lambda: redis_client.llen(MODEL_QUEUE) == 1, what="the real question queued")

    posts = slack.calls_to("chat.postMessage")
    assert [p.params["thread_ts"] for p in posts] == [question.ts]
    assert not slack.ephemerals


def direct(ts: str, **fields: object) -> dict[str, Any]:
    """A message event in a DM with the app."""
    return {"type": "message", "channel": "D1", "channel_type": "im", "ts": ts, **fields}


async def test_assistant_thread_offers_prompts_and_shows_a_status_while_thinking(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    base = settings()
    slack = slack_emulator
    thread = slack.add_user_message(channel="D200", user=slack.bot_user_id, text="How can I help?")
    started = {
        "type": "assistant_thread_started",
        "assistant_thread": {"user_id": "U1", "channel_id": "D200", "thread_ts": thread.ts, "context": {}},
    }
    async with slack_running(slack, base) as bot:
        await slack.wait_for_ack(await slack.send_event(started))
        await slack.wait_until(lambda: ("D200", thread.ts) in slack.suggested_prompts)
        async with scripted_worker(base.redis_url, answer_with(ANSWER), step_seconds=0.3):
            question, _envelope = await slack.send_user_message(
                channel="D200",
                user="U1",
                text="What can you help me with?",
                thread_ts=thread.ts,
                channel_type="im",
            )
            await slack.wait_until(lambda: slack.assistant_status.get(("D200", thread.ts)) == "is thinking…")
            await slack.wait_until(
                lambda: any(is_final_answer(m) for m in bot.bot_messages("D200", thread.ts)), timeout=30
            )
            await slack.wait_until(lambda: slack.assistant_status.get(("D200", thread.ts)) == "")

    prompts = slack.suggested_prompts[("D200", thread.ts)]
    assert [p["message"] for p in prompts] == [text for _title, text in messages.SLACK_SUGGESTED_PROMPTS]
    status_calls = slack.calls_to("assistant.threads.setStatus")
    assert [c.params["status"] for c in status_calls] == ["is thinking…", ""]
    assert question.thread_ts == thread.ts


async def test_context_reads_the_whole_thread_with_names_and_the_bots_own_answers(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    base = settings()
    slack = slack_emulator
    slack.add_user("U1", "alice")
    slack.add_user("U2", "bob")
    root = slack.add_user_message(channel="C1", user="U1", text="Long discussion starts")
    for i in range(240):  # two pages of conversations.replies
        slack.add_user_message(
            channel="C1", user="U2" if i % 2 else "U1", text=f"message {i}", thread_ts=root.ts
        )
    slack.add_user_message(channel="C1", user=slack.bot_user_id, text="My earlier answer.", thread_ts=root.ts)
    slack.add_user_message(channel="C1", user=slack.bot_user_id, text=messages.THINKING, thread_ts=root.ts)
    slack.add_user_message(
        channel="C1",
        user="U2",
        text="<@U1> see <https://example.com|the doc> &amp; <#C9|random>",
        thread_ts=root.ts,
    )
    async with (
        slack_running(slack, base) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER)) as taken,
    ):
        question = await bot.mention("C1", "U1", "so what now, <@U2>?", thread_ts=root.ts)
        await slack.wait_until(lambda: any(is_final_answer(m) for m in bot.bot_messages("C1", root.ts)))

    cursors = [c.params.get("cursor") for c in slack.calls_to("conversations.replies")]
    assert len(cursors) == 2 and cursors[1], "the second page was read"
    [request] = taken
    *history, asked = request.turns
    assert (asked.content, asked.name, request.target.message_id) == (
        "so what now, @bob?",
        "alice",
        question.ts,
    )
    assert len(history) <= MAX_CONTEXT_MESSAGES
    assert [t.content for t in history[-3:]] == [
        "message 239",
        "My earlier answer.",
        "@alice see the doc (https://example.com) & #random",
    ]
    assert [(t.role, t.name) for t in history[-3:]] == [
        (Role.USER, "bob"),
        (Role.ASSISTANT, None),
        (Role.USER, "bob"),
    ]
    assert all(t.content != messages.THINKING for t in history)  # the bot's notices are not conversation


async def test_context_is_capped_by_size_newest_kept(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings]
) -> None:
    base = settings()
    slack = slack_emulator
    root = slack.add_user_message(channel="C1", user="U1", text="start")
    for i in range(12):
        slack.add_user_message(channel="C1", user="U2", text=f"{i:02d}" + "x" * 6000, thread_ts=root.ts)
    async with (
        slack_running(slack, base) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER)) as taken,
    ):
        await bot.mention("C1", "U1", "summarise please", thread_ts=root.ts)
        await bot.wait_for_answer("C1", root.ts)

    *history, _asked = taken[0].turns
    assert sum(len(t.content) for t in history) <= MAX_CONTEXT_CHARS
    assert all(len(t.content) <= MAX_TURN_CHARS for t in history)
    assert history[-1].content.startswith("11") and history[0].content.startswith(f"{12 - len(history):02d}")


def test_the_app_manifest_asks_for_every_event_and_scope_the_front_end_uses() -> None:
    """A workspace admin installs from bots/slack/manifest.yaml: nothing the code relies on may be missing."""
    manifest = YAML(typ="safe").load((Path(bots.slack.__file__).parent / "manifest.yaml").read_text())
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert events == {
        "app_mention",  # mentions in channels
        "message.im",  # DMs and assistant threads
        "message.channels",  # thread follow-ups (public channels)
        "message.groups",  # thread follow-ups (private channels)
        "message.mpim",  # group DMs
        "assistant_thread_started",  # suggested prompts
        "assistant_thread_context_changed",
    }
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    called = {
        "chat:write",  # chat.postMessage / update / delete / postEphemeral / startStream…
        "app_mentions:read",
        "channels:history",  # conversations.replies
        "groups:history",
        "im:history",
        "mpim:history",
        "users:read",  # users.info
        "channels:read",  # conversations.info
        "assistant:write",  # assistant.threads.setStatus / setSuggestedPrompts
    }
    assert called <= scopes
    assert manifest["settings"]["interactivity"]["is_enabled"]  # Stop, 👍/👎
    assert manifest["settings"]["socket_mode_enabled"]  # the default transport
