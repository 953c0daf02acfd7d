"""👍/👎 under a finished Discord answer, stored against its request id for the feedback export.

The buttons are discord.py dynamic items: the custom id carries the request id and the vote, and the bot
registers `RatingButton` at start (`add_dynamic_items`), so a click on an answer written before a restart,
or by another front-end, is handled like any other; no view object is kept in memory per message. One vote
per person: rating again replaces the earlier vote. The clicker alone is told that it was saved.

```python
bot.add_dynamic_items(RatingButton)       # in setup_hook
await channel.send(text, view=rating_view(request_id))
```
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Literal

import discord
from discord import ui

from bots.access import AccessRules, check_access
from bots.discord.conversation import question_from_interaction
from bots.relay_book import REDIS_ERRORS
from brandbot import messages
from brandbot.feedback import REQUEST_ID, FeedbackStore
from brandbot.logs import get_logger

log = get_logger(__name__)

CUSTOM_ID_PREFIX = "brandbot:rate:"
NO_PINGS = discord.AllowedMentions.none()
RATING_REDIS_SECONDS = 1.5
"""Storing a vote gets this long: Discord drops a click not answered within 3 s."""

# Broad on purpose: whatever follows the prefix reaches `AnswerRatings`, which refuses what is not a vote
# on a request id (discord.py would drop a non-matching click unanswered, and the clicker would see
# "This interaction failed").
TEMPLATE = re.compile(re.escape(CUSTOM_ID_PREFIX) + r"(?P<vote_and_request>.*)", re.DOTALL)


class Vote(StrEnum):
    GOOD = "good"
    BAD = "bad"


EMOJI: dict[str, str] = {Vote.GOOD: "👍", Vote.BAD: "👎"}


class RatingButton(ui.DynamicItem[ui.Button[Any]], template=TEMPLATE):
    """One of the two buttons; discord.py builds it again from the custom id on every click."""

    def __init__(self, request_id: str, vote: str) -> None:
        super().__init__(
            ui.Button(
                style=discord.ButtonStyle.secondary,
                emoji=EMOJI.get(vote, "❔"),  # a forged vote is still drawn, then refused
                custom_id=f"{CUSTOM_ID_PREFIX}{vote}:{request_id}",
            )
        )
        self.request_id, self.vote = request_id, vote

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: ui.Item[Any], match: re.Match[str], /
    ) -> RatingButton:
        vote, _, request_id = match["vote_and_request"].partition(":")
        return cls(request_id, vote)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        # discord.py builds the item itself, without our objects: the bot carries the handler.
        ratings = getattr(interaction.client, "ratings", None)
        if isinstance(ratings, AnswerRatings):
            await ratings.rate(interaction, request_id=self.request_id, vote=self.vote)


def rating_view(request_id: str) -> ui.View:
    """The buttons for a message; fully dynamic, so sending it keeps nothing in discord.py's view store."""
    view = ui.View(timeout=None)
    for vote in Vote:
        view.add_item(RatingButton(request_id, vote))
    return view


class AnswerRatings:
    """Stores a click as that person's vote on the answer; each acts for the clicker only."""

    def __init__(self, *, feedback: FeedbackStore, access: Callable[[], AccessRules]) -> None:
        self.feedback = feedback
        self.access = access

    async def rate(self, interaction: discord.Interaction[Any], *, request_id: str, vote: str) -> None:
        user_id = str(interaction.user.id)
        if not REQUEST_ID.fullmatch(request_id) or vote not in EMOJI:  # `$` would let a "\n" end through
            # Not a button this bot drew: acknowledged without a word, nothing stored, nothing echoed.
            log.info("rating refused, not a rating button", user_id=user_id)
            await acknowledge_quietly(interaction)
            return
        asker = question_from_interaction(interaction, "").asker
        if check_access(self.access(), asker) is not None:
            log.info("rating refused, not allowed", request_id=request_id, user_id=user_id)
            await acknowledge_quietly(interaction)  # someone not allowed to use the bot does not train it
            return
        rating: Literal[1, -1] = 1 if vote == Vote.GOOD else -1
        try:
            async with asyncio.timeout(RATING_REDIS_SECONDS):
                stored = await self.feedback.rate(request_id, rating=rating, user_id=user_id)
        except (*REDIS_ERRORS, TimeoutError):
            stored = False
        log.info("answer rated", request_id=request_id, rating=rating, stored=stored)
        await tell_clicker(interaction, messages.FEEDBACK_THANKS if stored else messages.FEEDBACK_EXPIRED)


async def tell_clicker(interaction: discord.Interaction[Any], text: str) -> None:
    """Only the person who clicked sees it."""
    try:
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_PINGS)
    except discord.HTTPException as error:
        log.info("rating not acknowledged", status=error.status, code=error.code)


async def acknowledge_quietly(interaction: discord.Interaction[Any]) -> None:
    """Answer the click with nothing visible (Discord's "deferred update"), so it does not show as failed."""
    try:
        await interaction.response.defer()
    except discord.HTTPException as error:
        log.info("click not acknowledged", status=error.status, code=error.code)
