"""Starting `brandbot discord` as an admin would: settings, a wrong token, a missing intent, a clean run."""

# ruff: noqa: F811 (test arguments are the imported fixtures, by pytest's design)

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import AnyHttpUrl, SecretStr

from bots.discord import run_discord
from brandbot import messages
from brandbot.emulators.discord import GUILD_MEMBERS, DiscordEmulator
from brandbot.errors import SettingsError
from brandbot.settings import Settings
from tests.discord_fixtures import (  # noqa: F401 (fixtures by name)
    ALICE,
    GENERAL,
    GUILD_ID,
    ScriptedWorker,
    discord_emulator,
    scripted_worker,
)


def pointed_at(emulator: DiscordEmulator, base: Settings, *, token: str | None = None) -> Settings:
    return base.model_copy(
        update={
            "discord_token": SecretStr(token or emulator.token),
            "discord_api_url": AnyHttpUrl(emulator.api_url),
            "discord_gateway_url": emulator.gateway_url,
        }
    )


def test_without_a_token_the_command_names_the_missing_setting() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRANDBOT_")}
    result = subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "discord"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "BRANDBOT_DISCORD_TOKEN must be set" in result.stderr


def test_command_servers_and_endpoints_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRANDBOT_DISCORD_COMMAND_GUILDS", "[810000000000000001, 810000000000000002]")
    monkeypatch.setenv("BRANDBOT_DISCORD_API_URL", "http://proxy.internal:8080/api/v10")
    monkeypatch.setenv("BRANDBOT_DISCORD_GATEWAY_URL", "ws://proxy.internal:8081/gateway")

    loaded = Settings(_env_file=None)

    assert loaded.discord_command_guilds == [810000000000000001, 810000000000000002]
    assert str(loaded.discord_api_url) == "http://proxy.internal:8080/api/v10"
    assert loaded.discord_gateway_url == "ws://proxy.internal:8081/gateway"
    assert Settings(_env_file=None, discord_command_guilds=[]).discord_sync_commands is True


async def test_a_rejected_token_stops_the_start_with_one_clear_line(
    discord_emulator: DiscordEmulator, settings: Callable[..., Settings]
) -> None:
    with pytest.raises(SettingsError, match="BRANDBOT_DISCORD_TOKEN was rejected"):
        await run_discord(pointed_at(discord_emulator, settings(), token="not-the-token"))


async def test_without_the_message_content_intent_the_start_says_how_to_fix_it(
    discord_emulator: DiscordEmulator, settings: Callable[..., Settings]
) -> None:
    discord_emulator.privileged_intents = GUILD_MEMBERS  # MESSAGE CONTENT not enabled in the portal

    with pytest.raises(SettingsError, match="enable it for this bot in the developer portal"):
        await run_discord(pointed_at(discord_emulator, settings()))


async def test_the_command_serves_discord_until_stopped(
    discord_emulator: DiscordEmulator, settings: Callable[..., Settings], scripted_worker: ScriptedWorker
) -> None:
    running = asyncio.create_task(run_discord(pointed_at(discord_emulator, settings())))
    try:
        await discord_emulator.wait_for_identify()
        bot_id = discord_emulator.bot_user["id"]
        await discord_emulator.send_message(channel_id=GENERAL, author=ALICE, content=f"<@{bot_id}> hi")
        scripted_worker.answer((await scripted_worker.take()).request_id, "Hi from the CLI.")
        await discord_emulator.wait_until(
            lambda: [m for m in discord_emulator.messages_in(GENERAL) if m["content"] == "Hi from the CLI."]
        )
        assert {c["name"] for c in discord_emulator.registered_commands()} == {"ask", "persona", "brandbot"}
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_admins_and_blocks_come_from_the_routing_file_and_apply_on_edit(
    discord_emulator: DiscordEmulator, settings: Callable[..., Settings], prompts_dir: Path
) -> None:
    routing = prompts_dir / "routing.yaml"
    original = routing.read_text()
    with_admin = original.replace("discord:\n", f"discord:\n  access:\n    admins: [{ALICE['id']}]\n", 1)
    assert with_admin != original, "routing.yaml has no discord section to extend"
    routing.write_text(with_admin)
    running = asyncio.create_task(run_discord(pointed_at(discord_emulator, settings())))
    try:
        await discord_emulator.wait_for_identify()
        sent = await discord_emulator.send_interaction(
            guild_id=GUILD_ID, channel_id=GENERAL, user=ALICE, name="brandbot status"
        )
        [status] = await discord_emulator.wait_until(
            lambda: discord_emulator.interaction_responses(sent["token"])
        )
        assert status["data"]["content"] != messages.DISCORD_ADMINS_ONLY
        assert "default" in status["data"]["content"]
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
