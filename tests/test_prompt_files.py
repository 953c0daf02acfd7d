"""An admin's prompt files: the shipped ones load, and every kind of mistake gets a precise, located error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from brandbot.errors import PromptFileError
from brandbot.promptfiles import load_prompt_library
from brandbot.promptfiles.source import MAX_NODES
from brandbot.promptfiles.templates import TEMPLATE_VARIABLES
from tests.conftest import REPO

MINIMAL_PERSONA = "display_name: Helper\nsystem_prompt: You help {{ user }}.\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A minimal valid prompts folder: one `default` persona, no routing.yaml."""
    (tmp_path / "prompts" / "personas").mkdir(parents=True)
    (tmp_path / "prompts" / "personas" / "default.yaml").write_text(MINIMAL_PERSONA)
    return tmp_path / "prompts"


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def problems(folder: Path) -> list[str]:
    with pytest.raises(PromptFileError) as caught:
        load_prompt_library(folder)
    return caught.value.problems


def test_shipped_prompt_files_load_with_both_example_personas_and_default(prompts_dir: Path) -> None:
    library = load_prompt_library(prompts_dir)
    assert set(library.personas) == {"default", "support", "engineering"}
    assert library.default_persona().name == "default"
    support = library.personas["support"]
    assert support.voice_rules and support.examples and support.refusal and support.stop
    # Greedy: the demo model answers the same way every time, so the shipped evals pass on every run.
    assert support.sampling.temperature == 0 and support.banned_phrases


def test_minimal_folder_without_routing_answers_with_default(folder: Path) -> None:
    library = load_prompt_library(folder)
    assert library.default_persona().display_name == "Helper"
    assert library.default_persona().sampling.max_new_tokens == 512  # documented default


def test_out_of_range_sampling_names_file_line_and_field(folder: Path) -> None:
    path = write(
        folder,
        "personas/support.yaml",
        "display_name: Support\nsystem_prompt: Hi\nsampling:\n  top_p: 0.5\n  temperature: 3\n",
    )
    assert problems(folder) == [f"{path}:5: sampling.temperature: must be ≤ 2"]


def test_unknown_key_is_an_error_that_lists_the_allowed_keys(folder: Path) -> None:
    path = write(folder, "personas/default.yaml", MINIMAL_PERSONA + "temprature: 0.2\n")
    [problem] = problems(folder)
    assert problem.startswith(f"{path}:3: temprature: unknown key (expected one of: ")
    assert "sampling" in problem and "display_name" in problem


def test_wrong_types_and_missing_fields_are_all_reported_at_once(folder: Path) -> None:
    path = write(
        folder,
        "personas/default.yaml",
        "display_name: [not, text]\nstop: END\nexamples:\n  - user: hi\n    assitant: hello\n",
    )
    assert problems(folder) == [
        f"{path}:1: display_name: must be text",
        f"{path}:1: system_prompt: required, but missing",
        f"{path}:2: stop: must be a list (lines starting with `- `)",
        f"{path}:4: examples.0.assistant: required, but missing",
        f"{path}:5: examples.0.assitant: unknown key (expected one of: assistant, user)",
    ]


def test_yaml_syntax_error_points_at_its_line(folder: Path) -> None:
    path = write(folder, "personas/default.yaml", "display_name: X\nsystem_prompt: [open\nvoice_rules: []\n")
    [problem] = problems(folder)
    assert problem.startswith(f"{path}:3: YAML syntax error: ")
    assert "started on line 2" in problem


def test_duplicate_key_is_a_syntax_error(folder: Path) -> None:
    path = write(folder, "personas/default.yaml", MINIMAL_PERSONA + "display_name: Again\n")
    [problem] = problems(folder)
    assert problem.startswith(f"{path}:3: YAML syntax error: ") and "duplicate key" in problem


