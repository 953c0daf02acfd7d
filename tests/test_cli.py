"""The command line a new admin meets first: discoverable commands, one-line errors, no secrets printed."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer
from typer.testing import CliRunner

from brandbot.cli import app
from tests.conftest import TEST_REDIS_URL

runner = CliRunner()


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRANDBOT_")}
    return subprocess.run(
        [sys.executable, "-m", "brandbot.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_the_tiers() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("worker", "slack", "model", "status"):
        assert command in result.output


@pytest.mark.parametrize("command", [["worker"], ["slack"], ["model"], ["model", "tiny"], ["status"]])
def test_each_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_bad_setting_stops_with_one_line_naming_it() -> None:
    result = run_cli("worker", BRANDBOT_WORKER_CONCURRENCY="lots")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "BRANDBOT_WORKER_CONCURRENCY" in result.stderr and "Traceback" not in result.stderr


def test_missing_model_folder_is_one_line_with_a_hint() -> None:
    result = run_cli(
        "worker", BRANDBOT_MODEL_DIR="/nonexistent/model", BRANDBOT_REDIS_URL="redis://127.0.0.1:6379/9"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "/nonexistent/model" in result.stderr and "brandbot model tiny" in result.stderr


def test_slack_without_tokens_says_which_settings_are_missing() -> None:
    result = run_cli("slack")
    assert result.returncode == 2
    assert "BRANDBOT_SLACK_BOT_TOKEN" in result.stderr and "Traceback" not in result.stderr


def test_secrets_are_never_printed() -> None:
    from brandbot.settings import Settings

    settings = Settings(_env_file=None, slack_bot_token="xoxb-very-secret")  # type: ignore[call-arg]
    assert "xoxb-very-secret" not in repr(settings) and "xoxb-very-secret" not in str(settings.model_dump())


def test_incomplete_model_folder_names_what_is_missing(tiny_model: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(tiny_model / "config.json", partial / "config.json")
    result = run_cli("worker", BRANDBOT_MODEL_DIR=str(partial), BRANDBOT_REDIS_URL=TEST_REDIS_URL)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "missing tokenizer.json and *.safetensors weights" in result.stderr


def test_gpu_engine_on_a_cuda_less_host_says_what_to_do(tiny_model: Path) -> None:
    result = run_cli(
        "worker",
        BRANDBOT_ENGINE="exllamav2",
        BRANDBOT_MODEL_DIR=str(tiny_model),
        BRANDBOT_REDIS_URL=TEST_REDIS_URL,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "brandbot: BRANDBOT_ENGINE=exllamav2 needs a CUDA GPU; use BRANDBOT_ENGINE=transformers on CPU"
    )


def test_unreachable_redis_is_one_line_for_worker_and_status(tiny_model: Path) -> None:
    for command in ("worker", "status"):
        result = run_cli(
            command, BRANDBOT_MODEL_DIR=str(tiny_model), BRANDBOT_REDIS_URL="redis://127.0.0.1:1/0"
        )
        assert result.returncode == (2 if command == "status" else 1) and "Traceback" not in result.stderr
        assert "cannot reach Redis at BRANDBOT_REDIS_URL" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_status_prints_workers_and_queues(worker_process: object) -> None:
    result = run_cli("status", BRANDBOT_REDIS_URL=TEST_REDIS_URL)
    assert result.returncode == 0, result.stderr
    assert "transformers" in result.stdout and "brandbot:model:default" in result.stdout


class UnpickleMarker:
    """Unpickling this creates a marker file: what a forged pickle in a job hash would do to `status`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def keyspace(client: redis.Redis) -> dict[bytes, tuple[bytes | None, bool]]:
    """Every key's serialized value and whether it expires (the exact TTL ticks down by itself)."""
    return {key: (client.dump(key), client.pttl(key) > 0) for key in client.scan_iter()}


def test_status_reads_without_unpickling_or_changing_anything(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    poison = pickle.dumps(UnpickleMarker(marker))
    queue = Queue("brandbot:model:default", connection=redis_client, serializer=JSONSerializer)
    for job_id in ("waiting-1", "waiting-2"):
        queue.enqueue("worker.job.generate_reply", {}, job_id=job_id)
    # An abandoned "running" job (its heartbeat long expired) and a failed one, both carrying pickles:
    # RQ's registry counts clean up (fetch, unpickle, run callbacks, move) before they count.
    for job_id in ("abandoned", "failed"):
        job = queue.create_job("worker.job.generate_reply", args=({},), job_id=job_id)
        job.save()
        redis_client.hset(job.key, mapping={"status": "started", "meta": poison, "result": poison})
    redis_client.zadd(queue.started_job_registry.key, {"abandoned:execution": 1})
    redis_client.zadd(queue.failed_job_registry.key, {"failed": 4_000_000_000})
    before = keyspace(redis_client)

    result = run_cli("status", BRANDBOT_REDIS_URL=TEST_REDIS_URL)

    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "brandbot status unpickled a job hash"
    assert keyspace(redis_client) == before, "brandbot status changed the keyspace"
    [row] = [line for line in result.stdout.splitlines() if "brandbot:model:default" in line]
    assert [cell.strip() for cell in row.split("│")[2:5]] == ["2", "0", "1"]  # waiting, running, failed
