"""README is a new user's first contact: its commands and settings table must match the code."""

from __future__ import annotations

from pathlib import Path

from brandbot.settings import Settings, settings_table

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_readme_gives_the_run_and_test_commands_and_ci_runs_the_test_one() -> None:
    assert "```bash\nscripts/run\n```" in README
    assert "```bash\nscripts/test\n```" in README
    assert "exec scripts/test" in (REPO / ".ci" / "run").read_text()


def test_readme_settings_table_is_generated_from_the_code() -> None:
    # Regenerate with: python -c "from brandbot.settings import settings_table; print(settings_table())"
    assert settings_table() in README


def test_every_setting_has_a_description() -> None:
    assert [name for name, field in Settings.model_fields.items() if not field.description] == []
