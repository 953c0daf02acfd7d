"""Hot reload in a running process: edits apply without a restart, bad edits never replace good ones."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from brandbot.errors import PromptFileError
from brandbot.promptfiles import LivePromptLibrary
from tests.conftest import set_sampling

WAIT_SECONDS = 20.0  # generous: a loaded CI machine must not fail the test; nothing asserts speed


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.05)


def edit(path: Path, old: str, new: str) -> None:
    """Save as editors do: write a new file and rename it over the old one."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text.replace(old, new))
    temporary.replace(path)


@pytest.fixture
def live(prompts_dir: Path) -> Iterator[LivePromptLibrary]:
    library = LivePromptLibrary(prompts_dir)
    yield library
    library.stop_watching()


def default_yaml(live: LivePromptLibrary) -> Path:
    return live.folder / "personas" / "default.yaml"


def test_prompt_edit_applies_on_reload_and_bumps_the_version(live: LivePromptLibrary) -> None:
    edit(default_yaml(live), "display_name: Brandbot", "display_name: Brandbot Two")
    assert live.reload() == []
    assert live.current().default_persona().display_name == "Brandbot Two"
    assert (live.version, live.last_problems) == (2, [])


def test_bad_edit_is_rejected_and_the_last_good_configuration_stays(live: LivePromptLibrary) -> None:
    good = live.current()
    set_sampling(default_yaml(live), temperature=7)
    line = default_yaml(live).read_text().splitlines().index("  temperature: 7") + 1
    problems = live.reload()
    assert problems == [f"{default_yaml(live)}:{line}: sampling.temperature: must be ≤ 2"]
    assert live.current() is good and live.version == 1
    assert live.last_problems == problems


def test_saving_unchanged_files_is_not_a_new_version(live: LivePromptLibrary) -> None:
    edit(default_yaml(live), "display_name", "display_name")
    assert live.reload() == [] and live.version == 1


def test_request_keeps_its_snapshot_through_a_reload(live: LivePromptLibrary) -> None:
    in_flight = live.current()  # what a request took when it started
    shipped = in_flight.default_persona().sampling.max_new_tokens
    set_sampling(default_yaml(live), max_new_tokens=64)
    edit(live.folder / "routing.yaml", "default_persona: default", "default_persona: support")
    assert live.reload() == []
    assert in_flight.default_persona().name == "default"
    assert in_flight.default_persona().sampling.max_new_tokens == shipped != 64
    assert live.current().default_persona().name == "support"
    assert live.current().persona("default").sampling.max_new_tokens == 64  # type: ignore[union-attr]


def test_bad_folder_at_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PromptFileError) as caught:
        LivePromptLibrary(tmp_path)
    assert caught.value.problems == [
        f"{tmp_path / 'personas'}:1: folder missing: add one YAML file per persona (see prompts/README.md)"
    ]


def test_watcher_applies_an_edit_without_any_call(live: LivePromptLibrary) -> None:
    live.start_watching()
    edit(default_yaml(live), "display_name: Brandbot", "display_name: Watched")
    wait_until(lambda: live.current().default_persona().display_name == "Watched", "the edit to go live")
    assert live.version == 2
    live.stop_watching()
    assert not live.watching


def test_watcher_rejects_a_bad_edit_then_takes_the_fix(live: LivePromptLibrary) -> None:
    live.start_watching()
    good = live.current()
    (live.folder / "personas" / "new.yaml").write_text("display_name: New\nsystem_prompt: Hi {{ usr }}\n")
    wait_until(lambda: bool(live.last_problems), "the bad file to be rejected")
    assert "unknown template variable 'usr'" in live.last_problems[0]
    assert live.current() is good
    (live.folder / "personas" / "new.yaml").write_text("display_name: New\nsystem_prompt: Hi {{ user }}\n")
    wait_until(lambda: live.current().persona("new") is not None, "the fixed file to go live")
    assert live.last_problems == []


def test_watcher_follows_a_folder_that_is_deleted_and_recreated(live: LivePromptLibrary) -> None:
    live.start_watching()
    backup = live.folder.with_name("backup")
    shutil.copytree(live.folder, backup)
    shutil.rmtree(live.folder)
    wait_until(lambda: bool(live.last_problems), "the missing folder to be noticed")
    assert live.current().default_persona().display_name == "Brandbot"  # still the last good one
    edit(backup / "personas" / "default.yaml", "display_name: Brandbot", "display_name: Restored")
    backup.rename(live.folder)
    wait_until(lambda: live.current().default_persona().display_name == "Restored", "the new folder to load")
    edit(default_yaml(live), "display_name: Restored", "display_name: Watched again")
    wait_until(
        lambda: live.current().default_persona().display_name == "Watched again", "edits to be seen again"
    )
