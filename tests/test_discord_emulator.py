"""The real discord.py client (commands.Bot + app_commands tree) against brandbot/emulators/discord.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest
import pytest_asyncio
import yarl
from discord import app_commands
from discord.ext import commands

from brandbot.emulators.discord import DiscordEmulator, make_user

pytestmark = pytest.mark.asyncio

GUILD_ID, CHANNEL_ID, ADMIN_ROLE = 800000000000000001, 800000000000000010, 800000000000000020
ALICE = make_user(900000000000000001, "alice")


class EmulatedBot(commands.Bot):
    """A bot with a slash command (defer + edit + followup), a group, autocomplete and an on_message reply."""

    def __init__(self) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(command_prefix="!", intents=intents, guild_ready_timeout=0.05)
        self.ran: list[str] = []
        self.seen: list[discord.Message] = []
        group = app_commands.Group(name="brandbot", description="Brandbot administration")

        @group.command(name="status", description="Is brandbot healthy?")
        async def status(interaction: discord.Interaction) -> None:
            self.ran.append("status")
            await interaction.response.send_message("all good", ephemeral=True)

        @self.tree.command(name="ask", description="Ask brandbot")
        async def ask(interaction: discord.Interaction, question: str) -> None:
            self.ran.append(f"ask:{question}")
            await interaction.response.defer(thinking=True)
            none = discord.AllowedMentions.none()
            await interaction.edit_original_response(content=f"answer to {question}", allowed_mentions=none)
            await interaction.followup.send("(sources: none)")

        @ask.autocomplete("question")
        async def complete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=f"{current} please", value=f"{current} please")]

        self.tree.add_command(group)

    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot:
            return
        self.seen.append(message)
        if message.content.startswith("ping"):
            await message.reply("pong", mention_author=False)


@asynccontextmanager
async def connected(client: discord.Client, emulator: DiscordEmulator) -> AsyncIterator[discord.Client]:
    await client.login(emulator.token)
    runner = asyncio.create_task(client.connect())
    try:
        await asyncio.wait_for(client.wait_until_ready(), 10)
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(runner, 10)


@pytest_asyncio.fixture
async def emulator(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DiscordEmulator]:
    emu = DiscordEmulator()
    await emu.start()
    # monkeypatch restores both after the test
    monkeypatch.setattr(discord.http.Route, "BASE", emu.api_url)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(emu.gateway_url))
    emu.add_guild(
        GUILD_ID,
        channels=[{"id": CHANNEL_ID, "name": "general"}],
        roles=[{"id": ADMIN_ROLE, "name": "admin", "permissions": 8}],
        members=[{"user": ALICE, "roles": [ADMIN_ROLE]}],
    )
    try:
        yield emu
    finally:
        await emu.stop()


@pytest_asyncio.fixture
async def bot(emulator: DiscordEmulator) -> AsyncIterator[EmulatedBot]:
    async with connected(EmulatedBot(), emulator) as client:
        assert isinstance(client, EmulatedBot)
        yield client


def bot_messages(emulator: DiscordEmulator) -> list[dict[str, Any]]:
    return [m for m in emulator.messages_in(CHANNEL_ID) if m["author"]["id"] == emulator.bot_user["id"]]


async def test_login_ready_and_command_sync(emulator: DiscordEmulator, bot: EmulatedBot) -> None:
    assert bot.user is not None and bot.user.name == "brandbot"
    assert bot.application_id == emulator.application_id
    guild = bot.get_guild(GUILD_ID)
    assert guild is not None and guild.get_channel(CHANNEL_ID) is not None and guild.me is not None
    assert guild.get_member(int(ALICE["id"])) is None  # no GUILD_MEMBERS intent: only the bot's member
    assert emulator.connections[0] == "/gateway?v=10&encoding=json&compress=zlib-stream"
    identify = next(f for f in emulator.gateway_log if f["op"] == 2)
    assert identify["d"]["token"] == emulator.token and identify["d"]["intents"] == bot.intents.value
    assert emulator.requests_to("GET", "/users/@me")
    assert emulator.requests_to("GET", "/oauth2/applications/@me")

    synced = await bot.tree.sync()

    [put] = emulator.requests_to("PUT", rf"/applications/{emulator.application_id}/commands")
    definitions = {c["name"]: c for c in put.json}
    assert set(definitions) == {"ask", "brandbot"}
    question = {"name": "question", "type": 3, "autocomplete": True, "required": True}
    assert definitions["ask"]["options"][0].items() >= question.items()
    assert definitions["brandbot"]["options"][0]["name"] == "status"
    assert {c.name: c.id for c in synced} == {c["name"]: int(c["id"]) for c in emulator.registered_commands()}
    assert [c.name for c in await bot.tree.fetch_commands()] == [c.name for c in synced]


async def test_bad_token_is_a_login_failure(emulator: DiscordEmulator) -> None:
    client = discord.Client(intents=discord.Intents.default())
    with pytest.raises(discord.LoginFailure):
        await client.login("wrong-token")
    await client.close()


async def test_slash_command_defers_edits_and_follows_up(emulator: DiscordEmulator, bot: EmulatedBot) -> None:
    await bot.tree.sync()
    sent = await emulator.send_interaction(
        guild_id=GUILD_ID,
        channel_id=CHANNEL_ID,
        user=ALICE,
        name="ask",
        options=[{"name": "question", "value": "pricing?"}],
    )
    token = sent["token"]
    await emulator.wait_until(lambda: emulator.followups(token))

    assert bot.ran == ["ask:pricing?"]
    assert [r["type"] for r in emulator.interaction_responses(token)] == [5]  # deferred "thinking"
    original = emulator.original_message(token)
    assert original is not None and original["content"] == "answer to pricing?"
    assert original["flags"] & 128 == 0 and original["edit_history"][0]["flags"] & 128  # loading cleared
    assert original["allowed_mentions_log"][-1] == {"parse": []}
    assert emulator.requests_to("PATCH", rf"/webhooks/\d+/{token}/messages/@original")
    assert emulator.followups(token)[0]["content"] == "(sources: none)"
    assert [m["content"] for m in bot_messages(emulator)] == ["answer to pricing?", "(sources: none)"]

    status = await emulator.send_interaction(
        guild_id=GUILD_ID,
        channel_id=CHANNEL_ID,
        user=ALICE,
        member_roles=[ADMIN_ROLE],
        name="brandbot status",
    )
    await emulator.wait_until(lambda: emulator.interaction_responses(status["token"]))
    assert status["data"]["options"] == [{"name": "status", "type": 1, "options": []}]
    [reply] = emulator.interaction_responses(status["token"])
    assert reply["type"] == 4 and reply["data"]["content"] == "all good" and reply["data"]["flags"] == 64
    assert "all good" not in [m["content"] for m in emulator.messages_in(CHANNEL_ID)]  # ephemeral

    typing = await emulator.send_interaction(
        guild_id=GUILD_ID,
        channel_id=CHANNEL_ID,
        user=ALICE,
        name="ask",
        type=4,
        options=[{"name": "question", "value": "pri"}],
    )
    await emulator.wait_until(lambda: emulator.interaction_responses(typing["token"]))
    assert emulator.interaction_responses(typing["token"]) == [
        {"type": 8, "data": {"choices": [{"name": "pri please", "value": "pri please"}]}}
    ]
    assert bot.ran == ["ask:pricing?", "status"]


async def test_on_message_reads_content_and_replies(emulator: DiscordEmulator, bot: EmulatedBot) -> None:
    sent = await emulator.send_message(channel_id=CHANNEL_ID, author=ALICE, content="ping brandbot")
    [reply] = await emulator.wait_until(lambda: bot_messages(emulator))

    assert bot.seen[0].content == "ping brandbot" and bot.seen[0].guild is not None
    assert reply["content"] == "pong" and reply["type"] == 19
    assert reply["message_reference"]["message_id"] == sent["id"]
    assert reply["referenced_message"]["content"] == "ping brandbot"
    assert reply["allowed_mentions_log"][0]["replied_user"] is False and reply["mentions"] == []
    channel = bot.get_channel(CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel)
    assert (await channel.fetch_message(int(sent["id"]))).content == "ping brandbot"


async def test_message_content_is_blank_without_the_intent(emulator: DiscordEmulator) -> None:
    seen: list[str] = []
    client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.05)

    @client.event
    async def on_message(message: discord.Message) -> None:
        seen.append(message.content)

    async with connected(client, emulator):
        await emulator.send_message(channel_id=CHANNEL_ID, author=ALICE, content="secret")
        await emulator.send_message(
            channel_id=CHANNEL_ID, author=ALICE, content=f"<@{emulator.bot_user['id']}> hi"
        )
        await emulator.wait_until(lambda: len(seen) == 2)
    assert seen == ["", f"<@{emulator.bot_user['id']}> hi"]


async def test_content_over_2000_chars_is_rejected(emulator: DiscordEmulator, bot: EmulatedBot) -> None:
    channel = bot.get_channel(CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as info:
        await channel.send("x" * 2001)
    assert info.value.status == 400 and info.value.code == 50035
    assert "In content: Must be 2000 or fewer in length." in info.value.text
    assert bot_messages(emulator) == []


async def test_rate_limit_is_retried_transparently(emulator: DiscordEmulator, bot: EmulatedBot) -> None:
    channel = bot.get_channel(CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel)
    body = {"message": "You are being rate limited.", "retry_after": 0.2, "global": False}
    emulator.fail_next("POST", rf"/channels/{CHANNEL_ID}/messages", status=429, body=body)

    message = await channel.send("after the limit")

    first, second = emulator.requests_to("POST", rf"/channels/{CHANNEL_ID}/messages")
    assert second.at - first.at >= 0.2
    assert [m["id"] for m in bot_messages(emulator)] == [str(message.id)]


async def test_dropped_connection_resumes_and_replays(emulator: DiscordEmulator, bot: EmulatedBot) -> None:
    session_id = bot.ws.session_id
    await emulator.drop_connection()
    await emulator.send_message(channel_id=CHANNEL_ID, author=ALICE, content="sent while away")
    await emulator.wait_until(lambda: emulator.resume_count == 1)
    await emulator.wait_until(lambda: [m.content for m in bot.seen] == ["sent while away"])  # replayed
    resume = next(f for f in emulator.gateway_log if f["op"] == 6)
    assert resume["d"]["session_id"] == session_id and emulator.connections[-1].startswith("/resume-gateway?")

    await emulator.request_reconnect()  # op 7
    await emulator.wait_until(lambda: emulator.resume_count == 2)
    await emulator.send_message(channel_id=CHANNEL_ID, author=ALICE, content="after resume")
    await emulator.wait_until(lambda: len(bot.seen) == 2)

    await emulator.drop_connection(resumable=False)  # RESUME gets op 9 -> a fresh IDENTIFY
    await emulator.wait_for_identify(count=2)
    await emulator.send_message(channel_id=CHANNEL_ID, author=ALICE, content="new session")
    await emulator.wait_until(lambda: len(bot.seen) == 3)
    assert bot.ws.session_id != session_id and emulator.identify_count == 2
    assert bot.get_guild(GUILD_ID) is not None


async def test_a_click_on_a_button_reaches_its_view_and_an_update_edits_the_message(
    emulator: DiscordEmulator, bot: EmulatedBot
) -> None:
    clicked: list[str] = []

    class Counter(discord.ui.View):
        @discord.ui.button(label="+1", custom_id="counter:add")
        async def add(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
            clicked.append(str(interaction.user.id))
            await interaction.response.edit_message(content=f"count {len(clicked)}")

    channel = bot.get_channel(CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel)
    await channel.send("count 0", view=Counter(timeout=None))
    [message] = bot_messages(emulator)
    assert message["components"][0]["components"][0]["custom_id"] == "counter:add"

    sent = await emulator.click(message, "counter:add", user=ALICE)
    [response] = await emulator.wait_until(lambda: emulator.interaction_responses(sent["token"]))

    assert response["type"] == 7 and clicked == [ALICE["id"]]
    assert bot_messages(emulator)[0]["content"] == "count 1"
    assert sent["type"] == 3 and sent["message"]["id"] == message["id"]
    with pytest.raises(LookupError):  # only what the message shows can be clicked
        await emulator.click(message, "counter:remove", user=ALICE)


async def test_buttons_are_validated_as_discord_does(emulator: DiscordEmulator, bot: EmulatedBot) -> None:
    channel = bot.get_channel(CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel)
    twins = discord.ui.View()
    for label in ("a", "b"):
        twins.add_item(discord.ui.Button(label=label, custom_id="same"))
    too_long = discord.ui.View()
    too_long.add_item(discord.ui.Button(label="x", custom_id="x" * 101))

    for view in (twins, too_long):
        with pytest.raises(discord.HTTPException) as info:
            await channel.send("buttons", view=view)
        assert info.value.status == 400 and info.value.code == 50035
    assert bot_messages(emulator) == []
