"""Conversation turns as the front-ends read them back from a chat."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from brandbot import messages
from brandbot.contract import Role, Turn


def merge_answer_parts(turns: list[Turn]) -> list[Turn]:
    """A long answer spans several messages: consecutive assistant turns are one answer."""
    merged: list[Turn] = []
    for turn in turns:
        if merged and turn.role is Role.ASSISTANT and merged[-1].role is Role.ASSISTANT:
            merged[-1] = Turn(role=Role.ASSISTANT, content=merged[-1].content + "\n" + turn.content)
        else:
            merged.append(turn)
    return merged


@dataclass(frozen=True)
class Said:
    """One earlier chat message as context: its text, whether the bot wrote it, and who did if not."""

    text: str
    ours: bool
    author: str | None = None


def recent_turns(newest_first: Iterable[Said], *, max_chars: int, max_turn_chars: int) -> list[Turn]:
    """Conversation turns, newest kept within `max_chars`; the bot's notices left out (they are not
    answers); each message contributes its first `max_turn_chars`; an answer's parts become one turn."""
    turns: list[Turn] = []
    budget = max_chars
    for said in newest_first:
        if not said.text or (said.ours and messages.is_bot_notice(said.text)):
            continue
        text = said.text[:max_turn_chars]
        if len(text) > budget:
            break
        budget -= len(text)
        if said.ours:
            turns.append(Turn(role=Role.ASSISTANT, content=text))
        else:
            turns.append(Turn(role=Role.USER, content=text, name=said.author or None))
    turns.reverse()
    return merge_answer_parts(turns)
