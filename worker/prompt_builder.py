"""Turn a request and a persona into the exact prompt text the model sees, within its context window.

The answer's budget is reserved first (the persona's max new tokens, at most half the window); the
conversation fills what is left, newest turns first, measured with the real tokenizer. The system prompt
and the newest turn are never dropped: a newest turn too long for its room is cut (its beginning kept)
and the user is told.

Every chat template gets the same shape of conversation (`alternate_roles`): same-role runs merged, the
system prompt folded into the first user turn where the template has no system role, a user turn first.
Text from users (messages, history, names) is kept from becoming special tokens here, once for every engine.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from brandbot import messages
from brandbot.contract import GenerationRequest, Role, Turn
from brandbot.promptfiles.models import Persona
from brandbot.templating import ChatTemplate, render_text

Message = dict[str, str]

ANSWER_SHARE_MAX = 0.5
"""The answer's reserved room is the persona's max new tokens, but at most this share of the window:
a persona asking for more than the window holds must still leave room for the question."""

NAME_MAX_CHARS = 64
"""Display names longer than this are cut: a name is a label, not a place for instructions."""

CHANNEL_NAME_MAX_CHARS = 80
"""Slack and Discord both cap channel names at 80 characters."""

MERGE_SEPARATOR = "\n\n"
"""Between turns of one role merged into one message, and between a folded system prompt and the turn."""

OPENING_TURN = "(continuing an earlier conversation)"
"""A user turn put first when the conversation starts with the assistant (templates expect a user first)."""

# Chat-control markup of common model families, removed from names even when this tokenizer lacks them.
_CONTROL_MARKUP = re.compile(r"<\|[^<>|]{0,40}\|>|</?s>|\[/?INST\]|<(?:start|end)_of_turn>|\[/?SYS\]")


@dataclass(frozen=True)
class BuiltPrompt:
    text: str
    prompt_tokens: int
    max_new_tokens: int
    dropped_turns: int = 0
    notices: list[tuple[str, str]] = field(default_factory=list)
    confidential_text: str = ""
    """The persona's instructions as the model saw them, when the persona is confidential (else empty)."""


def clean_name(name: str, *, special_tokens: Sequence[str] = (), limit: int = NAME_MAX_CHARS) -> str:
    """A user-chosen name made safe for a prompt: one line of visible text, no control markup, capped."""
    visible = "".join(
        " " if char.isspace() else char
        for char in name
        if unicodedata.category(char) not in {"Cc", "Cf", "Cs", "Co", "Cn"} or char.isspace()
    )
    while True:  # removing one token may join the pieces of another around it
        stripped = _CONTROL_MARKUP.sub("", visible)
        for token in special_tokens:
            stripped = stripped.replace(token, "")
        if stripped == visible:
            break
        visible = stripped
    return " ".join(visible.split())[:limit].strip()


def prompt_variables(
    request: GenerationRequest, persona: Persona, *, company: str, special_tokens: Sequence[str] = ()
) -> dict[str, Any]:
    """The variables admins may use in prompt text (documented in prompts/README.md).

    `user` and `channel` are chosen by users, so they arrive cleaned (see `clean_name`).
    """
    user = clean_name(request.user.display_name, special_tokens=special_tokens)
    channel = clean_name(request.channel_name, special_tokens=special_tokens, limit=CHANNEL_NAME_MAX_CHARS)
    return {
        "user": user or "a colleague",
        "channel": channel or "a direct message",
        "platform": request.target.platform.value.capitalize(),
        "company": company,
        "today": date.today().isoformat(),
        "assistant_name": persona.display_name,
    }


def system_message(persona: Persona, variables: dict[str, Any]) -> str:
    parts = [persona_instructions(persona, variables)]
    if persona.refusal:
        parts.append(f"For off-limits topics, answer: {render_text(persona.refusal, variables)}")
    return "\n\n".join(parts)


def persona_instructions(persona: Persona, variables: dict[str, Any]) -> str:
    """The system prompt and voice rules: what a confidential persona keeps to itself (the refusal is
    meant to be said, so it is not part of it)."""
    parts = [render_text(persona.system_prompt, variables).strip()]
    if persona.voice_rules:
        rules = "\n".join(f"- {render_text(rule, variables)}" for rule in persona.voice_rules)
        parts.append(f"Follow these rules of voice:\n{rules}")
    return "\n\n".join(parts)


