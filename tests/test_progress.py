"""Long work shows its progress: a bar in a terminal, one plain line per step in a log."""

from __future__ import annotations

import io

from brandbot.progress import progress_steps


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_line_per_step_and_a_last_line() -> None:
    log = io.StringIO()
    with progress_steps("Building the demo model", total=2, stream=log) as step:
        step("loading GGUF")
        step("saving safetensors")
    lines = log.getvalue().splitlines()
    assert lines[:2] == [
        "Building the demo model: [1/2] loading GGUF",
        "Building the demo model: [2/2] saving safetensors",
    ]
    assert lines[2].startswith("Building the demo model: done in ") and len(lines) == 3


def test_a_terminal_gets_a_bar_that_ends_full() -> None:
    screen = Terminal()
    with progress_steps("Engine benchmark", total=3, stream=screen) as step:
        for label in ("warm-up", "1 at once", "4 at once"):
            step(label)
    drawn = screen.getvalue()
    assert "Engine benchmark" in drawn and "3/3" in drawn
    assert "[1/3]" not in drawn  # no plain lines where a bar is drawn
