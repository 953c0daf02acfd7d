"""Which persona answers where, why (with the line of routing.yaml), and which ones users may pick."""

from __future__ import annotations

from pathlib import Path

import pytest

from brandbot.contract import Platform
from brandbot.promptfiles import PromptLibrary, load_prompt_library

PERSONA = "display_name: {name}\nsystem_prompt: You are {{{{ assistant_name }}}}.\n"

ROUTING = """\
default_persona: default
user_choice: [default]
slack:
  channels:
    C0ANY: support
  workspaces:
    T0STAFF:
      persona: engineering
      channels:
        C0CUSTOMERS: support
        C0LAB:
          user_choice: [engineering, support]
discord:
  user_choice: []
  guilds:
    112233445566778899:
      persona: support
      user_choice: [support, default]
      channels:
        "998877665544332211":
          persona: engineering
"""


@pytest.fixture
def library(tmp_path: Path) -> PromptLibrary:
    folder = tmp_path / "prompts"
    (folder / "personas").mkdir(parents=True)
    for name in ("default", "support", "engineering"):
        (folder / "personas" / f"{name}.yaml").write_text(PERSONA.format(name=name.title()))
    (folder / "routing.yaml").write_text(ROUTING)
    return load_prompt_library(folder)


def test_channel_in_a_workspace_wins_over_the_workspace(library: PromptLibrary) -> None:
    resolution = library.resolve(platform=Platform.SLACK, workspace_id="T0STAFF", channel_id="C0CUSTOMERS")
    assert resolution.persona.name == "support"
    assert resolution.reason == "channel C0CUSTOMERS is routed to support (routing.yaml:10)"


def test_workspace_persona_answers_in_its_other_channels(library: PromptLibrary) -> None:
    resolution = library.resolve(platform=Platform.SLACK, workspace_id="T0STAFF", channel_id="C0RANDOM")
    assert resolution.persona.name == "engineering"
    assert resolution.reason == "Slack workspace T0STAFF is routed to engineering (routing.yaml:8)"


def test_platform_wide_channel_applies_in_any_workspace(library: PromptLibrary) -> None:
    resolution = library.resolve(platform=Platform.SLACK, workspace_id="T0OTHER", channel_id="C0ANY")
    assert (resolution.persona.name, resolution.reason) == (
        "support",
        "channel C0ANY is routed to support (routing.yaml:5)",
    )


def test_nothing_routed_falls_back_to_default_with_its_line(library: PromptLibrary) -> None:
    resolution = library.resolve(platform=Platform.SLACK, workspace_id=None, channel_id="D123")
    assert resolution.persona.name == "default"
    assert (
        resolution.reason == "nothing is routed here, so the default persona default answers (routing.yaml:1)"
    )


def test_discord_thread_inherits_its_parent_channel(library: PromptLibrary) -> None:
    resolution = library.resolve(
        platform=Platform.DISCORD,
        workspace_id="112233445566778899",
        channel_id="555",  # the thread's own id
        parent_channel_id="998877665544332211",
    )
    assert resolution.persona.name == "engineering"
    assert resolution.reason == (
        "this thread's channel 998877665544332211 is routed to engineering (routing.yaml:21)"
    )


def test_channel_entry_without_persona_still_follows_its_workspace(library: PromptLibrary) -> None:
    resolution = library.resolve(platform=Platform.SLACK, workspace_id="T0STAFF", channel_id="C0LAB")
    assert resolution.persona.name == "engineering"


def test_user_pick_is_honoured_only_where_routing_allows_it(library: PromptLibrary) -> None:
    lab = library.resolve(
        platform=Platform.SLACK, workspace_id="T0STAFF", channel_id="C0LAB", requested="support"
    )
    assert (lab.persona.name, lab.refused_request) == ("support", None)
    assert lab.reason == "you picked support (allowed here by routing.yaml:12)"

    elsewhere = library.resolve(
        platform=Platform.SLACK, workspace_id="T0STAFF", channel_id="C0RANDOM", requested="support"
    )
    assert (elsewhere.persona.name, elsewhere.refused_request) == ("engineering", "support")

    routed_anyway = library.resolve(
        platform=Platform.SLACK, workspace_id="T0STAFF", channel_id="C0RANDOM", requested="engineering"
    )
    assert (routed_anyway.persona.name, routed_anyway.refused_request) == ("engineering", None)


def test_pick_of_a_persona_that_does_not_exist_is_refused(library: PromptLibrary) -> None:
    resolution = library.resolve(
        platform=Platform.SLACK, workspace_id=None, channel_id="C1", requested="../../etc/passwd"
    )
    assert (resolution.persona.name, resolution.refused_request) == ("default", "../../etc/passwd")


def test_choosable_personas_follow_the_most_specific_level(library: PromptLibrary) -> None:
    def names(
        platform: Platform, workspace: str | None, channel: str, parent: str | None = None
    ) -> list[str]:
        personas = library.choosable(
            platform=platform, workspace_id=workspace, channel_id=channel, parent_channel_id=parent
        )
        return [persona.name for persona in personas]

    assert names(Platform.SLACK, "T0STAFF", "C0LAB") == ["engineering", "support"]
    assert names(Platform.SLACK, "T0STAFF", "C0RANDOM") == ["default"]  # top level
    assert names(Platform.DISCORD, "112233445566778899", "1") == ["support", "default"]  # server
    assert names(Platform.DISCORD, "999", "1") == []  # discord.user_choice: []
    assert [p.name for p in library.choosable_anywhere(Platform.DISCORD)] == ["default", "support"]


def test_terminal_uses_the_default_persona(library: PromptLibrary) -> None:
    resolution = library.resolve(platform=Platform.TERMINAL, workspace_id=None, channel_id="terminal")
    assert resolution.persona.name == "default"


def test_the_admin_in_the_terminal_chat_may_try_any_persona(library: PromptLibrary) -> None:
    # routing's top-level user_choice is [default]: a chat user may not pick engineering, the admin may
    resolution = library.resolve(
        platform=Platform.TERMINAL, workspace_id=None, channel_id="terminal", requested="engineering"
    )
    assert (resolution.persona.name, resolution.refused_request) == ("engineering", None)
    missing = library.resolve(
        platform=Platform.TERMINAL, workspace_id=None, channel_id="terminal", requested="nobody"
    )
    assert (missing.persona.name, missing.refused_request) == ("default", "nobody")


def test_without_routing_file_the_reason_says_so(tmp_path: Path) -> None:
    (tmp_path / "personas").mkdir()
    (tmp_path / "personas" / "default.yaml").write_text(PERSONA.format(name="Helper"))
    resolution = load_prompt_library(tmp_path).resolve(
        platform=Platform.DISCORD, workspace_id="1", channel_id="2"
    )
    assert resolution.reason == (
        "nothing is routed here, so the default persona default answers "
        "(built-in default: there is no routing.yaml)"
    )
