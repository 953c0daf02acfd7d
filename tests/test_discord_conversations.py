"""Talking to the bot in messages: mentions, replies that continue a conversation, threads and DMs."""

# ruff: noqa: F811 (test arguments are the imported fixtures, by pytest's design)

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis

from bots.access import AccessRules
from bots.splitting import split_message
from brandbot import messages
from brandbot.contract import Role, Turn
from tests.conftest import WorkerProcess, length_note
from tests.discord_fixtures import (  # noqa: F401 (fixtures by name)
    ALICE,
    BOB,
    GENERAL,
    OPEN_RULES,
    RANDOM,
    RQ_QUEUE,
    THREAD,
    RunningBot,
    ScriptedWorker,
    add_dm,
    discord_bot,
    discord_emulator,
    done_events,
    is_in_progress,
    pings_nobody,
    queued_request,
    scripted_worker,
)

JSON = dict[str, Any]


async def finished_reply(
    bot: RunningBot,
    channel_id: int,
    count: int = 1,
    timeout: float = 30,  # noqa: ASYNC109
) -> list[JSON]:
    """The bot's messages in the channel once there are `count` and none is still being written."""

    def done() -> list[JSON] | None:
        found = bot.messages_in(channel_id)
        ok = len(found) == count and not any(is_in_progress(str(m["content"])) for m in found)
        return found if ok else None

    return list(await bot.emulator.wait_until(done, timeout))


def reference_of(message: JSON) -> str | None:
    reference = message.get("message_reference")
    return str(reference["message_id"]) if isinstance(reference, dict) else None


async def test_mention_is_answered_in_a_reply_and_a_reply_to_the_answer_continues_it(
    discord_bot: RunningBot, worker_process: WorkerProcess, redis_client: redis.Redis
) -> None:
    question = await discord_bot.mention("how do I reset my password?")
    [answer] = await finished_reply(discord_bot, GENERAL, timeout=60)
    [(first_id, first_done)] = (
        await discord_bot.emulator.wait_until(lambda: done_events(redis_client))
    ).items()

    assert answer["content"] == (first_done.text.strip() or "…") + length_note(first_done)
    assert reference_of(answer) == question["id"] and pings_nobody(answer)
    assert answer["edit_history"][0]["content"] == messages.THINKING

    follow_up = await discord_bot.emulator.send_message(
        channel_id=GENERAL, author=ALICE, content="and if I lost my phone?",
        message_reference={"message_id": answer["id"]},
    )  # fmt: skip
    [_, second] = await finished_reply(discord_bot, GENERAL, count=2, timeout=60)
    finished = await discord_bot.emulator.wait_until(
        lambda: len(done_events(redis_client)) == 2 and done_events(redis_client)
    )
    [second_id] = set(finished) - {first_id}

    assert reference_of(second) == follow_up["id"]
    assert second["content"] == (finished[second_id].text.strip() or "…") + length_note(finished[second_id])
    turns = queued_request(redis_client, second_id).turns
    expected = [Turn(role=Role.USER, content="how do I reset my password?", name="Alice")]
    if answer["content"] != "…":  # an empty answer is no turn
        expected.append(Turn(role=Role.ASSISTANT, content=str(answer["content"])))
    expected.append(Turn(role=Role.USER, content="and if I lost my phone?", name="Alice"))
    assert turns == expected


