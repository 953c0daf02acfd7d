"""The shape of the prompt files, as pydantic models (also the source of the JSON Schema).

Field descriptions are what an editor shows while the admin types, so they are written for the admin.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from brandbot.promptfiles.access import AccessRules

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
"""A persona's name: its file name without `.yaml` (also the value users pick in Discord)."""

MODEL_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
"""The same rule as `BRANDBOT_MODEL_NAME`, the name a worker serves."""

DESCRIPTION_MAX_CHARS = 100
"""Discord rejects longer descriptions of a command choice."""

PersonaName = Annotated[str, Field(pattern=NAME_PATTERN, description="A persona's file name, without .yaml.")]


class _Strict(BaseModel):
    # A typo in an admin's file must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sampling(_Strict):
    """How the next token is drawn; every field is always passed to the engine."""

    temperature: float = Field(
        0.7, ge=0, le=2, description="0 = always the likeliest token; higher = bolder."
    )
    top_p: float = Field(
        0.9, gt=0, le=1, description="Nucleus sampling: keep the likeliest tokens up to this mass."
    )
    top_k: int = Field(0, ge=0, description="Keep only the k likeliest tokens; 0 = off.")
    min_p: float = Field(
        0.0, ge=0, le=1, description="Drop tokens below this fraction of the likeliest; 0 = off."
    )
    repetition_penalty: float = Field(1.0, ge=1, le=2, description="Discourage repeating tokens; 1 = off.")
    max_new_tokens: int = Field(512, ge=1, le=32_768, description="Longest answer, in tokens.")


class Example(_Strict):
    """One few-shot exchange, shown to the model before the real conversation (not a template)."""

    user: str = Field(min_length=1, description="What the user says.")
    assistant: str = Field(min_length=1, description="How this persona answers it.")


class PersonaFile(_Strict):
    """One `prompts/personas/<name>.yaml` file: a voice the assistant can answer in."""

    display_name: str = Field(
        min_length=1, max_length=80, description="How the assistant introduces itself ({{ assistant_name }})."
    )
    description: str = Field(
        "", max_length=DESCRIPTION_MAX_CHARS, description="One line shown to users choosing a persona."
    )
    model: str = Field(
        "default",
        pattern=MODEL_NAME_PATTERN,
        description="Which worker queue serves this persona (a name listed under `models:` in routing.yaml).",
    )
    system_prompt: str = Field(
        min_length=1, description="The system message, a template: {{ user }}, {{ channel }}, {{ today }}, …"
    )
    voice_rules: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="Brand-voice rules, added to the system message as a list (templates).",
    )
    examples: list[Example] = Field(default_factory=list, description="Few-shot exchanges, in order.")
    sampling: Sampling = Field(default_factory=Sampling, description="Sampler settings for this persona.")
    stop: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Generation stops at any of these strings (not shown to the user)."
    )
    banned_phrases: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description=(
            "Never generated: the model is steered away while it writes (case-insensitive), not filtered"
            " afterwards. Also checked by every eval case of this persona."
        ),
    )
    refusal: str = Field(
        "", description="What to say about off-limits topics; added to the system message (a template)."
    )
    confidential: bool = Field(
        False,
        description=(
            "Stop an answer that starts quoting the system prompt or voice rules word for word, and say"
            " the confidential-refusal line instead. A deterrent, not a vault: see prompts/README.md."
        ),
    )
    lora: str | None = Field(
        None,
        min_length=1,
        description="LoRA adapter folder, relative to the prompts folder or absolute; it must exist.",
    )


class Persona(PersonaFile):
    """A persona as the rest of brandbot sees it: the file's content plus its name."""

    name: str = Field(pattern=NAME_PATTERN, description="Set from the file name.")


def _ids_as_text(value: Any) -> Any:
    """Discord ids written unquoted are YAML integers; an id is text, digit for digit."""
    if isinstance(value, dict):
        return {
            str(key) if isinstance(key, int) and not isinstance(key, bool) else key: v
            for key, v in value.items()
        }
    return value


def _persona_shorthand(value: Any) -> Any:
    """`C123: support` is short for `C123: {persona: support}`."""
    return {"persona": value} if isinstance(value, str) else value


class ChannelRoute(_Strict):
    """Who answers in one channel (and in its threads)."""

    persona: PersonaName | None = Field(None, description="Persona answering in this channel.")
    user_choice: list[PersonaName] | None = Field(
        None, description="Personas users may pick themselves here; [] = none. Unset = as the level above."
    )


ChannelEntry = Annotated[
    ChannelRoute, BeforeValidator(_persona_shorthand, json_schema_input_type=PersonaName | ChannelRoute)
]
ChannelMap = Annotated[
    dict[str, ChannelEntry],
    BeforeValidator(_ids_as_text),
    Field(description="Channel id → persona name, or {persona, user_choice}. Threads follow their channel."),
]


class WorkspaceRoute(_Strict):
    """Who answers in one Slack workspace or Discord server, unless a channel says otherwise."""

    persona: PersonaName | None = Field(None, description="Persona answering anywhere in it.")
    channels: ChannelMap = Field(default_factory=dict)
    user_choice: list[PersonaName] | None = Field(
        None, description="Personas users may pick themselves here; [] = none. Unset = as the level above."
    )


class SlackRouting(_Strict):
    access: AccessRules = Field(default_factory=AccessRules, description="Who may ask in Slack, how often.")
    thread_follow_ups: bool = Field(
        True, description="Answer later messages in a thread the bot is part of without a new mention."
    )
    workspaces: Annotated[dict[str, WorkspaceRoute], BeforeValidator(_ids_as_text)] = Field(
        default_factory=dict, description="Slack team id (T…) → routing inside that workspace."
    )
    channels: ChannelMap = Field(default_factory=dict)
    user_choice: list[PersonaName] | None = Field(
        None, description="Personas Slack users may pick; unset = the top-level user_choice."
    )


class DiscordRouting(_Strict):
    access: AccessRules = Field(default_factory=AccessRules, description="Who may ask in Discord, how often.")
    guilds: Annotated[dict[str, WorkspaceRoute], BeforeValidator(_ids_as_text)] = Field(
        default_factory=dict, description="Discord server (guild) id → routing inside that server."
    )
    channels: ChannelMap = Field(default_factory=dict)
    user_choice: list[PersonaName] | None = Field(
        None,
        description="Personas Discord users may pick (`/ask persona:`); unset = the top-level user_choice.",
    )


class Routing(_Strict):
    """`prompts/routing.yaml`: which persona answers where, and which personas users may pick."""

    default_persona: PersonaName = Field("default", description="Answers wherever nothing else is routed.")
    models: list[Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]] = Field(
        default_factory=lambda: ["default"],
        min_length=1,
        description="Model names workers serve (BRANDBOT_MODEL_NAME); a persona's `model` must be one.",
    )
    user_choice: list[PersonaName] = Field(
        default_factory=list, description="Personas users may pick themselves everywhere; [] = none."
    )
    slack: SlackRouting = Field(default_factory=SlackRouting, description="Slack overrides.")
    discord: DiscordRouting = Field(default_factory=DiscordRouting, description="Discord overrides.")
