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
SMALL_SLACK_BURST = (
    "--mentions",
    "20",
    "--users",
    "5",
    "--channels",
    "4",
    "--connections",
    "2",
    "--timeout",
    "30",
)


def bench(
    settings: Settings, *args: str, timeout: float = BENCH_DEADLINE_SECONDS
) -> subprocess.CompletedProcess[bytes]:
    """`brandbot bench ARGS` in a process of its own, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "bench", *args],
        env=worker_env(settings),
        capture_output=True,
        cwd=REPO,
        timeout=timeout,
    )


def bench_table(settings: Settings, *args: str) -> str:
    """What a benchmark that ended well printed."""
    finished = bench(settings, *args)
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    return finished.stdout.decode()


@pytest.mark.timeout(BENCH_DEADLINE_SECONDS + 30)
def test_bench_queue_prints_its_table_and_exits(redis_client: redis.Redis, prompts_dir: Path) -> None:
    # 200 jobs: the first 200 go one at a time, and collecting their figures takes long enough that raw
    # RQ's worker is always back waiting on its empty queue when told to stop (it used to wait forever).
    settings = Settings(_env_file=None, redis_url=TEST_REDIS_URL, prompts_dir=prompts_dir)  # type: ignore[call-arg]
    table = bench_table(settings, "queue", "--jobs", "200")
    assert "raw RQ SimpleWorker, trivial job" in table
    assert "brandbot job path, null engine" in table


@pytest.mark.timeout(2 * BENCH_DEADLINE_SECONDS + 30)
def test_bench_slack_compares_with_a_no_op_app_and_every_mention_is_answered_run_after_run(
    redis_client: redis.Redis, prompts_dir: Path
) -> None:
    # Twice on one database, as an operator measures: a second run's mentions once met the first run's
    # seen-event marks and rate limits, and none was answered.
    settings = Settings(_env_file=None, redis_url=TEST_REDIS_URL, prompts_dir=prompts_dir)  # type: ignore[call-arg]
    for _ in range(2):
        table = bench_table(settings, "slack", *SMALL_SLACK_BURST)
        for figure in (
            "ack, no-op bolt app:",
            "ack, brandbot:",
            "p99 × no-op:",
            "enqueue:",
            "first visible message:",
        ):
            assert figure in table, table
        assert "2 Socket Mode connection(s)" in table
        assert "replies delivered: 20/20" in table, table


@pytest.mark.slow
@pytest.mark.timeout(BENCH_DEADLINE_SECONDS + 30)
def test_bench_engine_on_cpu_prints_throughput_ttft_and_the_roofline(
    redis_client: redis.Redis, prompts_dir: Path, tiny_model: Path
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, redis_url=TEST_REDIS_URL, prompts_dir=prompts_dir, model_dir=tiny_model, engine="auto"
    )
    lines = bench_table(settings, "engine", "--max-new-tokens", "12", "--bandwidth-gbs", "50").splitlines()
    assert lines[0].startswith("engine=transformers mode='continuous batching, up to 4 sequences per step'")
    assert lines[1].split() == [
        "concurrency",
        "tokens",
        "tok/s",
        "×",
        "c=1",
        "ttft",
        "p50",
        "ms",
        "ttft",
        "p99",
        "ms",
    ]
    rows = [line.split() for line in lines[2:5]]
    assert [row[0] for row in rows] == ["1", "2", "4"]  # the CPU engine's concurrencies
    assert rows[0][3] == "1.00" and all(float(row[4]) <= float(row[5]) for row in rows)  # p50 ≤ p99
    assert lines[5].startswith("roofline: ")
    assert "goals on a GPU" in lines[6]


def test_bench_engine_refuses_a_bad_concurrency_list_in_one_line(
    redis_client: redis.Redis, prompts_dir: Path, tiny_model: Path
) -> None:
    settings = Settings(
        _env_file=None, redis_url=TEST_REDIS_URL, prompts_dir=prompts_dir, model_dir=tiny_model
    )  # type: ignore[call-arg]
    finished = bench(settings, "engine", "--concurrency", "1,four", timeout=60)
    assert finished.returncode == 2
    assert finished.stderr.decode().strip() == (
        "brandbot: --concurrency must be comma-separated whole numbers, e.g. 1,4,16"
    )


def test_roofline_share_of_single_stream_decode(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from worker.bench import EngineRun, percentile, roofline_line
    from worker.roofline import known_bandwidth_gbs, weight_bytes_per_token

    weights = load_file(str(tiny_model / "model.safetensors"))
    total = sum(t.numel() * t.element_size() for t in weights.values())
    embedding = weights["model.embed_tokens.weight"]
    untied = total - embedding.numel() * embedding.element_size()  # indexed, not read, per token
    assert weight_bytes_per_token(tiny_model) == untied
    tied = Path(shutil.copytree(tiny_model, tmp_path / "tied"))
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("lm_head.")}, str(tied / "model.safetensors")
    )
    assert weight_bytes_per_token(tied) == total - weights["lm_head.weight"].numel() * 2  # the head reads it

    assert known_bandwidth_gbs("NVIDIA H100 80GB HBM3") == 3350.0
    assert known_bandwidth_gbs("NVIDIA H100 PCIe") == 2000.0
    assert known_bandwidth_gbs("NVIDIA GeForce RTX 4090") == 1008.0
    assert known_bandwidth_gbs("Some Future GPU") is None
    assert percentile([], 0.99) == 0.0
    assert (percentile([5.0, 1.0, 3.0], 0.5), percentile([5.0, 1.0, 3.0], 0.99)) == (3.0, 5.0)

    limit = 1e9 / untied  # tok/s at 1 GB/s
    single = EngineRun(1, 10, 1.0, [10.0], decode_tokens_per_second=[limit / 4])
    line = roofline_line(single, tiny_model, 1.0, None)
    assert line.startswith(
        f"roofline: single-stream decode {limit / 4:.1f} tok/s = 25.0% of {limit:.1f} tok/s"
    )
    assert "1 GB/s from --bandwidth-gbs" in line
    assert roofline_line(single, tiny_model, None, "NVIDIA H100 PCIe").count("from NVIDIA H100 PCIe") == 1
    assert "pass --bandwidth-gbs" in roofline_line(single, tiny_model, None, "Some Future GPU")
    assert "pass --bandwidth-gbs" in roofline_line(single, tiny_model, None, None)
