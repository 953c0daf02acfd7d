"""The shape of the prompt files, as pydantic models (also the source of the JSON Schema)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    # A typo in an admin's file must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sampling(_Strict):
    temperature: float = Field(0.7, ge=0, le=2, description="0 = always the likeliest token.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Keep only the k likeliest tokens; 0 = off.")
    min_p: float = Field(0.0, ge=0, le=1, description="Drop tokens below this fraction of the likeliest.")
    repetition_penalty: float = Field(1.0, ge=1, le=2, description="1 = off.")
    max_new_tokens: int = Field(512, ge=1, le=32_768, description="Longest answer, in tokens.")


class Example(_Strict):
    user: str
    assistant: str


class Persona(_Strict):
    name: str = Field(description="Set from the file name.", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    display_name: str = Field(description="How the bot introduces itself.")
    description: str = Field("", description="One line shown to users choosing a persona.")
    model: str = Field("default", description="Which worker queue serves this persona.")
    system_prompt: str = Field(description="Sandboxed Jinja template rendered into the system message.")
    voice_rules: list[str] = Field(default_factory=list, description="Brand-voice rules, appended as a list.")
    examples: list[Example] = Field(default_factory=list, description="Few-shot exchanges.")
    sampling: Sampling = Sampling()
    stop: list[str] = Field(default_factory=list, description="Generation stops at any of these strings.")
    refusal: str = Field("", description="What to say about off-limits topics.")
    lora: str | None = Field(None, description="LoRA adapter folder (the worker serving `model` loads it).")


class Routing(_Strict):
    default_persona: str = Field("default", description="Answers wherever nothing else is routed.")
