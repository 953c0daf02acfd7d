"""Slash commands, as a member of the server uses them: /ask, /persona, and the admins' /brandbot."""

# ruff: noqa: F811 (test arguments are the imported fixtures, by pytest's design)

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis

from brandbot import messages
from brandbot.contract import Role
from brandbot.emulators.discord import DiscordEmulator
from brandbot.settings import Settings
from tests.conftest import WorkerProcess, length_note
from tests.discord_fixtures import (  # noqa: F401 (fixtures by name)
    ALICE,
    CAROL,
    GENERAL,
    GUILD_ID,
    RANDOM,
    RQ_QUEUE,
    RunningBot,
    ScriptedWorker,
    discord_bot,
    discord_bot_running,
    discord_emulator,
    done_events,
    pings_nobody,
    queued_request,
    scripted_worker,
)

ROUTING = f"""
default_persona: default
models: [default]
discord:
  channels:
    "{GENERAL}":
      persona: support
      user_choice: [support, engineering]
"""


def route_general_to_support(bot: RunningBot, prompts_dir: Path) -> None:
    (prompts_dir / "routing.yaml").write_text(ROUTING)
    assert bot.bot.prompts.reload() == []


async def test_commands_are_registered_globally_with_their_options(discord_bot: RunningBot) -> None:
    emulator = discord_bot.emulator
    commands = {c["name"]: c for c in emulator.registered_commands()}

    assert set(commands) == {"ask", "persona", "brandbot"}
    assert emulator.registered_commands(GUILD_ID) == []
    assert all(1 <= len(c["description"]) <= 100 for c in commands.values())
    options = {o["name"]: o for o in commands["ask"]["options"]}
    assert options["prompt"]["type"] == 3 and options["prompt"]["required"] is True
    assert options["persona"]["type"] == 3 and options["persona"]["autocomplete"] is True
    assert not options["persona"].get("required")
    assert options["private"]["type"] == 5 and not options["private"].get("required")
    assert {o["name"] for o in commands["brandbot"]["options"]} == {"status", "reload"}


async def test_commands_can_be_registered_in_chosen_servers_only(
    discord_emulator: DiscordEmulator, settings: Callable[..., Settings], scripted_worker: ScriptedWorker
) -> None:
    stale = {"id": "1", "name": "ask", "type": 1, "description": "an earlier global registration"}
    discord_emulator.commands[None] = [stale]

    async with discord_bot_running(discord_emulator, settings(discord_command_guilds=[GUILD_ID])) as bot:
        assert discord_emulator.registered_commands() == []  # no duplicates next to the server's own
        registered = discord_emulator.registered_commands(GUILD_ID)
        assert {c["name"] for c in registered} == {"ask", "persona", "brandbot"}

        token = await bot.ask("does the server command work?")
        request = await scripted_worker.take()
        scripted_worker.answer(request.request_id, "It does.")
        assert (await bot.final_original(token))["content"] == "It does."


async def test_ask_shows_thinking_at_once_then_streams_the_answer(
    discord_bot: RunningBot, worker_process: WorkerProcess, redis_client: redis.Redis
) -> None:
    token = await discord_bot.ask("how do I reset my password?")

    original = await discord_bot.final_original(token, timeout=60)
    [(request_id, done)] = (await discord_bot.emulator.wait_until(lambda: done_events(redis_client))).items()
    assert discord_bot.emulator.interaction_responses(token) == [{"type": 5}]  # deferred, public
    assert original["content"] == (done.text.strip() or "…") + length_note(done)
    assert original["edit_history"][0]["flags"] & 128  # began as Discord's own "thinking…"
    assert pings_nobody(original)
    assert [m["id"] for m in discord_bot.messages_in(GENERAL)] == [original["id"]]
    request = queued_request(redis_client, request_id)
    assert request.persona == "default" and request.user.display_name == "Alice"
    assert [(t.role, t.content) for t in request.turns] == [(Role.USER, "how do I reset my password?")]
    assert request.target.channel_id == str(GENERAL) and request.target.workspace_id == str(GUILD_ID)


async def test_private_ask_is_seen_only_by_the_asker(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker
) -> None:
    token = await discord_bot.ask("what is my plan's limit?", private=True)
    request = await scripted_worker.take()
    scripted_worker.answer(request.request_id, "Your plan allows 10 projects.")

    original = await discord_bot.final_original(token)
    assert discord_bot.emulator.interaction_responses(token) == [{"type": 5, "data": {"flags": 64}}]
    assert original["content"] == "Your plan allows 10 projects." and original["flags"] & 64
    assert discord_bot.emulator.messages_in(GENERAL) == []  # nothing in the channel