def alternate_roles(conversation: Sequence[Message], *, system_role: bool) -> list[Message]:
    """The same conversation in the shape every chat template accepts.

    System text goes first (or, without a system role, before the first user turn's text); runs of one
    role become one message; a user turn comes first. Nothing is dropped and the order is kept.
    """
    system = [m["content"] for m in conversation if m["role"] == "system"]
    merged: list[Message] = []
    for message in conversation:
        if message["role"] == "system":
            continue
        if merged and merged[-1]["role"] == message["role"]:
            joined = merged[-1]["content"] + MERGE_SEPARATOR + message["content"]
            merged[-1] = {"role": message["role"], "content": joined}
        else:
            merged.append({"role": message["role"], "content": message["content"]})
    if not merged or merged[0]["role"] != "user":
        merged.insert(0, {"role": "user", "content": OPENING_TURN})
    if not system:
        return merged
    system_text = MERGE_SEPARATOR.join(system)
    if system_role:
        return [{"role": "system", "content": system_text}, *merged]
    return [{"role": "user", "content": system_text + MERGE_SEPARATOR + merged[0]["content"]}, *merged[1:]]


def conversation_messages(turns: Sequence[Turn], template: ChatTemplate) -> list[Message]:
    """The request's turns as chat messages, their text unable to become special tokens.

    In a thread with several people each user turn says who wrote it ("Name: text"), so that merging
    their turns into one message keeps who said what.
    """
    names = [
        clean_name(turn.name or "", special_tokens=template.special_tokens) if turn.role is Role.USER else ""
        for turn in turns
    ]
    several_people = len({name for name in names if name}) > 1
    result = []
    for turn, name in zip(turns, names, strict=True):
        content = template.neutralise(turn.content)
        if several_people and name:
            content = f"{name}: {content}"
        result.append({"role": "user" if turn.role is Role.USER else "assistant", "content": content})
    return result


def build_prompt(
    request: GenerationRequest,
    persona: Persona,
    *,
    template: ChatTemplate,
    count_tokens: Callable[[str], int],
    context_length: int,
    company: str,
) -> BuiltPrompt:
    """The prompt for `request`: the answer's room reserved, then the newest history that fits."""
    variables = prompt_variables(request, persona, company=company, special_tokens=template.special_tokens)
    head: list[Message] = [{"role": "system", "content": system_message(persona, variables)}]
    for example in persona.examples:
        head += [
            {"role": "user", "content": example.user},
            {"role": "assistant", "content": example.assistant},
        ]
    conversation = conversation_messages(request.turns, template)
    history, newest = conversation[:-1], conversation[-1]
    wanted = min(
        persona.sampling.max_new_tokens, request.limits.max_new_tokens or persona.sampling.max_new_tokens
    )
    reserved = min(wanted, int(context_length * ANSWER_SHARE_MAX))
    budget = context_length - reserved

    def measure(kept: list[Message], last: Message) -> tuple[str, int]:
        turns = [*kept, last]
        if turns[0]["role"] != "user":  # the conversation's own start, not the examples', opens it
            turns.insert(0, {"role": "user", "content": OPENING_TURN})
        text = template.render(alternate_roles(head + turns, system_role=template.has_system_role))
        return text, count_tokens(text)

    notices: list[tuple[str, str]] = []
    kept, (text, tokens) = _newest_history_that_fits(history, lambda h: measure(h, newest), budget)
    dropped = len(history) - len(kept)
    if dropped:
        notices.append(("context_trimmed", messages.CONTEXT_TRIMMED))
    if tokens > budget:
        text, tokens = _cut_newest(newest, lambda last: measure([], last), budget)
        notices.append(("question_trimmed", messages.QUESTION_TRIMMED))
    return BuiltPrompt(
        text=text,
        prompt_tokens=tokens,
        max_new_tokens=max(1, min(wanted, context_length - tokens)),
        dropped_turns=dropped,
        notices=notices,
        confidential_text=persona_instructions(persona, variables) if persona.confidential else "",
    )


def _newest_history_that_fits(
    history: list[Message], measure: Callable[[list[Message]], tuple[str, int]], budget: int
) -> tuple[list[Message], tuple[str, int]]:
    """The longest run of newest turns whose prompt fits `budget` (binary search over how many are kept).

    Only measured prompts are accepted, so the result always fits, or is the prompt with no history.
    """
    everything = measure(history)
    if everything[1] <= budget or not history:
        return history, everything
    # Keeping `low` turns fits (or low is 0); keeping more than `high` does not.
    low, high = 0, len(history) - 1
    best = measure([])
    while low < high:
        middle = (low + high + 1) // 2
        candidate = measure(history[-middle:])
        if candidate[1] <= budget:
            low, best = middle, candidate
        else:
            high = middle - 1
    return (history[-low:] if low else []), best


def _cut_newest(
    newest: Message, measure: Callable[[Message], tuple[str, int]], budget: int
) -> tuple[str, int]:
    """Keep the longest beginning of the newest message that fits `budget` tokens (binary search)."""
    content = newest["content"]
    low, high = 0, len(content)
    best = measure({**newest, "content": ""})
    while low < high:
        middle = (low + high + 1) // 2
        candidate = measure({**newest, "content": content[:middle]})
        if candidate[1] <= budget:
            low, best = middle, candidate
        else:
            high = middle - 1
    return best
