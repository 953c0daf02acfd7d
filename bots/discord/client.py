"""Discord front-end: a discord.py bot with slash commands, answering mentions, replies, threads and DMs.

```python
bot = build_discord_bot(settings=settings, queue=queue, prompts=prompts, access=lambda: rules)
async with bot:
    await bot.start(token)
```
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import discord
import discord.gateway
import discord.http
import yarl
from discord.ext import commands

from bots.access import AccessRules
from bots.conversation import Conversations, crash_site
from bots.discord.adapter import Clock, DiscordAdapter, MessageReception
from bots.discord.commands import BrandbotCommands
from bots.discord.conversation import addressed_to_bot, question_from_message
from bots.discord.rating import AnswerRatings, RatingButton
from bots.discord.sinks import NO_PINGS
from bots.lifecycle import serve_until_signalled
from brandbot import messages
from brandbot.errors import PlatformUnreachable, SettingsError
from brandbot.feedback import FeedbackStore
from brandbot.health import Readiness, probe_client, serve_ops
from brandbot.heap import freeze_startup_heap
from brandbot.logs import get_logger
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.queue import RequestQueue
from brandbot.settings import Settings

log = get_logger(__name__)


def point_discord_at(settings: Settings) -> None:
    """Use the configured REST base and gateway (a proxy, or a test emulator).

    discord.py keeps both as class attributes, so this applies to the whole process.
    """
    discord.http.Route.BASE = str(settings.discord_api_url).rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def guard_parsers(parsers: dict[str, Callable[[Any], None]]) -> None:
    """A gateway event discord.py cannot parse (missing or mistyped fields) is dropped with one log line.

    Unguarded, the parser's error would end the gateway connection and with it the front-end.
    """

    def guarded(name: str, parse: Callable[[Any], None]) -> Callable[[Any], None]:
        def parse_or_drop(data: Any) -> None:
            try:
                parse(data)
            except Exception as error:
                event_id = data.get("id") if isinstance(data, dict) else None
                log.warning(
                    "malformed discord event dropped",
                    gateway_event=name,
                    event_id=event_id if isinstance(event_id, str | int) else None,
                    error_type=type(error).__name__,
                )

        return parse_or_drop

    for name, parse in list(parsers.items()):
        parsers[name] = guarded(name, parse)


class SturdyCommandTree(discord.app_commands.CommandTree[Any]):
    """discord.py hands errors inside a command to the tree's error handler; an interaction it cannot read
    before that (an option without its value, `data` that is no object) escaped as the traceback of a task
    nobody awaited, and the asker was left waiting. Now the asker is told, and the log has one line."""

    async def _call(self, interaction: discord.Interaction[Any]) -> None:
        try:
            await super()._call(interaction)
        except discord.app_commands.AppCommandError:
            raise  # discord.py's own path: `BrandBot.on_app_command_error`
        except Exception as error:
            log.warning(
                "malformed discord interaction dropped",
                interaction_id=interaction.id,
                error_type=type(error).__name__,
                at=crash_site(error),
            )
            await tell_command_failed(interaction)


async def tell_command_failed(interaction: discord.Interaction[Any]) -> None:
    """The short apology, seen by the asker only; nothing if the interaction is gone."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(
                messages.DISCORD_COMMAND_FAILED, ephemeral=True, allowed_mentions=NO_PINGS
            )
        else:
            await interaction.response.send_message(
                messages.DISCORD_COMMAND_FAILED, ephemeral=True, allowed_mentions=NO_PINGS
            )
    except discord.HTTPException:
        pass  # the interaction is gone; the log line has it


