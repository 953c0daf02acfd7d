"""Slash commands: `/ask`, `/persona`, and the admins' `/brandbot status` and `/brandbot reload`.

`/ask` goes to the conversation core, which refuses before the deferral, so refusals can be ephemeral
(after a public defer the first follow-up inherits the public response); before `defer()` it does only
local work and Redis calls with a short budget, to stay inside Discord's 3-second window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands
from rq import Queue

from bots.access import AccessRules, is_admin
from bots.conversation import Conversations
from bots.discord.adapter import DiscordAdapter, InteractionReception, tell
from bots.discord.conversation import DiscordQuestion, question_from_interaction
from bots.discord.sinks import NO_PINGS, clip
from bots.relay_book import REDIS_ERRORS
from brandbot import keys, messages
from brandbot.contract import Platform
from brandbot.logs import get_logger
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.promptfiles.models import Persona
from brandbot.queue import RequestQueue

log = get_logger(__name__)

REDIS_BUDGET_SECONDS = 1.5
"""Redis work before `defer()` gets this long; Discord drops an interaction not answered within 3 s."""

MAX_CHOICES = 25
"""Discord shows at most this many autocomplete choices."""

CHOICE_NAME_CHARS = 100


def choice_label(persona: Persona) -> str:
    label = f"{persona.display_name} — {persona.description}" if persona.description else persona.display_name
    return label if len(label) <= CHOICE_NAME_CHARS else label[: CHOICE_NAME_CHARS - 1] + "…"


def place_of(question: DiscordQuestion) -> dict[str, Any]:
    """The routing keywords of `PromptLibrary.resolve` / `.choosable` for where `question` was asked."""
    return {
        "platform": Platform.DISCORD,
        "workspace_id": question.guild_id,
        "channel_id": question.channel_id,
        "parent_channel_id": question.parent_channel_id,
    }


class BrandbotCommands(commands.Cog):
    """The slash commands; `/ask` is answered by the conversation core."""

    admin = app_commands.Group(name="brandbot", description="brandbot administration (admins only)")

    def __init__(
        self,
        *,
        conversations: Conversations,
        adapter: DiscordAdapter,
        queue: RequestQueue,
        prompts: LivePromptLibrary,
        access: Callable[[], AccessRules],
    ) -> None:
        self.conversations = conversations
        self.adapter = adapter
        self.queue = queue
        self.prompts = prompts
        self.access = access

    @app_commands.command()
    @app_commands.describe(
        prompt="Your question",
        persona="Answer in this persona's voice (only where an admin allows picking)",
        private="Only you see the answer",
    )
    async def ask(
        self, interaction: discord.Interaction, prompt: str, persona: str | None = None, private: bool = False
    ) -> None:
        """Ask brandbot a question; the answer appears here as it is written."""
        asked = question_from_interaction(interaction, prompt, persona)
        reception = InteractionReception(self.adapter, interaction, asked, private)
        await self.conversations.take(self.adapter.question(asked), reception)

    @ask.autocomplete("persona")
    async def persona_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """Personas that may be picked where the command is typed (none where routing does not allow it)."""
        place = place_of(question_from_interaction(interaction, ""))
        needle = current.casefold().strip()
        return [
            app_commands.Choice(name=choice_label(persona), value=persona.name)
            for persona in self.prompts.current().choosable(**place)
            if needle in persona.name.casefold() or needle in persona.display_name.casefold()
        ][:MAX_CHOICES]

    @app_commands.command(name="persona")
    async def show_persona(self, interaction: discord.Interaction) -> None:
        """Show which persona answers in this channel, and why."""
        question = question_from_interaction(interaction, "")
        refusal = self.conversations.refusal(self.adapter.question(question))
        if refusal is not None:
            await tell(interaction, refusal.text)
            return
        library = self.prompts.current()
        place = place_of(question)
        resolution = library.resolve(**place)
        choosable = [persona.name for persona in library.choosable(**place)]
        persona = resolution.persona
        await tell(
            interaction,
            messages.discord_persona_here(persona.display_name, persona.name, resolution.reason, choosable),
        )

    @admin.command(name="status")
    async def status(self, interaction: discord.Interaction) -> None:
        """Requests waiting and workers alive, per model."""
        if not await self._admin(interaction):
            return
        models = sorted({persona.model for persona in self.prompts.current().personas.values()})
        try:
            async with asyncio.timeout(REDIS_BUDGET_SECONDS):
                rows = [(model, *await self._load(model)) for model in models]
        except (*REDIS_ERRORS, TimeoutError):
            await tell(interaction, messages.QUEUE_UNREACHABLE)
            return
        await tell(interaction, messages.discord_status(rows))

    async def _load(self, model: str) -> tuple[int, int]:
        rq_key = Queue.redis_queue_namespace_prefix + keys.model_queue(model)
        waiting = await self.queue.redis.llen(rq_key)
        return int(waiting), await self.queue.workers_alive(model)

    @admin.command(name="reload")
    async def reload(self, interaction: discord.Interaction) -> None:
        """Re-read the prompt files now; problems are listed and the last good files stay live."""
        if not await self._admin(interaction):
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        problems = await asyncio.to_thread(self.prompts.reload)
        if problems:
            text = messages.discord_reload_rejected(problems)
        else:
            text = messages.discord_reloaded(len(self.prompts.current().personas))
        log.info("prompt reload requested", user_id=interaction.user.id, problems=len(problems))
        await interaction.edit_original_response(content=clip(text), allowed_mentions=NO_PINGS)

    async def _admin(self, interaction: discord.Interaction) -> bool:
        if is_admin(self.access(), str(interaction.user.id)):
            return True
        log.info("admin command refused", user_id=interaction.user.id)
        await tell(interaction, messages.DISCORD_ADMINS_ONLY)
        return False
