"""`brandbot usage`: counters recorded by a real worker and a real front-end, read back by the real CLI."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from brandbot import keys
from brandbot.contract import Usage
from brandbot.emulators.slack import SlackEmulator
from brandbot.settings import Settings
from brandbot.usage import (
    CHAT,
    ENGINE,
    AsyncUsageRecorder,
    UsageGroup,
    UsageRecorder,
    bucket_field,
    generation_counts,
    outcome_counts,
    utc_day,
)
from tests.conftest import REPO, PrivateRedis, WorkerProcess, worker_env
from tests.redis_servers import LockedRedis
from tests.slack_fixtures import answer_with, done_of, queued_requests, scripted_worker, slack_running

QUESTIONS = {  # channel → questions; words no counter may ever hold
    "CGENERAL": ["where is the zebrafinch manual?", "is the quokkalamp on sale?"],
    "CSUPPORT": ["my marmosetkettle broke, what now?"],
}
SECRET_WORDS = ("zebrafinch", "quokkalamp", "marmosetkettle")
RETENTION_DAYS = 3

ROUTING = """\
default_persona: default
models: [default]
user_choice: []
slack:
  channels:
    CSUPPORT: support
"""


def brandbot_usage(settings: Settings, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `brandbot usage` command, away from any `.env` of the checkout."""
    return subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "usage", *args],
        env={**worker_env(settings), "PYTHONPATH": str(REPO)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def usage_json(settings: Settings, cwd: Path, *args: str) -> dict[str, Any]:
    result = brandbot_usage(settings, cwd, "--json", *args)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def rows_by_group(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["group"]: row for row in document["rows"]}


async def test_answers_are_counted_per_persona_channel_and_model_with_the_done_events_tokens(
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    prompts_dir: Path,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    (prompts_dir / "routing.yaml").write_text(ROUTING)
    for persona in ("default", "support"):  # short answers: the counts matter here, not the text
        path = prompts_dir / "personas" / f"{persona}.yaml"
        path.write_text(re.sub(r"max_new_tokens: \d+", "max_new_tokens: 12", path.read_text()))
    worker = start_worker(usage_retention_days=RETENTION_DAYS)
    base = settings(usage_retention_days=RETENTION_DAYS)
    async with slack_running(slack_emulator, base) as slack:
        asked = [
            (channel, await slack.mention(channel, f"U{index}", text))
            for index, (channel, text) in enumerate(
                (channel, text) for channel, texts in QUESTIONS.items() for text in texts
            )
        ]
        for channel, question in asked:
            await slack.wait_for_answer(channel, question.ts)
    assert worker.stop() == 0  # a clean stop writes the worker's last seconds up

    tokens: dict[str, list[int]] = {channel: [0, 0] for channel in QUESTIONS}
    for request in queued_requests(redis_client):
        done = done_of(redis_client, request.request_id)
        assert done is not None
        tokens[request.target.channel_id][0] += done.usage.prompt_tokens
        tokens[request.target.channel_id][1] += done.usage.completion_tokens

    by_channel = rows_by_group(usage_json(base, tmp_path, "--by", "channel"))
    assert set(by_channel) == set(QUESTIONS)
    for channel, texts in QUESTIONS.items():
        row = by_channel[channel]
        assert (row["questions"], row["answers"], row["errors"]) == (len(texts), len(texts), 0)
        assert [row["prompt_tokens"], row["completion_tokens"]] == tokens[channel]
        assert row["gpu_seconds"] > 0 and row["ttft_p50_ms"] > 0 and row["final_p95_ms"] > 0
    # Both tiers counted under the same groups: the persona each channel's routing names, the model served.
    expected = {
        UsageGroup(platform="slack", channel="CGENERAL", persona="default", model="default"),
        UsageGroup(platform="slack", channel="CSUPPORT", persona="support", model="default"),
    }
    for tier in (ENGINE, CHAT):
        members: Any = redis_client.smembers(keys.usage_index(tier, utc_day()))
        assert {UsageGroup.from_member(member) for member in members} == expected
    document = usage_json(base, tmp_path, "--by", "model")
    [model] = document["rows"]
    [total] = document["totals"]
    assert model["group"] == "default" and model["answers"] == total["answers"] == 3
    assert model["worker_hours"] > 0 and model["wall_cost_per_1000_answers"] > 0
    assert {
        row["group"] for row in rows_by_group(usage_json(base, tmp_path, "--by", "platform")).values()
    } == {"slack"}

    result = brandbot_usage(base, tmp_path, "--csv", "--by", "channel")
    assert result.returncode == 0, result.stderr
    parsed = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {row["group"]: int(row["answers"]) for row in parsed} == {"CGENERAL": 2, "CSUPPORT": 1}

    usage_keys = list(redis_client.scan_iter(match="brandbot:usage:*"))
    assert usage_keys
    stored = []
    for key in usage_keys:
        assert 0 < redis_client.ttl(key) <= RETENTION_DAYS * 86_400, key
        kind = redis_client.type(key)
        value: Any = redis_client.hgetall(key) if kind == b"hash" else redis_client.smembers(key)
        stored += [key, *value, *(value.values() if isinstance(value, dict) else [])]
    blob = b" ".join(stored).lower()
    for word in SECRET_WORDS:
        assert word.encode() not in blob


async def test_an_answer_resumed_by_a_restarted_front_end_is_counted_once(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack, base = slack_emulator, settings()
    text = " ".join(f"part{i}" for i in range(60))
    async with scripted_worker(base.redis_url, answer_with(text, chunk=12), step_seconds=0.1):
        async with slack_running(slack, base) as first:
            question = await first.mention("C1", "U1", "tell me a long story")
            await slack.wait_until(lambda: bool(slack.calls_to("chat.appendStream")), what="streaming")
        async with slack_running(slack, base) as second:  # the first stopped mid-answer (a deploy)
            await second.wait_for_answer("C1", question.ts)
    group = UsageGroup(platform="slack", channel="C1", persona="default", model="default")
    counters: Any = redis_client.hgetall(keys.usage_counters(CHAT, utc_day(), group.parts()))
    assert counters == {b"questions": b"1", b"answers": b"1"}  # no final time: the relay started over


def test_costs_and_percentiles_are_computed_from_the_counters(
    redis_client: redis.Redis, settings: Callable[..., Settings], tmp_path: Path
) -> None:
    recorder = UsageRecorder(redis_client, retention_days=RETENTION_DAYS)
    group = UsageGroup(platform="discord", channel="42", persona="support", model="default")
    # 400 answers: 2 M tokens in, 0.5 M out, 2 GPU-hours busy, TTFTs all in the 200–300 ms bucket.
    for _ in range(10):
        usage = Usage(
            prompt_tokens=200_000, completion_tokens=50_000, time_to_first_token_ms=250, total_ms=720_000
        )
        recorder.record(ENGINE, group, generation_counts(usage))
    recorder.record(CHAT, group, {"questions": 401, "answers": 399, "errors": 1})
    recorder.record(CHAT, group, outcome_counts(answered=True, final_ms=1_200))
    recorder.record_uptime("default", 10 * 3600)
    prices = {
        "usage_api_input_price_per_million": 3.0,
        "usage_api_output_price_per_million": 15.0,
        "usage_gpu_hour_price": 2.5,
    }
    document = usage_json(settings(**prices), tmp_path, "--by", "model", "--days", "1")
    [row] = document["rows"]
    assert row["day"] == utc_day() and (row["questions"], row["answers"], row["errors"]) == (401, 400, 1)
    assert row["api_cost"] == pytest.approx(2 * 3.0 + 0.5 * 15.0)  # 13.5
    assert row["gpu_seconds"] == pytest.approx(7200) and row["gpu_cost"] == pytest.approx(2 * 2.5)
    assert row["api_cost_per_1000_answers"] == pytest.approx(33.75)  # 13.5 / 400 × 1000
    assert row["gpu_cost_per_1000_answers"] == pytest.approx(12.5)  # 2.5 × 2 h / 400 × 1000
    assert row["worker_hours"] == pytest.approx(10)
    assert row["wall_cost_per_1000_answers"] == pytest.approx(62.5)  # 2.5 × 10 h / 400 × 1000
    # Ten observations in (200, 300]: interpolated within the bucket.
    assert row["ttft_p50_ms"] == pytest.approx(250) and row["ttft_p95_ms"] == pytest.approx(295)
    assert 1_000 < row["final_p50_ms"] <= 1_500
    assert document["totals"][0]["api_cost"] == pytest.approx(13.5)
    table = brandbot_usage(settings(**prices), tmp_path, "--by", "platform", "--days", "1")
    assert table.returncode == 0, table.stderr
    assert "discord" in table.stdout and "12.50" in table.stdout and "62.50" in table.stdout


def test_before_any_uptime_is_recorded_the_wall_clock_cost_is_unknown_not_zero(
    redis_client: redis.Redis, settings: Callable[..., Settings], tmp_path: Path
) -> None:
    group = UsageGroup(platform="slack", channel="C1", persona="default", model="default")
    UsageRecorder(redis_client, retention_days=RETENTION_DAYS).record(
        CHAT, group, {"questions": 1, "answers": 1}
    )
    document = usage_json(settings(usage_gpu_hour_price=2.5), tmp_path, "--by", "model", "--days", "1")
    [row], [total] = document["rows"], document["totals"]
    assert row["worker_hours"] is None and row["wall_cost_per_1000_answers"] is None
    assert total["worker_hours"] is None and total["wall_cost_per_1000_answers"] is None


async def test_each_locked_tier_records_only_its_own_usage_and_status_reads_it(
    tmp_path: Path, settings: Callable[..., Settings]
) -> None:
    server = LockedRedis(tmp_path / "redis")
    server.start()
    try:
        group = UsageGroup(platform="slack", channel="C1", persona="default", model="default")
        with server.client("worker") as worker:
            UsageRecorder(worker, retention_days=1).record(
                ENGINE, group, generation_counts(Usage(prompt_tokens=7, completion_tokens=3, total_ms=20))
            )
            UsageRecorder(worker, retention_days=1).record_uptime("default", 60)
            with pytest.raises(redis.exceptions.NoPermissionError):  # not the front-ends' counters
                UsageRecorder(worker, retention_days=1).record(CHAT, group, {"answers": 1})
        async_frontend = redis.asyncio.Redis.from_url(server.url("frontend"))
        try:
            await AsyncUsageRecorder(async_frontend, retention_days=1).record(
                CHAT, group, {"questions": 1, "answers": 1}
            )
        finally:
            await async_frontend.aclose()
        with server.client("status") as status, pytest.raises(redis.exceptions.NoPermissionError):
            status.hincrby(keys.usage_counters(CHAT, utc_day(), group.parts()), "answers", 1)
        document = usage_json(settings(**server.settings_for("status")), tmp_path, "--days", "1")
        [row] = document["rows"]
        assert (row["answers"], row["prompt_tokens"], row["completion_tokens"]) == (1, 7, 3)
        assert document["totals"][0]["worker_hours"] == pytest.approx(60 / 3600, abs=1e-6)
    finally:
        server.stop()


async def test_a_burst_of_front_end_counts_is_summed_right_in_a_few_transactions(
    private_redis: PrivateRedis,
) -> None:
    # One transaction per question made a 500-mention burst spend as much time counting as answering.
    connection = redis.asyncio.Redis.from_url(private_redis.url)
    recorder = AsyncUsageRecorder(connection, retention_days=1)
    groups = [
        UsageGroup(platform="slack", channel=f"C{n}", persona="default", model="default") for n in range(3)
    ]
    stats = redis.Redis.from_url(private_redis.url)
    exec_before = stats.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)

    await asyncio.gather(*(recorder.record(CHAT, groups[n % 3], {"questions": 1}) for n in range(300)))
    await asyncio.gather(
        *(
            recorder.record(CHAT, groups[0], outcome_counts(answered=n % 2 == 0, final_ms=900))
            for n in range(10)
        )
    )

    day = utc_day()
    questions = [int(stats.hget(keys.usage_counters(CHAT, day, g.parts()), "questions") or 0) for g in groups]
    assert questions == [100, 100, 100]
    first = stats.hgetall(keys.usage_counters(CHAT, day, groups[0].parts()))
    assert (first[b"answers"], first[b"errors"], first[bucket_field("final", 900).encode()]) == (
        b"5",
        b"5",
        b"5",
    )
    assert stats.smembers(keys.usage_index(CHAT, day)) == {g.member().encode() for g in groups}
    assert stats.info("commandstats")["cmdstat_exec"]["calls"] - exec_before <= 4
    await connection.aclose()


async def test_counts_meeting_a_stopped_redis_fail_each_caller_and_the_next_one_is_written(
    private_redis: PrivateRedis,
) -> None:
    connection = redis.asyncio.Redis.from_url(private_redis.url, socket_connect_timeout=1)
    recorder = AsyncUsageRecorder(connection, retention_days=1)
    group = UsageGroup(platform="slack", channel="C1", persona="default", model="default")
    private_redis.stop()
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(recorder.record(CHAT, group, {"questions": 1}) for _ in range(20)), return_exceptions=True
        ),
        timeout=30,
    )
    assert all(isinstance(outcome, redis.RedisError) for outcome in outcomes), outcomes
    private_redis.start()
    await recorder.record(CHAT, group, {"questions": 1})
    counters = keys.usage_counters(CHAT, utc_day(), group.parts())
    assert redis.Redis.from_url(private_redis.url).hget(counters, "questions") == b"1"
    await connection.aclose()
