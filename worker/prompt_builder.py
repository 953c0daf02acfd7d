"""Turn a request and a persona into the exact prompt text the model sees, within its context window.

The conversation is trimmed with the real tokenizer: oldest turns first, never the system prompt or the
newest user turn; new tokens are capped so prompt + answer fit. A newest turn longer than the window is
cut (its beginning kept) and the user is told.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from brandbot import messages
from brandbot.contract import GenerationRequest, Role, Turn
from brandbot.promptfiles.models import Persona
from brandbot.templating import ChatTemplate, render_text

MIN_ANSWER_TOKENS = 16
"""Below this much room for the answer, the newest question is cut instead of the answer."""


@dataclass(frozen=True)
class BuiltPrompt:
    text: str
    prompt_tokens: int
    max_new_tokens: int
    dropped_turns: int = 0
    notices: list[tuple[str, str]] = field(default_factory=list)


def prompt_variables(request: GenerationRequest, persona: Persona, *, company: str) -> dict[str, Any]:
    """The variables admins may use in prompt text (documented in prompts/README.md)."""
    return {
        "user": request.user.display_name or "a colleague",
        "channel": request.channel_name or "a direct message",
        "platform": request.target.platform.value.capitalize(),
        "company": company,
        "today": date.today().isoformat(),
        "assistant_name": persona.display_name,
    }


def system_message(persona: Persona, variables: dict[str, Any]) -> str:
    parts = [render_text(persona.system_prompt, variables).strip()]
    if persona.voice_rules:
        rules = "\n".join(f"- {render_text(rule, variables)}" for rule in persona.voice_rules)
        parts.append(f"Follow these rules of voice:\n{rules}")
    if persona.refusal:
        parts.append(f"For off-limits topics, answer: {render_text(persona.refusal, variables)}")
    return "\n\n".join(parts)


def build_prompt(
    request: GenerationRequest,
    persona: Persona,
    *,
    template: ChatTemplate,
    count_tokens: Callable[[str], int],
    context_length: int,
    company: str,
) -> BuiltPrompt:
    variables = prompt_variables(request, persona, company=company)
    head = [{"role": "system", "content": system_message(persona, variables)}]
    for example in persona.examples:
        head += [
            {"role": "user", "content": example.user},
            {"role": "assistant", "content": example.assistant},
        ]
    history = [_message(turn) for turn in request.turns[:-1]]
    newest = _message(request.turns[-1])
    wanted = min(
        persona.sampling.max_new_tokens, request.limits.max_new_tokens or persona.sampling.max_new_tokens
    )

    def measure(conversation: list[dict[str, str]]) -> tuple[str, int]:
        text = template.render(head + conversation + [newest])
        return text, count_tokens(text)

    notices: list[tuple[str, str]] = []
    text, tokens = measure(history)
    dropped = 0
    while history and tokens + min(wanted, MIN_ANSWER_TOKENS * 4) > context_length:
        history = history[1:]
        dropped += 1
        text, tokens = measure(history)
    if dropped:
        notices.append(("context_trimmed", messages.CONTEXT_TRIMMED))
    if tokens + MIN_ANSWER_TOKENS > context_length:
        text, tokens = _cut_newest(head, newest, template, count_tokens, context_length - MIN_ANSWER_TOKENS)
        notices.append(("question_trimmed", messages.QUESTION_TRIMMED))
    room = context_length - tokens
    return BuiltPrompt(
        text=text,
        prompt_tokens=tokens,
        max_new_tokens=max(1, min(wanted, room)),
        dropped_turns=dropped,
        notices=notices,
    )


def _message(turn: Turn) -> dict[str, str]:
    return {"role": "user" if turn.role is Role.USER else "assistant", "content": turn.content}


def _cut_newest(
    head: list[dict[str, str]],
    newest: dict[str, str],
    template: ChatTemplate,
    count_tokens: Callable[[str], int],
    budget: int,
) -> tuple[str, int]:
    """Keep the longest beginning of the newest message that fits `budget` tokens (binary search)."""
    content = newest["content"]
    low, high = 0, len(content)
    best = template.render([*head, {**newest, "content": ""}])
    best_tokens = count_tokens(best)
    while low < high:
        middle = (low + high + 1) // 2
        text = template.render([*head, {**newest, "content": content[:middle]}])
        tokens = count_tokens(text)
        if tokens <= budget:
            low, best, best_tokens = middle, text, tokens
        else:
            high = middle - 1
    return best, best_tokens