async def test_replying_to_a_long_answer_carries_all_of_its_parts(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    await discord_bot.mention("tell me everything")
    request = await scripted_worker.take()
    long_answer = "\n\n".join(f"Paragraph {i}: " + "words " * 60 for i in range(12))
    scripted_worker.answer(request.request_id, long_answer)
    parts = await finished_reply(discord_bot, GENERAL, count=len(split_message(long_answer, 2000)))
    assert len(parts) == 3

    assert reference_of(parts[1]) == parts[0]["id"]  # each part replies to the one before
    await discord_bot.emulator.send_message(
        channel_id=GENERAL, author=ALICE, content="summarise that",
        message_reference={"message_id": parts[-1]["id"]},
    )  # fmt: skip
    follow_up = await scripted_worker.take()

    [asked, answered, now] = follow_up.turns
    assert asked.content == "tell me everything" and now.content == "summarise that"
    assert answered.role is Role.ASSISTANT
    assert answered.content.split() == long_answer.split()  # one answer again, parts joined


async def test_reply_without_pinging_the_bot_still_continues(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    await discord_bot.mention("first question")
    scripted_worker.answer((await scripted_worker.take()).request_id, "First answer.")
    [answer] = await finished_reply(discord_bot, GENERAL)

    await discord_bot.emulator.send_message(
        channel_id=GENERAL, author=ALICE, content="second question", mentions=[BOB],
        message_reference={"message_id": answer["id"]},
    )  # fmt: skip

    assert [t.content for t in (await scripted_worker.take()).turns] == [
        "first question",
        "First answer.",
        "second question",
    ]


async def test_mention_in_a_thread_reads_the_thread_and_answers_with_its_channels_persona(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, prompts_dir: Path
) -> None:
    (prompts_dir / "routing.yaml").write_text(f'discord:\n  channels:\n    "{GENERAL}": support\n')
    assert discord_bot.bot.prompts.reload() == []
    emulator = discord_bot.emulator
    await emulator.send_message(channel_id=THREAD, author=BOB, content="the deploy failed at step 3")
    await emulator.send_message(channel_id=GENERAL, author=BOB, content="(not in the thread)")

    await discord_bot.mention("why did it fail?", channel_id=THREAD)
    request = await scripted_worker.take()
    scripted_worker.answer(request.request_id, "Step 3 needs the new token.")
    [reply] = await finished_reply(discord_bot, THREAD)

    assert request.persona == "support"  # the thread follows #general's routing
    assert request.target.thread_id == str(THREAD) and request.target.channel_id == str(GENERAL)
    assert request.channel_name == "help"
    assert request.turns == [
        Turn(role=Role.USER, content="the deploy failed at step 3", name="Bob"),
        Turn(role=Role.USER, content="why did it fail?", name="Alice"),
    ]
    assert reply["content"] == "Step 3 needs the new token."


async def test_thread_without_readable_history_is_still_answered(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    missing_access = {"code": 50001, "message": "Missing Access"}
    discord_bot.emulator.fail_next("GET", rf"/channels/{THREAD}/messages", status=403, body=missing_access)

    await discord_bot.mention("why did it fail?", channel_id=THREAD)
    request = await scripted_worker.take()
    scripted_worker.answer(request.request_id, "I can only see your question.")

    [reply] = await finished_reply(discord_bot, THREAD)
    assert [t.content for t in request.turns] == ["why did it fail?"]
    assert reply["content"] == "I can only see your question."


async def test_direct_messages_need_no_mention_and_can_be_switched_off(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    dm = add_dm(discord_bot.emulator, ALICE)
    await discord_bot.emulator.send_message(channel_id=dm, author=ALICE, content="can you help me?")
    request = await scripted_worker.take()
    scripted_worker.answer(request.request_id, "Of course.")
    [answer] = await finished_reply(discord_bot, dm)
    assert answer["content"] == "Of course." and request.target.workspace_id is None
    assert request.channel_name == ""

    discord_bot.rules = AccessRules(direct_messages=False, admins=OPEN_RULES.admins)
    await discord_bot.emulator.send_message(channel_id=dm, author=ALICE, content="and now?")
    [_, refusal] = await finished_reply(discord_bot, dm, count=2)
    assert refusal["content"] == messages.NOT_ALLOWED
    assert redis_client.llen(RQ_QUEUE) == 0


async def test_chatter_other_bots_and_empty_mentions_get_no_answer(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    emulator = discord_bot.emulator
    other_bot = {**BOB, "id": "910000000000000099", "username": "otherbot", "bot": True}
    await emulator.send_message(channel_id=GENERAL, author=ALICE, content="lunch anyone?")
    await emulator.send_message(
        channel_id=GENERAL, author=other_bot, content=f"<@{emulator.bot_user['id']}> hello bot"
    )
    await discord_bot.mention("   ")
    [hint] = await finished_reply(discord_bot, GENERAL)
    await asyncio.sleep(0.2)  # time for a wrong answer to the chatter to show up

    assert hint["content"] == messages.EMPTY_MENTION
    assert redis_client.llen(RQ_QUEUE) == 0 and len(discord_bot.messages_in(GENERAL)) == 1


async def test_mentions_of_people_and_channels_reach_the_model_as_names(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    await discord_bot.mention(f"ask <@{BOB['id']}> about <#{RANDOM}>, please")

    assert (await scripted_worker.take()).turns[-1].content == "ask @Bob about #random, please"
