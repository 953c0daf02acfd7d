"""The shipped example personas pass their own eval files on the demo model (SmolLM2-135M-Instruct).

What `brandbot up` serves out of the box is what is measured: the shipped prompt folder, the demo model,
one real `brandbot worker` on CPU, and `brandbot prompts eval` asking every case through the queue at the
default bar (every case of every persona passes). A persona edit that breaks its own voice suite fails
here, in CI, not in front of the first admin who runs the eval.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from brandbot.settings import Settings
from tests.conftest import REPO, WorkerProcess
from tests.test_prompt_eval import eval_cli

SHIPPED_PERSONAS = sorted(path.stem for path in (REPO / "prompts" / "evals").glob("*.yaml"))

CASES_AT_ONCE = 1
"""One case at a time, so greedy decoding is deterministic: in a batch, which answers share a step changes
the CPU's sums in their last bits, so a near-tie between two tokens can go the other way: the likely cause
of two failing cases in four runs at 4 at once."""

PICK_UP_WAIT_SECONDS = 300.0
"""Queued cases wait for a free slot; on a crowded CI machine that can take minutes (a hang limit)."""

GENERATION_DEADLINE_SECONDS = 600.0
"""A hang limit for one answer on a crowded 2-core CI machine, not a speed requirement: an answer cut by
the deadline would be judged on half its words."""


@pytest.mark.slow
@pytest.mark.timeout(900)  # a limit for a hung run (a worker and every shipped case on CPU)
def test_every_shipped_persona_passes_its_evals_on_the_demo_model(
    demo_model: Path,
    prompts_dir: Path,
    settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    assert SHIPPED_PERSONAS == ["default", "engineering", "support"]
    demo = settings(
        model_dir=demo_model,
        worker_wait_seconds=PICK_UP_WAIT_SECONDS,
        worker_concurrency=CASES_AT_ONCE,
        generation_deadline_seconds=GENERATION_DEADLINE_SECONDS,
    )
    start_worker(
        model_dir=demo_model,
        worker_concurrency=CASES_AT_ONCE,
        generation_deadline_seconds=GENERATION_DEADLINE_SECONDS,
    )

    result = eval_cli(demo, "--json", "--concurrency", str(CASES_AT_ONCE))

    assert result.stdout.startswith("{"), result.stderr
    report = json.loads(result.stdout)
    failed = [
        (case["persona"], case["case"], case["error"] or [c for c in case["checks"] if not c["passed"]])
        for case in report["cases"]
        if not case["passed"]
    ]
    assert failed == [], json.dumps(report["cases"], indent=1)
    assert sorted(report["pass_rates"]) == SHIPPED_PERSONAS
    assert all(rate["rate"] == 1.0 for rate in report["pass_rates"].values()), report["pass_rates"]
    assert (report["min_pass"], report["ok"], result.returncode) == (1.0, True, 0), result.stderr
    # Every answer ended on its own: none was cut by the length limit or the deadline.
    assert {case["finish_reason"] for case in report["cases"]} == {"stop"}
