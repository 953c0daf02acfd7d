"""Discord front-end: a discord.py bot with slash commands, answering mentions, replies, threads and DMs.

```python
bot = build_discord_bot(settings=settings, queue=queue, prompts=prompts, access=lambda: rules)
async with bot:
    await bot.start(token)
```
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

import discord
import discord.gateway
import discord.http
import yarl
from discord.ext import commands

from bots.access import AccessRules, RateLimiter
from bots.discord.commands import BrandbotCommands
from bots.discord.conversation import addressed_to_bot, conversation_before, question_from_message
from bots.discord.desk import REDIS_ERRORS, AnswerDesk, Clock, crash_site
from bots.discord.sinks import NO_PINGS, DeliveryFailed, Sink
from brandbot import messages
from brandbot.errors import SettingsError
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


class BrandBot(commands.Bot):
    """The bot: slash commands from `BrandbotCommands`, messages answered through the `AnswerDesk`."""

    def __init__(
        self,
        *,
        settings: Settings,
        queue: RequestQueue,
        prompts: LivePromptLibrary,
        access: Callable[[], AccessRules],
        rate_limiter: RateLimiter | None,
        clock: Clock,
        **client_options: Any,
    ) -> None:
        intents = discord.Intents.default()
        intents.message_content = True  # privileged: enable it in the developer portal (see README)
        super().__init__(
            command_prefix=commands.when_mentioned,  # unused: no prefix commands, messages go to the desk
            help_command=None,
            intents=intents,
            allowed_mentions=NO_PINGS,
            **client_options,
        )
        self.settings = settings
        self.desk = AnswerDesk(
            client=self,
            settings=settings,
            queue=queue,
            prompts=prompts,
            access=access,
            rate_limiter=rate_limiter,
            clock=clock,
        )
        self.tree.error(self.on_app_command_error)

    async def setup_hook(self) -> None:
        await self.add_cog(BrandbotCommands(self.desk))
        if self.settings.discord_sync_commands:
            await self.sync_commands()
        self.desk.start_housekeeping()  # renews leases; resumes answers a stopped process left behind

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
        if self.user is None or not addressed_to_bot(message, self.user):
            return
        await self.answer_message(message)

    async def answer_message(self, message: discord.Message) -> None:
        """A mention, a reply to the bot, or a DM: answered as a reply to it, once."""
        assert self.user is not None
        sink = self.desk.channel_sink(channel_id=message.channel.id, reply_to=message.id)
        try:
            if not await self.desk.first_time(str(message.id)):
                log.info("duplicate message ignored", message_id=message.id)
                return
        except REDIS_ERRORS:
            log.warning("redis unreachable, message not taken", message_id=message.id)
            await self.notify(sink, messages.QUEUE_UNREACHABLE)
            return
        question = question_from_message(message, self.user.id, history=[])
        if not question.text:
            await self.notify(sink, messages.EMPTY_MENTION)
            return
        verdict = self.desk.screen(question)
        if isinstance(verdict, str):
            await self.notify(sink, verdict)
            return
        try:
            wait = await self.desk.rate_limit_wait(question.user_id)
            if wait:
                if await self.desk.first_rate_notice(question.user_id, wait):
                    await self.notify(sink, messages.RATE_LIMITED.format(seconds=wait))
                return
        except REDIS_ERRORS:
            await self.notify(sink, messages.QUEUE_UNREACHABLE)
            return
        history = await conversation_before(message, self.user.id)
        self.desk.start(dataclasses.replace(question, history=tuple(history)), verdict, sink)

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        """discord.py logs the whole exception, whose message may quote a user: log where it was."""
        error = sys.exc_info()[1]
        log.error(
            "discord event handler failed",
            handler=event_method,
            error_type=type(error).__name__,
            at=crash_site(error) if error else "unknown",
        )

    async def notify(self, sink: Sink, text: str) -> None:
        """A short reply that is not an answer (a refusal, a hint, an outage)."""
        try:
            await sink.post(text)
        except DeliveryFailed as error:
            log.warning("notice could not be posted", error=str(error))

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
            pass  # the interaction is gone; the log above has it

    async def close(self) -> None:
        await self.desk.shutdown()  # answers in flight are resumed by the next process
        await super().close()


def build_discord_bot(
    *,
    settings: Settings,
    queue: RequestQueue,
    prompts: LivePromptLibrary,
    access: Callable[[], AccessRules],
    rate_limiter: RateLimiter | None = None,
    clock: Clock = time.time,
    **client_options: Any,
) -> BrandBot:
    """The Discord bot, pointed at the configured Discord; the caller logs in and connects.

    `clock` is wall-clock seconds: interaction tokens expire by it, and in-flight records that another
    process may resume store times in it (so not `time.monotonic`, which is per machine).
    `client_options` go to discord.py's client (e.g. `proxy`, `guild_ready_timeout`).
    """
    point_discord_at(settings)
    return BrandBot(
        settings=settings,
        queue=queue,
        prompts=prompts,
        access=access,
        rate_limiter=rate_limiter,
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
    try:
        async with bot:
            await bot.start(settings.discord_token.get_secret_value())
    except discord.LoginFailure:
        raise SettingsError("BRANDBOT_DISCORD_TOKEN was rejected by Discord") from None
    except discord.PrivilegedIntentsRequired:
        raise SettingsError(
            "Discord refused the MESSAGE CONTENT intent: enable it for this bot in the developer portal "
            "(README, section Discord)"
        ) from None
    finally:
        prompts.stop_watching()
        await queue.close()
