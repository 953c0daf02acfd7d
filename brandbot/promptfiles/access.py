"""Who may use the bot where, and how often: the `access:` sections of `prompts/routing.yaml`."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# Discord ids are long numbers; YAML reads them unquoted as ints. Either way they are ids, i.e. text.
PlatformId = Annotated[str, BeforeValidator(lambda value: str(value) if isinstance(value, int) else value)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimit(_Strict):
    questions_per_minute: float = Field(6.0, gt=0, description="Sustained rate per user.")
    burst: int = Field(5, ge=1, description="Questions a user may ask at once before the rate applies.")


class AccessRules(_Strict):
    """Who may use the bot on one platform (ids as the platform shows them)."""

    allow_users: list[PlatformId] = Field(
        default_factory=list, description="Only these users (empty: everyone)."
    )
    block_users: list[PlatformId] = Field(default_factory=list)
    allow_channels: list[PlatformId] = Field(
        default_factory=list, description="Only these channels (empty: all)."
    )
    block_channels: list[PlatformId] = Field(default_factory=list)
    allow_guilds: list[PlatformId] = Field(default_factory=list, description="Discord servers (empty: all).")
    block_guilds: list[PlatformId] = Field(default_factory=list)
    allow_roles: list[PlatformId] = Field(
        default_factory=list, description="Discord roles (empty: any role)."
    )
    block_roles: list[PlatformId] = Field(default_factory=list)
    admins: list[PlatformId] = Field(default_factory=list, description="Users who may run admin commands.")
    direct_messages: bool = Field(True, description="Answer direct messages.")
    rate_limit: RateLimit = RateLimit()
    max_question_chars: int | None = Field(None, ge=1, description="Overrides BRANDBOT_MAX_QUESTION_CHARS.")
