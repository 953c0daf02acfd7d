"""The soak, smaller: every fault against real processes (Redis with append-only persistence, the Slack
and Discord emulators, two workers on the tiny model, one process of each front-end), each question
counted in the emulators' message stores. `brandbot soak` runs the full size."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from brandbot.soak.faults import FAULTS
from brandbot.soak.load import Platform, Question
from brandbot.soak.scenario import SoakPlan, no_bar, run_soak, write_unsettled
from brandbot.soak.tally import render
from tests.conftest import REPO

QUESTIONS_PER_FAULT = 20
"""About 150 questions over the faults: enough for every fault to hit answers mid-stream."""


@pytest.mark.soak
@pytest.mark.slow
@pytest.mark.timeout(600)  # a hang limit: the scenarios wait for recoveries on a shared CPU
async def test_every_question_gets_exactly_one_answer_or_one_error_through_every_fault(
    tiny_model: Path, tmp_path: Path
) -> None:
    faults = tuple(name for name in FAULTS if name != "none")
    plan = SoakPlan(
        run_dir=tmp_path / "soak",
        model_dir=tiny_model,
        questions=QUESTIONS_PER_FAULT,
        users=10,
        discord_share=0.3,
        duration_seconds=240,
        faults=faults,
    )

    tallies = await run_soak(plan, bar=no_bar)

    table = render(tallies)
    assert [t.fault for t in tallies] == list(faults), table
    assert all(t.lost == 0 and t.duplicated == 0 for t in tallies), table
    assert all(t.recovered for t in tallies), table
    assert all(t.answered + t.errors_shown == t.questions for t in tallies), table
    poison = next(t for t in tallies if t.fault == "poison")
    assert poison.errors_shown == 1 and poison.answered == QUESTIONS_PER_FAULT - 1, table


def test_a_failing_fault_lists_what_its_unsettled_questions_show(tmp_path: Path) -> None:
    def asked(
        index: int, *, answers: int = 0, errors: int = 0, writing: int = 0, expect_error: bool = False
    ) -> Question:
        seen = Question(index, Platform.SLACK, f"C{index}/1.0", sent_at=0.0, expect_error=expect_error)
        seen.answers, seen.errors, seen.writing = answers, errors, writing
        return seen

    questions = [
        asked(0, answers=1),
        asked(1, answers=1, writing=1),  # a second message still writing
        asked(2, answers=2),
        asked(3),  # nothing finished
        asked(4, errors=1, expect_error=True),  # the poison question's one error
        asked(5, errors=1),
    ]
    path = tmp_path / "unsettled-front-end-kill.jsonl"

    write_unsettled(path, questions)

    listed = [json.loads(line) for line in path.read_text().splitlines()]
    assert [entry["index"] for entry in listed] == [1, 2, 3, 5]
    assert listed[0] | {"sent_at": 0.0} == {
        "index": 1,
        "platform": "slack",
        "key": "C1/1.0",
        "sent_at": 0.0,
        "expect_error": False,
        "first_text_at": None,
        "settled_at": None,
        "answers": 1,
        "errors": 0,
        "writing": 1,
    }


@pytest.mark.timeout(300)  # a limit for a hung run, not a speed requirement
def test_a_soak_stopped_by_sigterm_stops_every_process_it_started(tmp_path: Path) -> None:
    run_dir = tmp_path / "soak"
    small = ["--questions", "4", "--users", "2", "--faults", "none", "--run-dir", str(run_dir)]
    soak = subprocess.Popen(
        [sys.executable, "-m", "brandbot.cli", "soak", *small],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started: list[psutil.Process] = []
    give_up = time.monotonic() + 240
    while time.monotonic() < give_up and soak.poll() is None:
        started = psutil.Process(soak.pid).children(recursive=True)
        if len(started) >= 5:  # Redis, two workers, the Slack and Discord front-ends
            break
        time.sleep(0.5)
    assert len(started) >= 5, [process.cmdline() for process in started]

    soak.send_signal(signal.SIGTERM)
    output, _ = soak.communicate(timeout=120)

    assert soak.returncode == 1, output
    assert "stopped after 0 of 1 faults; its processes are stopped" in output
    assert "Traceback" not in output
    _, alive = psutil.wait_procs(started, timeout=10)
    assert alive == [], [process.cmdline() for process in alive]
