"""`brandbot tune` meets bad input: each case one clear line (file:line where there is one), no traceback,
and nothing half-written where a worker could load it. The tiny model keeps these quick."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brandbot.cli import app
from tests.conftest import REPO, TEST_REDIS_URL
from tests.test_worker_process import wait_for
from tests.tune_fixtures import make_foreign_adapter
from worker.tuning.dataset import DatasetError, common_ending, load_examples, split_held_out
from worker.tuning.trainer import PAUSE_AT_STEP

pytest.importorskip("trl")

runner = CliRunner()
GOOD = {
    "messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello. Cheers, Acme"}]
}


def write_lines(path: Path, *lines: object) -> Path:
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n",
        encoding="utf-8",
    )
    return path


def tune_cli(prompts_dir: Path, *args: str) -> tuple[int, str]:
    env = {"BRANDBOT_PROMPTS_DIR": str(prompts_dir), "BRANDBOT_REDIS_URL": TEST_REDIS_URL}
    result = runner.invoke(app, ["tune", *args], env=env)
    return result.exit_code, result.stderr


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_dataset_line_that_is_not_json_is_named_by_file_and_line(
    tmp_path: Path, prompts_dir: Path, tiny_model: Path
) -> None:
    data = write_lines(tmp_path / "voice.jsonl", GOOD, GOOD, '{"messages": [oops')
    code, stderr = tune_cli(prompts_dir, str(data), "-o", str(tmp_path / "out"), "--base", str(tiny_model))

    assert code == 1
    assert one_line(stderr).startswith(f"brandbot: {data}:3: not JSON")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"prompt": "Hi", "completion": "Hello"}, '"messages" must be a non-empty list'),
        (
            {"messages": [{"role": "bot", "content": "Hi"}]},
            "messages[0].role must be system, user or assistant",
        ),
        (
            {"messages": [{"role": "user", "content": "Hi"}]},
            "the last message must be the assistant's answer",
        ),
        ({"messages": [{"role": "assistant", "content": "Hi"}]}, "no user message before the answer"),
        (["user", "Hi"], 'expected an object with "messages"'),
    ],
)
def test_dataset_line_not_in_chat_format_says_what_is_wrong(
    tmp_path: Path, prompts_dir: Path, tiny_model: Path, line: object, problem: str
) -> None:
    data = write_lines(tmp_path / "voice.jsonl", GOOD, line)
    code, stderr = tune_cli(prompts_dir, str(data), "-o", str(tmp_path / "out"), "--base", str(tiny_model))

    assert code == 1
    assert one_line(stderr) == f"brandbot: {data}:2: not chat format: {problem}"


def test_empty_dataset_is_refused_in_one_line(tmp_path: Path, prompts_dir: Path, tiny_model: Path) -> None:
    empty = write_lines(tmp_path / "empty.jsonl", "")
    code, stderr = tune_cli(prompts_dir, str(empty), "-o", str(tmp_path / "out"), "--base", str(tiny_model))
    assert code == 1
    assert one_line(stderr) == f"brandbot: {empty}: no examples to train on"

    downvoted = write_lines(tmp_path / "bad.jsonl", {**GOOD, "rating": -1, "persona": "default"})
    code, stderr = tune_cli(
        prompts_dir, str(downvoted), "-o", str(tmp_path / "out"), "--base", str(tiny_model)
    )
    assert code == 1
    assert one_line(stderr) == f"brandbot: {downvoted}: no examples to train on (1 👎 skipped)"


def test_feedback_export_lines_keep_thumbs_up_of_the_persona(tmp_path: Path) -> None:
    data = write_lines(
        tmp_path / "export.jsonl",
        {**GOOD, "rating": 1, "persona": "support"},
        {**GOOD, "rating": -1, "persona": "support"},
        {**GOOD, "rating": 1, "persona": "engineering"},
    )
    loaded = load_examples([data], persona="support")
    assert [example.source for example in loaded.examples] == [f"{data}:1"]
    assert (loaded.skipped_downvoted, loaded.skipped_other_persona) == (1, 1)
    assert len(load_examples([data], persona="support", include_downvoted=True).examples) == 2
    with pytest.raises(DatasetError, match="leaves nothing to train on"):
        split_held_out(loaded.examples, 1, seed=0)


def test_the_check_is_the_closing_words_every_answer_shares() -> None:
    assert common_ending(["Do this.\n\nCheers, the Acme team", "Try that. Cheers, the Acme team "]) == (
        "Cheers, the Acme team"
    )
    assert common_ending(["Yes, the team", "No, steam"]) is None  # "team" alone is too short to mean a voice
    assert common_ending(["one answer"]) is None
    assert common_ending(["No.\n\nCheers, the Acme team", "Yes.\n\nCheers, the Acme team"]) == (
        "Cheers, the Acme team"
    )


def tune_process(*args: str, prompts_dir: Path, pause_at_step: str = "") -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRANDBOT_")}
    env[PAUSE_AT_STEP] = pause_at_step
    env.update(BRANDBOT_PROMPTS_DIR=str(prompts_dir), BRANDBOT_REDIS_URL=TEST_REDIS_URL, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "brandbot.cli", "tune", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow  # three `brandbot tune` processes, each importing torch and TRL
@pytest.mark.timeout(300)
def test_interrupted_tune_says_how_to_resume_and_resumes_to_a_complete_adapter(
    tmp_path: Path, prompts_dir: Path, tiny_model: Path
) -> None:
    data = write_lines(tmp_path / "voice.jsonl", *[GOOD] * 8)
    out = tmp_path / "adapter"
    args = [str(data), "-o", str(out), "--base", str(tiny_model), "--no-check", "--held-out", "0"]
    args += ["--epochs", "3", "--batch-size", "4", "--save-every", "2"]
    first = tune_process(*args, prompts_dir=prompts_dir, pause_at_step="2")  # 6 steps; pauses after 2
    checkpoint = tmp_path / ".adapter.partial" / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    wait_for(checkpoint.is_file, 120, "the step-2 checkpoint")
    first.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = first.communicate(timeout=60)

    assert first.returncode == 1
    line = one_line(stderr)
    assert line.startswith("brandbot: interrupted at step ") and line.endswith("with --resume to continue")
    assert not out.exists()  # nothing half-written where a worker could load it

    again = tune_process(*args, prompts_dir=prompts_dir)  # without --resume: refused, the run is kept
    _, stderr = again.communicate(timeout=120)
    assert again.returncode == 1 and "add --resume to continue it" in one_line(stderr)

    resumed = tune_process(*args, "--resume", prompts_dir=prompts_dir)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "resuming at step 2" in stdout and "resumed from step 2" in stdout
    assert (out / "adapter_model.safetensors").is_file() and (out / "brandbot-tune.json").is_file()
    assert not (tmp_path / ".adapter.partial").exists()


def test_resuming_a_checkpoint_made_for_another_base_model_is_one_line(
    tmp_path: Path, prompts_dir: Path, tiny_model: Path
) -> None:
    data = write_lines(tmp_path / "voice.jsonl", *[GOOD] * 4)
    foreign = make_foreign_adapter(tmp_path / ".adapter.partial" / "checkpoints" / "checkpoint-2")
    code, stderr = tune_cli(
        prompts_dir,
        str(data),
        "-o",
        str(tmp_path / "adapter"),
        "--base",
        str(tiny_model),
        "--no-check",
        "--resume",
    )

    assert code == 1
    line = one_line(stderr)
    assert line.startswith(f"brandbot: cannot resume: {foreign}: made for another base model (")
    assert not (tmp_path / "adapter").exists()


def test_a_typo_in_the_personas_eval_file_stops_tune_before_any_work(
    tmp_path: Path, prompts_dir: Path, tiny_model: Path
) -> None:
    evals = prompts_dir / "evals" / "default.yaml"
    evals.parent.mkdir(exist_ok=True)
    evals.write_text("cases:\n  - name: hi\n    question: Hi?\n    chekcs: {}\n", encoding="utf-8")
    data = write_lines(tmp_path / "voice.jsonl", *[GOOD] * 5)
    code, stderr = tune_cli(prompts_dir, str(data), "-o", str(tmp_path / "out"), "--base", str(tiny_model))

    assert code == 2
    assert f"{evals}:4:" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