class BrandBot(commands.Bot):
    """The bot: slash commands from `BrandbotCommands`, questions answered by the conversation core."""

    def __init__(
        self,
        *,
        settings: Settings,
        queue: RequestQueue,
        prompts: LivePromptLibrary,
        access: Callable[[], AccessRules],
        clock: Clock,
        **client_options: Any,
    ) -> None:
        intents = discord.Intents.default()
        intents.message_content = True  # privileged: enable it in the developer portal (see README)
        super().__init__(
            command_prefix=commands.when_mentioned,  # unused: no prefix commands, messages go to the core
            help_command=None,
            intents=intents,
            allowed_mentions=NO_PINGS,
            tree_cls=SturdyCommandTree,
            **client_options,
        )
        guard_parsers(self._connection.parsers)
        self.settings = settings
        self.queue = queue
        self.prompts = prompts
        self.access = access
        self.adapter = DiscordAdapter(client=self, clock=clock, rates_answers=settings.feedback_enabled)
        self.conversations = Conversations(
            adapter=self.adapter, settings=settings, queue=queue, prompts=prompts, access=access
        )
        self.ratings = AnswerRatings(  # found by `RatingButton` through `interaction.client`
            feedback=FeedbackStore(queue.redis, retention_seconds=settings.retention_seconds), access=access
        )
        self.tree.error(self.on_app_command_error)

    async def setup_hook(self) -> None:
        # By custom id, not by view object: 👍/👎 on answers written before a restart still work.
        self.add_dynamic_items(RatingButton)
        await self.add_cog(
            BrandbotCommands(
                conversations=self.conversations,
                adapter=self.adapter,
                queue=self.queue,
                prompts=self.prompts,
                access=self.access,
            )
        )
        if self.settings.discord_sync_commands:
            await self.sync_commands()
        self.conversations.start_housekeeping()  # renews leases; resumes answers a stopped process left

    async def sync_commands(self) -> None:
        """Register the commands: in the configured servers (instant) or globally."""
        try:
            if not self.settings.discord_command_guilds:
                synced = await self.tree.sync()
                log.info("slash commands registered globally", commands=len(synced))
                return
            for guild_id in self.settings.discord_command_guilds:
                guild = discord.Object(guild_id)
                self.tree.copy_global_to(guild=guild)
                synced = await self.tree.sync(guild=guild)
                log.info("slash commands registered", guild_id=guild_id, commands=len(synced))
            # Servers only: an earlier global registration would show every command twice there.
            self.tree.clear_commands(guild=None)
            await self.tree.sync()
        except discord.HTTPException as error:
            # The bot still answers mentions; commands keep their last registration.
            log.error("slash commands not registered", status=error.status, code=error.code)

    async def on_ready(self) -> None:
        log.info("discord gateway ready", guilds=len(self.guilds))

    async def on_message(self, message: discord.Message) -> None:
        if not isinstance(message.content, str):
            log.warning(
                "malformed discord event dropped", gateway_event="MESSAGE_CREATE", message_id=message.id
            )
            return
        if self.user is None or not addressed_to_bot(message, self.user):
            return
        await self.answer_message(message)

    async def answer_message(self, message: discord.Message) -> None:
        """A mention, a reply to the bot, or a DM: answered as a reply to it, once."""
        assert self.user is not None
        asked = question_from_message(message, self.user.id)
        reception = MessageReception(self.adapter, message, asked, self.user.id)
        await self.conversations.take(self.adapter.question(asked), reception)

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        """discord.py logs the whole exception, whose message may quote a user: log where it was."""
        error = sys.exc_info()[1]
        log.error(
            "discord event handler failed",
            handler=event_method,
            error_type=type(error).__name__,
            at=crash_site(error) if error else "unknown",
        )

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: discord.app_commands.AppCommandError
    ) -> None:
        cause = getattr(error, "original", error)
        log.error(
            "slash command failed",
            command=interaction.command.qualified_name if interaction.command else None,
            error_type=type(cause).__name__,
            at=crash_site(cause),
        )
        await tell_command_failed(interaction)

    async def close(self) -> None:
        await self.conversations.shutdown()  # answers in flight are resumed by the next process
        await super().close()


def build_discord_bot(
    *,
    settings: Settings,
    queue: RequestQueue,
    prompts: LivePromptLibrary,
    access: Callable[[], AccessRules],
    clock: Clock = time.time,
    **client_options: Any,
) -> BrandBot:
    """The Discord bot, pointed at the configured Discord; the caller logs in and connects.

    `clock` is wall-clock seconds (see `DiscordAdapter`).
    `client_options` go to discord.py's client (e.g. `proxy`, `guild_ready_timeout`).
    """
    point_discord_at(settings)
    return BrandBot(
        settings=settings,
        queue=queue,
        prompts=prompts,
        access=access,
        clock=clock,
        **client_options,
    )


async def run_discord(settings: Settings) -> None:
    """`brandbot discord`: serve Discord until interrupted."""
    settings.require("discord_token")
    assert settings.discord_token is not None
    queue = RequestQueue.from_settings(settings)
    prompts = LivePromptLibrary(settings.prompts_dir)
    prompts.start_watching()
    # Read on every request, so an edit to routing.yaml's `discord.access` applies without a restart.
    bot = build_discord_bot(
        settings=settings,
        queue=queue,
        prompts=prompts,
        access=lambda: prompts.current().routing.discord.access,
    )
    log.info("discord front-end starting", api=str(settings.discord_api_url))
    readiness = Readiness(redis_client=probe_client(settings))
    readiness.add("discord connected", lambda: bot.is_ready() and not bot.is_closed())
    ops = serve_ops(settings, registry=bot.conversations.metrics.registry, readiness=readiness)
    freeze_startup_heap()
    try:
        async with bot:  # closing it stops the relays; their answers resume in the next process
            await serve_until_signalled(bot.start(settings.discord_token.get_secret_value()))
    except discord.LoginFailure:
        raise SettingsError("BRANDBOT_DISCORD_TOKEN was rejected by Discord") from None
    except OSError as error:  # aiohttp's connection errors among them; the gateway reconnects by itself later
        raise PlatformUnreachable(
            f"cannot reach Discord at {settings.discord_api_url} ({type(error).__name__}); "
            "check BRANDBOT_DISCORD_API_URL and the network, then start again"
        ) from None
    except discord.PrivilegedIntentsRequired:
        raise SettingsError(
            "Discord refused the MESSAGE CONTENT intent: enable it for this bot in the developer portal "
            "(README, section Discord)"
        ) from None
    finally:
        if ops is not None:
            await asyncio.to_thread(ops.close)  # waits for its serving loop to notice
        prompts.stop_watching()
        await queue.close()
        log.info("discord front-end stopped")