async def test_persona_choices_and_picks_follow_routing(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, prompts_dir: Path, redis_client: redis.Redis
) -> None:
    route_general_to_support(discord_bot, prompts_dir)
    emulator = discord_bot.emulator

    async def suggestions(typed: str, channel_id: int) -> list[dict[str, str]]:
        sent = await emulator.send_interaction(
            guild_id=GUILD_ID, channel_id=channel_id, user=ALICE, name="ask", type=4,
            options=[{"name": "prompt", "value": "hi"}, {"name": "persona", "value": typed, "focused": True}],
        )  # fmt: skip
        [response] = await emulator.wait_until(lambda: emulator.interaction_responses(sent["token"]))
        assert response["type"] == 8
        return list(response["data"]["choices"])

    offered = await suggestions("", GENERAL)
    assert [c["value"] for c in offered] == ["support", "engineering"]
    assert offered[0]["name"].startswith("Acme Support — Friendly help") and len(offered[0]["name"]) <= 100
    assert [c["value"] for c in await suggestions("eng", GENERAL)] == ["engineering"]
    assert await suggestions("", RANDOM) == []  # no picking where routing does not allow it

    await discord_bot.ask("is the build green?", persona="engineering")
    picked = await scripted_worker.take()
    assert picked.persona == "engineering"
    await discord_bot.ask("and here?")
    assert (await scripted_worker.take()).persona == "support"  # the channel's own persona

    refused = await discord_bot.ask("in #random", persona="engineering", channel_id=RANDOM)
    assert await discord_bot.ephemeral_reply(refused) == messages.discord_persona_refused("engineering", [])
    assert redis_client.llen(RQ_QUEUE) == 0


async def test_persona_command_says_who_answers_here_and_why(
    discord_bot: RunningBot, prompts_dir: Path
) -> None:
    route_general_to_support(discord_bot, prompts_dir)

    here = await discord_bot.ephemeral_reply(await discord_bot.command("persona"))
    elsewhere = await discord_bot.ephemeral_reply(await discord_bot.command("persona", channel_id=RANDOM))

    assert here.startswith("**Acme Support** (`support`) answers here: ")
    assert f"channel {GENERAL} is routed to support (routing.yaml:" in here
    assert here.endswith("you can pick: support, engineering.")
    assert elsewhere.startswith("**Brandbot** (`default`) answers here: nothing is routed here")
    assert "\n" not in elsewhere  # no line about picking: users may not pick there


async def test_status_is_for_admins_and_shows_queue_and_workers(
    discord_bot: RunningBot, scripted_worker: ScriptedWorker, redis_client: redis.Redis
) -> None:
    redis_client.rpush(RQ_QUEUE, "waiting-1", "waiting-2")

    refused = await discord_bot.ephemeral_reply(await discord_bot.command("brandbot status"))
    shown = await discord_bot.ephemeral_reply(await discord_bot.command("brandbot status", user=CAROL))

    assert refused == messages.DISCORD_ADMINS_ONLY
    assert shown == messages.discord_status([("default", 2, 1)])


async def test_reload_reports_problems_to_the_admin_and_keeps_the_last_good_files(
    discord_bot: RunningBot, prompts_dir: Path
) -> None:
    emulator = discord_bot.emulator
    persona_file = prompts_dir / "personas" / "support.yaml"
    good = persona_file.read_text()
    persona_file.write_text(good.replace("display_name:", "display_nam:"))

    refused = await discord_bot.ephemeral_reply(await discord_bot.command("brandbot reload"))
    token = await discord_bot.command("brandbot reload", user=CAROL)
    rejected = await emulator.wait_until(lambda: (emulator.original_message(token) or {}).get("content"))

    assert refused == messages.DISCORD_ADMINS_ONLY
    assert emulator.interaction_responses(token) == [{"type": 5, "data": {"flags": 64}}]
    assert rejected.startswith("The prompt files have problems") and "personas/support.yaml:" in rejected
    assert discord_bot.bot.prompts.current().persona("support") is not None  # last good stays live

    persona_file.write_text(good)
    token = await discord_bot.command("brandbot reload", user=CAROL)
    reloaded = await emulator.wait_until(lambda: (emulator.original_message(token) or {}).get("content"))
    assert reloaded == messages.discord_reloaded(3)
