"""`brandbot bench relay` runs both designs, prints its figures and exits by itself."""

from __future__ import annotations

import os
import subprocess
import sys

import redis

from tests.conftest import REPO, TEST_REDIS_URL


def test_bench_relay_prints_its_figures_and_exits(redis_client: redis.Redis) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRANDBOT_")}
    result = subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "bench", "relay", "--answers", "60", "--compare", "30"],
        env={**env, "BRANDBOT_REDIS_URL": TEST_REDIS_URL, "COLUMNS": "160"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=100,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if "│" in line]
    assert any("one reader per process" in row and "60/60" in row for row in rows)
    assert any("XREAD per answer (old)" in row and "30/30" in row for row in rows)
    assert not list(redis_client.scan_iter(match="brandbot:reply:bench-*"))  # it cleans up after itself
