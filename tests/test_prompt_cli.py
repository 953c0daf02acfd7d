"""`brandbot prompts check | schema | show`, run as an admin runs them: a real process, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from brandbot.promptfiles.schema import schema_texts
from tests.conftest import REPO

BROKEN_SUPPORT = """\
display_name: Acme Support
model: default
system_prompt: |
  You are {{ assistant_name }} for {{ compnay }}.
sampling:
  temperature: 3
  max_new_tokens: 400
stop: "END"
colour: blue
"""


def brandbot(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a clean environment (no developer settings or .env), from `cwd`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRANDBOT_")}
    return subprocess.run(
        [sys.executable, "-m", "brandbot.cli", *args],
        env={**clean, "PYTHONPATH": str(REPO), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_passes_on_the_shipped_files(prompts_dir: Path) -> None:
    result = brandbot("prompts", "check", cwd=prompts_dir.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == (
        "prompts: OK — 3 persona(s) (default, engineering, support); default persona: default; "
        "3 eval file(s)\n"
    )


def test_check_prints_every_problem_with_file_line_field_and_fails(prompts_dir: Path) -> None:
    (prompts_dir / "personas" / "support.yaml").write_text(BROKEN_SUPPORT)
    (prompts_dir / "routing.yaml").write_text(
        "default_persona: default\nslack:\n  channels:\n    C1: ghost\n"
    )
    result = brandbot("prompts", "check", cwd=prompts_dir.parent)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "prompts/personas/support.yaml:4: system_prompt: unknown template variable 'compnay' "
        "(known: assistant_name, channel, company, platform, today, user)",
        "prompts/personas/support.yaml:6: sampling.temperature: must be ≤ 2",
        "prompts/personas/support.yaml:8: stop: must be a list (lines starting with `- `)",
        "prompts/personas/support.yaml:9: colour: unknown key (expected one of: banned_phrases, "
        "confidential, description, display_name, examples, lora, model, refusal, sampling, stop, "
        "system_prompt, voice_rules)",
        "prompts/routing.yaml:4: slack.channels.C1.persona: no persona named 'ghost' "
        "(personas: default, engineering, support)",
    ]
    assert result.stderr == "5 problems in prompts\n"


def test_check_reads_the_folder_from_the_environment(tmp_path: Path) -> None:
    result = brandbot("prompts", "check", cwd=tmp_path, BRANDBOT_PROMPTS_DIR=str(tmp_path / "absent"))
    assert result.returncode == 1
    assert (
        result.stdout
        == f"{tmp_path / 'absent'}:1: prompts folder does not exist (set BRANDBOT_PROMPTS_DIR)\n"
    )
    assert "Traceback" not in result.stderr


def test_schema_command_writes_the_schemas_the_repository_ships(tmp_path: Path) -> None:
    result = brandbot("prompts", "schema", "--output", str(tmp_path / "schema"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name, text in schema_texts().items():
        written = (tmp_path / "schema" / name).read_text()
        assert written == text
        # the committed copy that the YAML files point editors at is up to date
        assert (REPO / "prompts" / "schema" / name).read_text() == written, "run: brandbot prompts schema"


def test_persona_schema_describes_every_key_and_forbids_others() -> None:
    schema = json.loads(schema_texts()["persona.schema.json"])
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"display_name", "system_prompt"}
    assert "name" not in schema["properties"]  # the file name is the name
    for key, spec in schema["properties"].items():
        assert spec.get("description"), f"{key} has no description for editors"
    sampling = schema["$defs"]["Sampling"]["properties"]["temperature"]
    assert (sampling["minimum"], sampling["maximum"]) == (0, 2)


def test_every_shipped_yaml_file_points_editors_at_its_schema() -> None:
    for path in (REPO / "prompts").rglob("*.yaml"):
        first_line = path.read_text().splitlines()[0]
        assert first_line.startswith("# yaml-language-server: $schema="), path
        target = (path.parent / first_line.split("$schema=")[1]).resolve()
        assert target.exists(), f"{path} points at a missing schema"


def test_show_prints_the_prompt_in_the_models_chat_template_with_its_token_count(
    prompts_dir: Path, tiny_model: Path
) -> None:
    from transformers import AutoTokenizer

    result = brandbot(
        "prompts", "show", "support", "--platform", "slack", "--channel", "C123",
        "--channel-name", "billing", "--user", "Dana", "--question", "Where is my invoice?",
        cwd=prompts_dir.parent, BRANDBOT_MODEL_DIR=str(tiny_model), BRANDBOT_COMPANY_NAME="Acme Cloud",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "persona:  support (Acme Support), model default"
    start = lines.index(next(line for line in lines if " prompt " in line))
    end = next(i for i, line in enumerate(lines) if " tokens · context " in line)
    prompt = "\n".join(lines[start + 1 : end])
    assert prompt.startswith(
        "<|begin_of_text|><|im_start|>system\nYou are Acme Support, the support assistant of Acme Cloud"
    )
    assert "You are helping Dana on Slack in #billing." in prompt
    assert "- Greet Dana by name in the first answer" in prompt  # voice rules rendered
    assert "<|im_start|>user\nI can't log in" in prompt  # few-shot examples
    assert prompt.endswith("<|im_start|>user\nWhere is my invoice?<|im_end|>\n<|im_start|>assistant")
    tokens = len(AutoTokenizer.from_pretrained(tiny_model).encode(prompt + "\n", add_special_tokens=False))
    assert lines[end].split(" tokens")[0].endswith(f" {tokens}")
    assert "answer up to 160 tokens" in lines[end]


def test_show_without_a_persona_says_which_one_routing_picks_and_why(
    prompts_dir: Path, tiny_model: Path
) -> None:
    result = brandbot(
        "prompts", "show", "--platform", "slack", "--workspace", "T0ACMESTAFF", "--channel", "C0CUSTOMERS",
        cwd=prompts_dir.parent, BRANDBOT_MODEL_DIR=str(tiny_model),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == [
        "persona:  support (Acme Support), model default",
        "routing:  channel C0CUSTOMERS is routed to support (routing.yaml:19)",
    ]


def test_show_raw_prints_only_the_prompt(prompts_dir: Path, tiny_model: Path) -> None:
    result = brandbot(
        "prompts", "show", "default", "--raw", cwd=prompts_dir.parent, BRANDBOT_MODEL_DIR=str(tiny_model)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<|begin_of_text|><|im_start|>system\nYou are Brandbot")
    assert result.stdout.endswith("<|im_start|>assistant\n")


def test_show_needs_a_model_folder_and_an_existing_persona(prompts_dir: Path, tiny_model: Path) -> None:
    no_model = brandbot("prompts", "show", "default", cwd=prompts_dir.parent)
    assert no_model.returncode == 1
    assert "set BRANDBOT_MODEL_DIR or --model-dir" in no_model.stderr and "Traceback" not in no_model.stderr
    unknown = brandbot("prompts", "show", "sales", cwd=prompts_dir.parent, BRANDBOT_MODEL_DIR=str(tiny_model))
    assert unknown.returncode == 1
    assert unknown.stderr == "brandbot: no persona named 'sales' (personas: default, engineering, support)\n"