def test_file_that_is_not_utf8_names_the_line_of_the_bad_byte(folder: Path) -> None:
    path = write(folder, "personas/default.yaml", b"display_name: Caf\xe9\nsystem_prompt: x\n")
    write(folder, "personas/other.yaml", b"display_name: ok\nsystem_prompt: ok\ndescription: na\xefve\n")
    found = problems(folder)
    assert found[0] == f"{path}:1: file is not UTF-8 text (byte 0xe9 at offset 17)"
    assert found[1].startswith(f"{folder}/personas/other.yaml:3: file is not UTF-8 text")


def test_empty_persona_file_and_non_mapping_file(folder: Path) -> None:
    empty = write(folder, "personas/empty.yaml", "")
    listed = write(folder, "personas/listed.yaml", "- a\n- b\n")
    assert problems(folder) == [
        f"{empty}:1: file is empty (a persona needs display_name and system_prompt)",
        f"{listed}:1: must be a mapping of `key: value` lines",
    ]


def test_empty_folder_and_missing_folder_say_what_is_missing(tmp_path: Path) -> None:
    assert problems(tmp_path / "nowhere") == [
        f"{tmp_path / 'nowhere'}:1: prompts folder does not exist (set BRANDBOT_PROMPTS_DIR)"
    ]
    (tmp_path / "empty").mkdir()
    [missing_personas] = problems(tmp_path / "empty")
    assert missing_personas.startswith(f"{tmp_path / 'empty' / 'personas'}:1: folder missing")
    (tmp_path / "empty" / "personas").mkdir()
    assert problems(tmp_path / "empty") == [
        f"{tmp_path / 'empty' / 'personas'}:1: no persona files (*.yaml); see prompts/README.md"
    ]


def test_persona_name_comes_from_the_file_name(folder: Path) -> None:
    named = write(folder, "personas/support.yaml", "name: other\n" + MINIMAL_PERSONA)
    upper = write(folder, "personas/Sales Team.yaml", MINIMAL_PERSONA)
    yml = write(folder, "personas/legal.yml", MINIMAL_PERSONA)
    write(folder, "personas/.support.yaml.swp", b"\x00binary editor swap file")
    assert problems(folder) == [
        f"{upper}:1: file name 'Sales Team' is not a persona name: use lowercase letters, digits, - or _",
        f"{yml}:1: persona files end in .yaml; rename it",
        f"{named}:1: name: unknown key: a persona's name is its file name; remove this line",
    ]


def test_unknown_template_variable_is_an_error_at_its_line_not_an_empty_string(folder: Path) -> None:
    path = write(
        folder,
        "personas/default.yaml",
        "display_name: Helper\n"
        "system_prompt: |\n"
        "  You help {{ user }}.\n"
        "  You work for {{ compnay }}.\n"
        "voice_rules:\n"
        "  - Be brief with {{ usr }}\n"
        "refusal: '{% if platform == \"Slack\" %}{{ nope }}{% endif %}'\n",
    )
    known = ", ".join(sorted(TEMPLATE_VARIABLES))
    assert problems(folder) == [
        f"{path}:4: system_prompt: unknown template variable 'compnay' (known: {known})",
        f"{path}:6: voice_rules.0: unknown template variable 'usr' (known: {known})",
        # found even in a branch that the sample values would not render
        f"{path}:7: refusal: unknown template variable 'nope' (known: {known})",
    ]


def test_template_syntax_errors_and_unsafe_constructs_are_rejected(folder: Path) -> None:
    path = write(
        folder,
        "personas/default.yaml",
        "display_name: Helper\n"
        "system_prompt: |\n"
        "  Hello {{ user }\n"
        "voice_rules:\n"
        '  - "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"\n'
        '  - "{{ user.__class__ }}"\n'
        "  - \"{{ user | format('%s') }}\"\n"
        "  - \"{{ 'x' * 1000000000 }}\"\n",
    )
    found = problems(folder)
    assert found[0].startswith(f"{path}:3: system_prompt: template syntax error: ")
    only = "not allowed in prompt text (variables, filters and if/else only)"
    assert found[1:] == [
        f"{path}:5: voice_rules.0: loops ({{% for %}}) {only}",
        f"{path}:6: voice_rules.1: attribute access (x.y) {only}",
        f"{path}:7: voice_rules.2: filter 'format' not allowed in prompt text "
        "(allowed: capitalize, default, lower, title, trim, upper)",
        f"{path}:8: voice_rules.3: arithmetic {only}",
    ]


