"""Which persona answers where, and which personas a user may pick there — read from routing.yaml.

Most specific wins: the channel (a thread first looks at its own id, then its parent channel's), then
the Slack workspace or Discord server, then `default_persona`. Each answer carries the sentence that
explains it, with the line of routing.yaml that decided, because admins and users ask "why this voice?".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from brandbot.contract import Platform
from brandbot.promptfiles.models import ChannelRoute, DiscordRouting, Routing, SlackRouting, WorkspaceRoute
from brandbot.promptfiles.source import Location, SourceFile


@dataclass(frozen=True)
class Place:
    """Where a message was written, as the front-end knows it."""

    platform: Platform
    workspace_id: str | None = None  # Slack team id or Discord guild id; None in DMs
    channel_id: str | None = None
    parent_channel_id: str | None = None  # a thread's channel


@dataclass(frozen=True)
class Route:
    persona_name: str
    reason: str


@dataclass(frozen=True)
class Choice:
    persona_names: tuple[str, ...]
    origin: str  # e.g. "routing.yaml:20"


@dataclass(frozen=True)
class _Scope:
    """One level of routing that applies to a place, most specific first."""

    what: str  # "channel C123", "Slack workspace T01", …
    loc: tuple[str, ...]
    persona: str | None
    user_choice: list[str] | None


@dataclass(frozen=True)
class RoutingTable:
    routing: Routing
    source: SourceFile | None  # None when there is no routing.yaml (the built-in default applies)

    def route(self, place: Place) -> Route:
        for scope in self._scopes(place):
            if scope.persona is not None:
                return Route(
                    scope.persona,
                    f"{scope.what} is routed to {scope.persona} ({self._at((*scope.loc, 'persona'))})",
                )
        name = self.routing.default_persona
        origin = self._at(("default_persona",))
        return Route(name, f"nothing is routed here, so the default persona {name} answers ({origin})")

    def choice(self, place: Place) -> Choice:
        for scope in self._scopes(place):
            if scope.user_choice is not None:
                return Choice(tuple(scope.user_choice), self._at((*scope.loc, "user_choice")))
        section = self._section(place.platform)
        if section is not None and section.user_choice is not None:
            return Choice(tuple(section.user_choice), self._at((place.platform.value, "user_choice")))
        return Choice(tuple(self.routing.user_choice), self._at(("user_choice",)))

    def choosable_anywhere(self, platform: Platform) -> list[str]:
        """Every persona a user of `platform` may pick somewhere (e.g. for a slash command's choices)."""
        section = self._section(platform)
        lists = [self.routing.user_choice]
        if section is not None:
            lists.append(section.user_choice or [])
            workspaces = section.workspaces if isinstance(section, SlackRouting) else section.guilds
            routes: list[WorkspaceRoute | ChannelRoute] = [*workspaces.values(), *section.channels.values()]
            for workspace in workspaces.values():
                routes.extend(workspace.channels.values())
            lists.extend(route.user_choice or [] for route in routes)
        return sorted({name for names in lists for name in names})

    def _scopes(self, place: Place) -> Iterator[_Scope]:
        section = self._section(place.platform)
        if section is None:
            return
        platform_key = place.platform.value
        noun, workspaces_key = (
            ("Slack workspace", "workspaces")
            if isinstance(section, SlackRouting)
            else ("Discord server", "guilds")
        )
        workspaces = section.workspaces if isinstance(section, SlackRouting) else section.guilds
        workspace = workspaces.get(place.workspace_id) if place.workspace_id else None
        workspace_loc: tuple[str, ...] = (platform_key, workspaces_key, place.workspace_id or "")
        channels = [(place.channel_id, "channel"), (place.parent_channel_id, "this thread's channel")]
        for channel_id, label in channels:
            if not channel_id:
                continue
            if workspace is not None and channel_id in workspace.channels:
                route = workspace.channels[channel_id]
                loc = (*workspace_loc, "channels", channel_id)
                yield _Scope(f"{label} {channel_id}", loc, route.persona, route.user_choice)
            if channel_id in section.channels:
                route = section.channels[channel_id]
                yield _Scope(
                    f"{label} {channel_id}",
                    (platform_key, "channels", channel_id),
                    route.persona,
                    route.user_choice,
                )
        if workspace is not None:
            yield _Scope(
                f"{noun} {place.workspace_id}", workspace_loc, workspace.persona, workspace.user_choice
            )

    def _section(self, platform: Platform) -> SlackRouting | DiscordRouting | None:
        if platform is Platform.SLACK:
            return self.routing.slack
        if platform is Platform.DISCORD:
            return self.routing.discord
        return None  # the terminal chat is an admin's tool: only the default applies

    def _at(self, loc: Location) -> str:
        if self.source is None:
            return "built-in default: there is no routing.yaml"
        if not self.source.has(loc[:1]):  # only top-level keys can be absent: scopes come from the file
            field = ".".join(str(step) for step in loc)
            return f"built-in default: {Path(self.source.label).name} does not set {field}"
        return f"{Path(self.source.label).name}:{self.source.line_of(loc)}"
