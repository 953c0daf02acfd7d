"""Checks beyond one field's type: prompt templates, and names one file uses that another must define.

They read a file's raw data, so they run (and report) even when the same file has type errors too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from brandbot.promptfiles.models import MODEL_NAME_PATTERN, Routing, SlackRouting
from brandbot.promptfiles.source import Location, Problem, SourceFile
from brandbot.promptfiles.templates import check_template

TEMPLATE_FIELDS = ("system_prompt", "voice_rules", "refusal")
"""Persona fields rendered as templates; examples and descriptions are plain text."""


def template_problems(data: dict[str, Any], source: SourceFile) -> list[Problem]:
    """Every template error in a persona's prompt text, at its own line of the file."""
    texts: list[tuple[Location, str]] = []
    for name in TEMPLATE_FIELDS:
        value = data.get(name)
        if isinstance(value, str):
            texts.append(((name,), value))
        elif isinstance(value, list):
            texts += [((name, index), item) for index, item in enumerate(value) if isinstance(item, str)]
    found = []
    for loc, text in texts:
        # In a block scalar (`key: |`) the template's first line is the line after the key.
        below = source.value_starts_below_key(loc)
        for problem in check_template(text):
            offset = problem.line if below else problem.line - 1
            found.append(source.problem(loc, problem.message, line_offset=offset))
    return found


def persona_reference_problems(
    data: dict[str, Any], source: SourceFile, folder: Path, known_models: list[str] | None
) -> list[Problem]:
    """The persona's model must be one routing.yaml lists; its LoRA folder must exist."""
    found = []
    model = data.get("model", "default")
    readable = isinstance(model, str) and re.fullmatch(MODEL_NAME_PATTERN, model)
    if known_models is not None and readable and model not in known_models:
        listed = ", ".join(known_models)
        found.append(
            source.problem(("model",), f"no model named {model!r} in routing.yaml models ({listed})")
        )
    lora = data.get("lora")
    if isinstance(lora, str) and lora:
        path = lora_path(folder, lora)
        if path is not None and not path.is_dir():
            found.append(source.problem(("lora",), f"LoRA folder {path} does not exist"))
    return found


def lora_path(folder: Path, lora: str | None) -> Path | None:
    """A LoRA folder: absolute, or relative to the prompts folder."""
    if not lora:
        return None
    path = Path(lora).expanduser()
    return path if path.is_absolute() else folder / path


def routing_reference_problems(
    routing: Routing,
    source: SourceFile | None,
    folder: Path,
    existing: set[str],
    *,
    dropped: list[Location],
) -> list[Problem]:
    """Every persona routing.yaml names must have a file (names in fields with errors are skipped)."""
    known = ", ".join(sorted(existing)) or "none"
    if source is None:
        if routing.default_persona in existing:
            return []
        label = str(folder / "personas")
        wanted = f"personas/{routing.default_persona}.yaml"
        return [
            Problem(label, 1, "", f"there is no routing.yaml, so {wanted} must exist (personas: {known})")
        ]
    return [
        source.problem(loc, f"no persona named {name!r} (personas: {known})")
        for loc, name in _named_personas(routing)
        if name not in existing and not any(tuple(loc[: len(gone)]) == tuple(gone) for gone in dropped)
    ]


def _named_personas(routing: Routing) -> Iterator[tuple[Location, str]]:
    yield ("default_persona",), routing.default_persona
    yield from _choice_names(("user_choice",), routing.user_choice)
    sections = (("slack", "workspaces", routing.slack), ("discord", "guilds", routing.discord))
    for platform, workspaces_key, section in sections:
        yield from _choice_names((platform, "user_choice"), section.user_choice)
        for channel_id, route in section.channels.items():
            yield from _route_names((platform, "channels", channel_id), route.persona, route.user_choice)
        workspaces = section.workspaces if isinstance(section, SlackRouting) else section.guilds
        for workspace_id, workspace in workspaces.items():
            base = (platform, workspaces_key, workspace_id)
            yield from _route_names(base, workspace.persona, workspace.user_choice)
            for channel_id, route in workspace.channels.items():
                yield from _route_names((*base, "channels", channel_id), route.persona, route.user_choice)


def _route_names(
    loc: tuple[str, ...], persona: str | None, choice: list[str] | None
) -> Iterator[tuple[Location, str]]:
    # The shorthand `C123: support` has no `persona` key; line_of() then points at `C123:` itself.
    if persona is not None:
        yield (*loc, "persona"), persona
    yield from _choice_names((*loc, "user_choice"), choice)


def _choice_names(loc: tuple[str, ...], choice: list[str] | None) -> Iterator[tuple[Location, str]]:
    for index, name in enumerate(choice or []):
        item: Location = (*loc, index)
        yield item, name