def test_allowed_template_features_render(folder: Path) -> None:
    write(
        folder,
        "personas/default.yaml",
        "display_name: Helper\n"
        "system_prompt: |\n"
        "  {{ assistant_name | upper }} for {{ company }} on {{ platform }}, {{ today }}\n"
        "  {%- if channel != 'a direct message' %} in #{{ channel | trim }}{% else %} privately{% endif %}.\n"
        "  Literal: {% raw %}{{ not a variable }}{% endraw %}\n",
    )
    assert (
        load_prompt_library(folder).default_persona().system_prompt.startswith("{{ assistant_name | upper }}")
    )


def test_routing_names_a_persona_that_does_not_exist(folder: Path) -> None:
    path = write(
        folder,
        "routing.yaml",
        "default_persona: default\n"
        "user_choice: [default, sales]\n"
        "slack:\n"
        "  channels:\n"
        "    C1: ghost\n"
        "discord:\n"
        "  guilds:\n"
        "    112233445566778899:\n"
        "      persona: phantom\n",
    )
    assert problems(folder) == [
        f"{path}:2: user_choice.1: no persona named 'sales' (personas: default)",
        f"{path}:5: slack.channels.C1.persona: no persona named 'ghost' (personas: default)",
        f"{path}:9: discord.guilds.112233445566778899.persona: no persona named 'phantom' "
        "(personas: default)",
    ]


def test_missing_default_persona_without_routing_file(folder: Path) -> None:
    (folder / "personas" / "default.yaml").rename(folder / "personas" / "support.yaml")
    assert problems(folder) == [
        f"{folder / 'personas'}:1: there is no routing.yaml, so personas/default.yaml must exist "
        "(personas: support)"
    ]


def test_persona_model_must_be_one_a_worker_config_knows(folder: Path) -> None:
    write(folder, "routing.yaml", "models: [default, big]\n")
    write(folder, "personas/big.yaml", MINIMAL_PERSONA + "model: big\n")
    path = write(folder, "personas/huge.yaml", MINIMAL_PERSONA + "model: huge\n")
    assert problems(folder) == [
        f"{path}:3: model: no model named 'huge' in routing.yaml models (default, big)"
    ]


def test_lora_folder_must_exist_relative_to_the_prompts_folder(folder: Path) -> None:
    path = write(folder, "personas/default.yaml", MINIMAL_PERSONA + "lora: loras/support-v1\n")
    assert problems(folder) == [f"{path}:3: lora: LoRA folder {folder / 'loras/support-v1'} does not exist"]
    (folder / "loras" / "support-v1").mkdir(parents=True)
    library = load_prompt_library(folder)
    assert library.lora_path(library.default_persona()) == folder / "loras" / "support-v1"


def test_routing_errors_do_not_hide_reference_errors_elsewhere_in_it(folder: Path) -> None:
    path = write(
        folder,
        "routing.yaml",
        "default_persona: Not A Name\nslack:\n  chanels: {}\n  channels:\n    C1: ghost\n",
    )
    found = problems(folder)
    assert found[0].startswith(f"{path}:1: default_persona: 'Not A Name' is not allowed here")
    assert found[1:] == [
        f"{path}:3: slack.chanels: unknown key"
        " (expected one of: access, channels, thread_follow_ups, user_choice, workspaces)",
        f"{path}:5: slack.channels.C1.persona: no persona named 'ghost' (personas: default)",
    ]


