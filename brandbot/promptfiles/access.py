"""Who may use the bot where, and how often: the `access:` sections of `prompts/routing.yaml`."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# Discord ids are long numbers; YAML reads them unquoted as ints. Either way they are ids, i.e. text.
PlatformId = Annotated[str, BeforeValidator(lambda value: str(value) if isinstance(value, int) else value)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_REFUSES_DMS = "Set, it also refuses DMs, unless direct_messages: true."


class RateLimit(_Strict):
    questions_per_minute: float = Field(6.0, gt=0, description="Sustained rate per user.")
    burst: int = Field(5, ge=1, description="Questions a user may ask at once before the rate applies.")


class AccessRules(_Strict):
    """Who may use the bot on one platform (ids as the platform shows them).

    A direct message is in no server, channel or role, so rules about those cannot be checked there:
    unless `direct_messages` is set, DMs are answered only while no such rule is set. Rules about people
    (users; Slack workspaces and external people) apply everywhere, DMs included.
    """

    allow_users: list[PlatformId] = Field(
        default_factory=list, description="Only these users (empty: everyone)."
    )
    block_users: list[PlatformId] = Field(default_factory=list)
    allow_channels: list[PlatformId] = Field(
        default_factory=list,
        description="Only these channels (empty: all). " + _REFUSES_DMS,
    )
    block_channels: list[PlatformId] = Field(default_factory=list)
    allow_guilds: list[PlatformId] = Field(
        default_factory=list,
        description="Discord servers (empty: all). " + _REFUSES_DMS,
    )
    block_guilds: list[PlatformId] = Field(
        default_factory=list,
        description="Discord servers not served. " + _REFUSES_DMS,
    )
    allow_roles: list[PlatformId] = Field(
        default_factory=list,
        description="Discord roles, one needed (empty: any role). " + _REFUSES_DMS,
    )
    block_roles: list[PlatformId] = Field(
        default_factory=list,
        description="Discord roles refused. " + _REFUSES_DMS,
    )
    allow_teams: list[PlatformId] = Field(
        default_factory=list,
        description="Slack workspaces (team ids, T…) whose people may ask, DMs included (empty: any).",
    )
    block_teams: list[PlatformId] = Field(
        default_factory=list, description="Slack workspaces whose people are refused, DMs included."
    )
    allow_external_users: bool = Field(
        False,
        description="Slack: answer people of other organisations in Slack Connect channels and DMs; "
        "allow_teams and block_teams still apply to them.",
    )
    admins: list[PlatformId] = Field(default_factory=list, description="Users who may run admin commands.")
    direct_messages: bool | None = Field(
        None,
        description="Answer direct messages: true always (user and workspace rules still apply), false "
        "never; unset: only while no channel, server or role rule is set, since a DM proves none of them.",
    )
    rate_limit: RateLimit = RateLimit()
    max_question_chars: int | None = Field(None, ge=1, description="Overrides BRANDBOT_MAX_QUESTION_CHARS.")

    @property
    def limits_places(self) -> bool:
        """A rule a DM cannot satisfy: it names channels, servers or roles, and a DM has none of them."""
        place_rules = (
            self.allow_channels,
            self.allow_guilds,
            self.block_guilds,
            self.allow_roles,
            self.block_roles,
        )
        return any(place_rules)

    @property
    def answers_direct_messages(self) -> bool:
        """`direct_messages` when set; unset, DMs are answered only while no rule limits places."""
        return self.direct_messages if self.direct_messages is not None else not self.limits_places
