"""Benchmarks are commands an operator runs: they print their figures and end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from brandbot.settings import Settings
from tests.conftest import REPO, TEST_REDIS_URL, worker_env

BENCH_DEADLINE_SECONDS = 180


@pytest.mark.timeout(BENCH_DEADLINE_SECONDS + 30)
def test_bench_queue_prints_its_table_and_exits(redis_client: redis.Redis, prompts_dir: Path) -> None:
    # 200 jobs: the first 200 go one at a time, and collecting their figures takes long enough that raw
    # RQ's worker is always back waiting on its empty queue when told to stop (it used to wait forever).
    settings = Settings(_env_file=None, redis_url=TEST_REDIS_URL, prompts_dir=prompts_dir)  # type: ignore[call-arg]
    finished = subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "bench", "queue", "--jobs", "200"],
        env=worker_env(settings),
        capture_output=True,
        cwd=REPO,
        timeout=BENCH_DEADLINE_SECONDS,
    )
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    table = finished.stdout.decode()
    assert "raw RQ SimpleWorker, trivial job" in table
    assert "brandbot job path, null engine" in table