def test_yaml_tags_and_alias_bombs_are_refused_without_hanging(folder: Path) -> None:
    tagged = write(
        folder, "personas/tagged.yaml", "display_name: !!python/object:os.system x\nsystem_prompt: x\n"
    )
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = write(folder, "personas/bomb.yaml", "\n".join(levels) + "\ndisplay_name: x\nsystem_prompt: x\n")
    assert problems(folder) == [
        f"{bomb}:1: file has more than {MAX_NODES:,} values (after expanding aliases)",
        f"{tagged}:1: YAML tags such as tag:yaml.org,2002:python/object:os.system are not allowed",
    ]


def test_unquoted_discord_ids_are_text(folder: Path) -> None:
    write(folder, "personas/support.yaml", MINIMAL_PERSONA)
    write(
        folder,
        "routing.yaml",
        "discord:\n  guilds:\n    112233445566778899:\n      channels:\n        42: support\n",
    )
    routing = load_prompt_library(folder).routing
    assert routing.discord.guilds["112233445566778899"].channels["42"].persona == "support"


def test_template_variables_match_what_the_worker_provides(prompts_dir: Path) -> None:
    from brandbot.contract import GenerationRequest, Platform, ReplyTarget, Role, Turn, UserRef
    from worker.prompt_builder import prompt_variables

    library = load_prompt_library(prompts_dir)
    request = GenerationRequest(
        target=ReplyTarget(platform=Platform.SLACK, channel_id="C1"),
        user=UserRef(id="U1"),
        persona="default",
        turns=[Turn(role=Role.USER, content="hi")],
    )
    assert set(prompt_variables(request, library.default_persona(), company="Acme")) == set(
        TEMPLATE_VARIABLES
    )


def test_readme_example_routing_is_valid(tmp_path: Path) -> None:
    """The routing example in prompts/README.md is a real, loadable file."""
    readme = (REPO / "prompts" / "README.md").read_text()
    example = readme.split("## Routing: `routing.yaml`")[1].split("```yaml\n")[1].split("```")[0]
    folder = Path(shutil.copytree(REPO / "prompts", tmp_path / "prompts"))
    (folder / "routing.yaml").write_text(example)
    assert load_prompt_library(folder).routing.slack.channels["C0ANNOUNCE"].persona == "support"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("display_name: " + "[" * 40 + "]" * 40 + "\nsystem_prompt: x\n", "nested more than 32 levels"),
        ("display_name: " + "[" * 400 + "]" * 400 + "\nsystem_prompt: x\n", "nested more than 32 levels"),
        ("display_name: X\x00\nsystem_prompt: x\n", "YAML syntax error: unacceptable character #x0000"),
        ("? [a, b]\n: x\ndisplay_name: X\nsystem_prompt: x\n", "Keys should be strings"),
        ("display_name: X\nsystem_prompt: x\n---\ndisplay_name: Y\n", "expected a single document"),
        ("display_name: 2001-12-14\nsystem_prompt: x\n", "display_name: must be text"),
        ("display_name: X\nsystem_prompt: x\nsampling:\n  max_new_tokens: .inf\n", "max_new_tokens"),
    ],
)
def test_hostile_yaml_is_a_problem_never_a_crash(folder: Path, text: str, problem: str) -> None:
    write(folder, "personas/default.yaml", text)
    [found] = problems(folder)
    assert found.startswith(f"{folder}/personas/default.yaml:") and problem in found


def _inline_comments(node: object) -> list[str]:
    """End-of-line comments ruamel attached to mapping values or list items (text YAML silently cut off)."""
    found: list[str] = []
    items = getattr(getattr(node, "ca", None), "items", {})
    for tokens in items.values():
        found += [t.value.strip() for t in tokens if t is not None and "#" in getattr(t, "value", "")]
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        found += _inline_comments(child)
    return found


@pytest.mark.parametrize("persona_file", sorted((REPO / "prompts" / "personas").glob("*.yaml")), ids=str)
def test_shipped_personas_lose_no_text_to_an_unquoted_hash(persona_file: Path) -> None:
    """`ask in #eng-help` unquoted is a YAML comment: the rest of the refusal would vanish."""
    from ruamel.yaml import YAML

    document = YAML().load(persona_file.read_text())
    assert _inline_comments(document) == []
