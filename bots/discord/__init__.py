"""Discord front-end: slash commands, mentions, reply chains, threads and DMs, answers streamed by edits."""

from bots.discord.client import BrandBot, build_discord_bot, run_discord

__all__ = ["BrandBot", "build_discord_bot", "run_discord"]
