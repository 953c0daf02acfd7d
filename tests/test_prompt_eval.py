"""`brandbot prompts eval`: voice regression tests asked through the real queue of real workers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from brandbot.evals.checks import judge
from brandbot.evals.workers import worker_environment
from brandbot.promptfiles.evals import Checks
from brandbot.settings import Settings
from tests.conftest import REPO, WorkerProcess, worker_env

TINY_PERSONA = """\
display_name: Tiny
system_prompt: You answer questions.
sampling:
  temperature: 0
  max_new_tokens: 24
refusal: Zqx will not say this.
"""

QUESTION = "How do I reset my password?"

# Cases whose results do not depend on what the random tiny model says.
TINY_EVALS = f"""\
cases:
  - name: always passes
    question: {QUESTION}
    checks:
      exclude: ["zqxv-never"]
      max_words: 1000
  - name: always fails
    question: Hello there
    checks:
      include: ["zqxv-never"]
      refuses: true
"""


def eval_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "prompts", "eval", *args],
        env=worker_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def add_tiny_persona(folder: Path, evals: str = TINY_EVALS, persona: str = TINY_PERSONA) -> None:
    (folder / "personas" / "tiny.yaml").write_text(persona, encoding="utf-8")
    (folder / "evals").mkdir(exist_ok=True)
    (folder / "evals" / "tiny.yaml").write_text(evals, encoding="utf-8")


def test_eval_file_with_a_typo_gets_file_and_line(
    settings: Callable[..., Settings], prompts_dir: Path
) -> None:
    support = prompts_dir / "evals" / "support.yaml"
    support.write_text(
        "cases:\n"
        "  - name: outage\n"
        "    question: Is it down?\n"
        "    chekcs:\n"
        "      include: [status]\n"
        "  - name: outage\n"
        "    question: Again?\n"
        "    checks:\n"
        "      max_words: 0\n"
        "      include_regex: ['(unclosed']\n",
        encoding="utf-8",
    )
    result = eval_cli(settings(), "support")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"{support}:2: cases.0.checks: required, but missing",
        f"{support}:4: cases.0.chekcs: unknown key (expected one of: channel, checks, history, name, "
        "platform, question, user)",
        f"{support}:9: cases.1.checks.max_words: must be ≥ 1",
        f"{support}:10: cases.1.checks.include_regex.0: not a valid regular expression "
        "(missing ), unterminated subpattern at position 0)",
    ]
    assert "Traceback" not in result.stderr
    # `prompts check` reports the same problems.
    check = subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "prompts", "check", "--prompts-dir", str(prompts_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert check.returncode == 1
    assert f"{support}:4: cases.0.chekcs: unknown key" in check.stdout


def test_refusal_check_needs_a_refusal_and_cases_need_unique_names(
    settings: Callable[..., Settings], prompts_dir: Path
) -> None:
    add_tiny_persona(
        prompts_dir,
        evals="cases:\n"
        "  - {name: a, question: q, checks: {max_words: 5}}\n"
        "  - {name: a, question: q, checks: {refuses: true}}\n",
        persona=TINY_PERSONA.replace("refusal: Zqx will not say this.\n", ""),
    )
    result = eval_cli(settings(), "tiny")
    evals = prompts_dir / "evals" / "tiny.yaml"
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f"{evals}:3: cases.1.checks.refuses: persona 'tiny' has no `refusal` text to check for",
        f"{evals}:3: cases.1.name: 'a' is used by an earlier case",
    ]


def test_no_worker_is_one_line_and_exit_3_not_a_wait(
    settings: Callable[..., Settings], prompts_dir: Path
) -> None:
    add_tiny_persona(prompts_dir)
    result = eval_cli(settings(), "tiny")
    assert result.returncode == 3
    assert result.stderr.strip() == (
        "brandbot: no worker serves model 'default': start `brandbot worker` with BRANDBOT_MODEL_NAME=default"
    )


@pytest.mark.slow
@pytest.mark.timeout(600)  # a hang limit: three eval runs, two with workers of their own, on 2 cores
def test_eval_through_a_real_worker_then_compare_two_prompt_folders(
    settings: Callable[..., Settings],
    prompts_dir: Path,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    add_tiny_persona(prompts_dir)
    start_worker()
    result = eval_cli(settings(), "tiny", "--json")
    assert result.returncode == 1, result.stderr  # 1 of 2 cases passes: below the default --min-pass 1.0
    report = json.loads(result.stdout)
    assert report["pass_rates"] == {"tiny": {"passed": 1, "cases": 2, "rate": 0.5}}
    assert (report["min_pass"], report["ok"]) == (1.0, False)
    passes, fails = report["cases"]
    assert (passes["case"], passes["passed"]) == ("always passes", True)
    assert passes["finish_reason"] in ("stop", "length")
    assert [c["check"] for c in passes["checks"]] == ["exclude 'zqxv-never'", "max 1000 words"]
    assert [(c["check"], c["passed"]) for c in fails["checks"]] == [
        ("include 'zqxv-never'", False),
        ("refuses", False),
    ]
    assert "below --min-pass 100%" in result.stderr

    tables = eval_cli(settings(), "tiny", "--min-pass", "0.5")
    assert tables.returncode == 0, tables.stderr
    assert "always fails" in tables.stdout and "tiny: 1/2 (50%) of cases passed" in tables.stdout

    # Before/after a prompt edit: folder B bans a phrase the model says in A (greedy, same seed).
    found = re.search(r"[A-Za-z]{2,} [A-Za-z]{2,}", passes["answer"])
    assert found is not None, "the tiny model's answer changed shape; pick another question"
    phrase = found.group()
    before, after = tmp_path / "before", tmp_path / "after"
    evals = TINY_EVALS + f"  - name: phrase is gone\n    question: {QUESTION}\n    checks:\n"
    evals += f"      exclude: [{json.dumps(phrase)}]\n"
    for folder, persona in [
        (before, TINY_PERSONA),
        (after, TINY_PERSONA + f"banned_phrases: [{json.dumps(phrase.upper())}]\n"),
    ]:
        shutil.copytree(prompts_dir, folder)
        add_tiny_persona(folder, evals=evals, persona=persona)
    # The cases come from --prompts-dir (default BRANDBOT_PROMPTS_DIR); each folder gets a worker of its own.
    compare = ("--compare", str(before), str(after), "--prompts-dir", str(before))
    compared = eval_cli(settings(), "tiny", *compare, "--json", "--min-pass", "0")
    assert compared.returncode == 0, compared.stderr
    document = json.loads(compared.stdout)
    assert document["changed"] == [
        {
            "persona": "tiny",
            "case": "always passes",
            "check": f"banned {phrase.upper()!r}",
            "a": None,
            "b": True,
        },
        {
            "persona": "tiny",
            "case": "always fails",
            "check": f"banned {phrase.upper()!r}",
            "a": None,
            "b": True,
        },
        {"persona": "tiny", "case": "phrase is gone", "check": f"exclude {phrase!r}", "a": False, "b": True},
        {
            "persona": "tiny",
            "case": "phrase is gone",
            "check": f"banned {phrase.upper()!r}",
            "a": None,
            "b": True,
        },
    ]
    assert document["a"]["cases"][0]["answer"] == passes["answer"]  # same seed, same answer
    assert phrase.lower() not in document["b"]["cases"][2]["answer"].lower()
    assert document["b"]["pass_rates"]["tiny"] == {"passed": 2, "cases": 3, "rate": 2 / 3}


def test_the_evals_own_worker_gets_these_settings_and_code_but_no_metrics_port(
    settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = worker_environment(settings(metrics_port=9464, model_dir=Path("models/tiny"), model_name="big"))
    assert "BRANDBOT_METRICS_PORT" not in env  # a worker on this host may already serve it
    assert env["BRANDBOT_MODEL_DIR"] == str(tmp_path / "models" / "tiny")  # it starts in another folder
    assert env["BRANDBOT_MODEL_NAME"] == "big"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)  # this checkout's code, not an installed copy


def test_refusal_said_in_full_passes_even_when_the_sentence_goes_on() -> None:
    refusal = "That's something I can't help with here: please open a ticket at https://acme.example/support."
    continued = refusal.removesuffix(".") + " and we'll look right away."
    cut_short = "That's something I can't help with here: please open a ticket."

    def refuses(answer: str) -> bool:
        return all(check.passed for check in judge(answer, Checks(refuses=True), banned=(), refusal=refusal))

    assert refuses(refusal) and refuses(continued.upper())
    assert not refuses(cut_short)
