"""Conversation turns as the front-ends read them back from a chat."""

from __future__ import annotations

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
