"""What a person sees of one question in a chat: the bot's messages under it, and what they amount to.

Read from the emulators' message stores, the only place where "the user saw it" is true: a Slack
question's thread, a Discord question's replies.
"""

from __future__ import annotations

from collections import defaultdict
from enum import StrEnum
from typing import Any

from bots.relay import STREAMING_CURSOR
from bots.slack.blocks import FEEDBACK_GOOD_ACTION, STOP_ACTION
from brandbot import messages
from brandbot.emulators.discord import DiscordEmulator
from brandbot.emulators.slack import Message, SlackEmulator

ERROR_TEXTS = messages.BOT_NOTICES - {messages.THINKING, messages.RESTARTING, messages.NO_WORKER}
"""Notices that end a question: the one clear error it may get instead of an answer."""
CLOSING_FENCE = "\n```"


class Seen(StrEnum):
    """One bot message under a question, as the person sees it now."""

    WRITING = "writing"  # a placeholder, a cursor, a stream still open: it will change
    ANSWER = "answer"  # a finished answer
    ERROR = "error"  # a finished error notice


def shows_cursor(text: str) -> bool:
    return text.removesuffix(CLOSING_FENCE).endswith(STREAMING_CURSOR)


def is_placeholder(text: str) -> bool:
    return messages.is_bot_notice(text) and text not in ERROR_TEXTS


def slack_text(message: Message) -> str:
    """The text a person sees: `markdown_text`, else the blocks' text, else `text`."""
    if message.markdown_text:
        return message.markdown_text
    texts = []
    for block in message.blocks or []:
        if block.get("type") == "markdown":
            texts.append(str(block.get("text", "")))
        elif block.get("type") == "section":
            texts.append(str(block.get("text", {}).get("text", "")))
    return "\n".join(texts) if texts else message.text


def slack_buttons(message: Message) -> list[Any]:
    return [
        element.get("action_id")
        for block in message.blocks or []
        if block.get("type") == "actions"
        for element in block.get("elements", [])
        if isinstance(element, dict)
    ]


def seen_in_slack(message: Message) -> Seen:
    text, buttons = slack_text(message), slack_buttons(message)
    if message.streaming or STOP_ACTION in buttons or shows_cursor(text):
        return Seen.WRITING
    if FEEDBACK_GOOD_ACTION in buttons:
        return Seen.ANSWER
    return Seen.ERROR if text.strip() in ERROR_TEXTS else Seen.WRITING


def seen_in_discord(message: dict[str, Any]) -> Seen:
    text = str(message.get("content") or "")
    if int(message.get("flags") or 0) & 128 or shows_cursor(text) or is_placeholder(text):
        return Seen.WRITING  # flag 128: the interaction's "thinking…"
    return Seen.ERROR if text.strip() in ERROR_TEXTS else Seen.ANSWER


def visible_text(text: str) -> bool:
    """Some of the answer shows (not only a placeholder)."""
    return bool(text.strip()) and not is_placeholder(text) and text.strip() != STREAMING_CURSOR.strip()


def slack_replies(emulator: SlackEmulator) -> dict[tuple[str, str], list[Message]]:
    """The bot's messages by the (channel, thread) they answer."""
    found: dict[tuple[str, str], list[Message]] = defaultdict(list)
    for message in emulator.all_messages():
        if message.user == emulator.bot_user_id and message.thread_ts:
            found[(message.channel, message.thread_ts)].append(message)
    return found


def discord_replies(emulator: DiscordEmulator) -> dict[str, list[dict[str, Any]]]:
    """The bot's messages by the id of the message they reply to."""
    bot_id = emulator.bot_user["id"]
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for message in list(emulator.messages.values()):
        reference = message.get("message_reference")
        if message["author"]["id"] == bot_id and isinstance(reference, dict):
            found[str(reference["message_id"])].append(message)
    return found
