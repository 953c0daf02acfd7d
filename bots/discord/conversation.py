"""A Discord question and its conversation: who asks where, the question's text, and the turns before it.

Context is the reply chain (reply to any of the bot's messages to continue) or, in a thread, the thread's
recent messages; both bounded by message count and characters. The bot's own messages are assistant
turns; everyone else's are user turns with their display name. The worker trims further, by tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import discord

from bots.access import Asker
from bots.relay import STREAMING_CURSOR
from bots.turns import Said, recent_turns
from brandbot.contract import Turn
from brandbot.logs import get_logger

log = get_logger(__name__)

MAX_CONTEXT_MESSAGES = 20
"""Earlier messages read for context: a reply chain's length, or a thread's recent history."""

MAX_CONTEXT_CHARS = 12_000
"""Characters of context at most (newest kept); the worker trims to the model's window anyway."""

MAX_TURN_CHARS = 4_000
"""One earlier message contributes at most this much (its beginning)."""

ANSWERABLE_TYPES = (discord.MessageType.default, discord.MessageType.reply)

MENTION = re.compile(r"<@!?(?P<user>\d+)>|<@&(?P<role>\d+)>|<#(?P<channel>\d+)>")


@dataclass(frozen=True)
class DiscordQuestion:
    """One question, from a mention, a reply, a DM or `/ask`, as the front-end needs it."""

    event_id: str  # the message or interaction id: what de-duplication remembers
    user_id: str
    display_name: str
    guild_id: str | None  # None in a DM
    channel_id: str  # the channel, thread or DM it was asked in
    text: str
    parent_channel_id: str | None = None  # a thread's channel
    channel_name: str = ""
    role_ids: tuple[str, ...] = ()
    requested_persona: str | None = None
    message_id: str | None = None  # the question's own message (not for slash commands)

    @property
    def asker(self) -> Asker:
        # Threads follow their channel's allow/block rules; the thread's own id is checked on top.
        return Asker(
            user_id=self.user_id,
            channel_id=self.parent_channel_id or self.channel_id,
            guild_id=self.guild_id,
            role_ids=self.role_ids,
            is_direct_message=self.guild_id is None,
        )


def thread_parent_id(channel: object) -> str | None:
    return str(channel.parent_id) if isinstance(channel, discord.Thread) else None


def role_ids(author: discord.abc.User) -> tuple[str, ...]:
    return tuple(str(role.id) for role in author.roles) if isinstance(author, discord.Member) else ()


def addressed_to_bot(message: discord.Message, bot_user: discord.abc.User) -> bool:
    """A DM, a mention of the bot (or of its own role), or a reply to one of its messages."""
    if message.author.bot or message.webhook_id is not None or message.type not in ANSWERABLE_TYPES:
        return False
    if message.guild is None:
        return True
    if any(user.id == bot_user.id for user in message.mentions):
        return True
    own_role = message.guild.self_role
    if own_role is not None and own_role in message.role_mentions:
        return True
    replied = message.reference.resolved if message.reference else None
    return isinstance(replied, discord.Message) and replied.author.id == bot_user.id


def readable_text(message: discord.Message, bot_user_id: int) -> str:
    """The message as people read it: the bot's own mention removed, other mentions as @names / #names."""
    users = {user.id: user.display_name for user in message.mentions}
    roles = {role.id: role for role in message.role_mentions}
    channels = {channel.id: getattr(channel, "name", "channel") for channel in message.channel_mentions}
    own_role = message.guild.self_role if message.guild else None

    def readable(match: re.Match[str]) -> str:
        if match["user"]:
            user_id = int(match["user"])
            return "" if user_id == bot_user_id else "@" + users.get(user_id, "someone")
        if match["role"]:
            role = roles.get(int(match["role"]))
            return "" if role is not None and role == own_role else "@" + (role.name if role else "role")
        return "#" + channels.get(int(match["channel"]), "channel")

    return MENTION.sub(readable, message.content).strip()


def question_from_message(message: discord.Message, bot_user_id: int) -> DiscordQuestion:
    return DiscordQuestion(
        event_id=str(message.id),
        user_id=str(message.author.id),
        display_name=message.author.display_name,
        guild_id=str(message.guild.id) if message.guild else None,
        channel_id=str(message.channel.id),
        parent_channel_id=thread_parent_id(message.channel),
        channel_name=getattr(message.channel, "name", None) or "",
        role_ids=role_ids(message.author),
        text=readable_text(message, bot_user_id),
        message_id=str(message.id),
    )


def question_from_interaction(
    interaction: discord.Interaction, prompt: str, persona: str | None = None
) -> DiscordQuestion:
    return DiscordQuestion(
        event_id=str(interaction.id),
        user_id=str(interaction.user.id),
        display_name=interaction.user.display_name,
        guild_id=str(interaction.guild_id) if interaction.guild_id else None,
        channel_id=str(interaction.channel_id),
        parent_channel_id=thread_parent_id(interaction.channel),
        channel_name=getattr(interaction.channel, "name", None) or "",
        role_ids=role_ids(interaction.user),
        text=prompt.strip(),
        requested_persona=persona or None,
    )


async def conversation_before(message: discord.Message, bot_user_id: int) -> list[Turn]:
    """The turns before `message`: its thread's recent history, or the chain of replies it continues."""
    if isinstance(message.channel, discord.Thread):
        earlier = await thread_history(message)
    else:
        earlier = await reply_chain(message)
    return to_turns(earlier, bot_user_id)


async def thread_history(message: discord.Message) -> list[discord.Message]:
    """The thread's messages before `message`, oldest first (bounded); none if history is not readable."""
    try:
        earlier = [m async for m in message.channel.history(limit=MAX_CONTEXT_MESSAGES, before=message)]
    except discord.HTTPException as error:  # e.g. no Read Message History permission
        log.warning("thread history not readable", channel_id=message.channel.id, code=error.code)
        return []
    earlier.reverse()
    return earlier


async def reply_chain(message: discord.Message) -> list[discord.Message]:
    """The messages `message` replies to, transitively, oldest first (same channel only, bounded)."""
    chain: list[discord.Message] = []
    reference = message.reference
    while reference is not None and len(chain) < MAX_CONTEXT_MESSAGES:
        if reference.message_id is None or reference.channel_id != message.channel.id:
            break
        earlier = await referenced_message(message.channel, reference)
        if earlier is None:
            break
        chain.append(earlier)
        reference = earlier.reference
    chain.reverse()
    return chain


async def referenced_message(
    channel: discord.abc.MessageableChannel, reference: discord.MessageReference
) -> discord.Message | None:
    if isinstance(reference.resolved, discord.Message):
        return reference.resolved
    if reference.cached_message is not None:
        return reference.cached_message
    assert reference.message_id is not None
    try:
        return await channel.fetch_message(reference.message_id)
    except discord.HTTPException:
        return None  # deleted, or not ours to read: the chain ends here


def to_turns(earlier: list[discord.Message], bot_user_id: int) -> list[Turn]:
    """Conversation turns of earlier messages (see `bots.turns.recent_turns`)."""

    def newest_first() -> Iterator[Said]:
        for message in reversed(earlier):
            ours = message.author.id == bot_user_id
            text = readable_text(message, bot_user_id)
            if ours:
                text = text.removesuffix(STREAMING_CURSOR.strip()).strip()
            yield Said(text, ours, message.author.display_name)

    return recent_turns(newest_first(), max_chars=MAX_CONTEXT_CHARS, max_turn_chars=MAX_TURN_CHARS)
