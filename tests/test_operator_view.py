"""The operator's view against running processes: `brandbot status`, `brandbot failed …`, the health
endpoints of a real worker and real front-ends, `brandbot probe`, and the front-ends' metrics."""

# ruff: noqa: F811 (test arguments are the imported fixtures, by pytest's design)

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from pydantic import AnyHttpUrl, SecretStr
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from typer.testing import CliRunner

from brandbot import keys
from brandbot.cli import app
from brandbot.contract import ErrorEvent
from brandbot.emulators.discord import DiscordEmulator
from brandbot.emulators.slack import SlackEmulator
from brandbot.queue import JOB_FUNCTION, RequestQueue
from brandbot.settings import Settings
from brandbot.status import gather
from tests.conftest import TEST_REDIS_URL, PrivateRedis, WorkerProcess, free_port
from tests.discord_fixtures import discord_emulator  # noqa: F401 (fixture by name)
from tests.redis_servers import LockedRedis
from tests.slack_fixtures import front_end_settings
from tests.test_front_end_processes import front_end, short_answers
from tests.test_worker_process import a_request, dones, events_of, wait_for

runner = CliRunner()


def cli(*args: str, redis_url: str = TEST_REDIS_URL, **env: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"BRANDBOT_REDIS_URL": redis_url, **env})
    return result.exit_code, result.stdout, result.stderr


def enqueue_on(settings: Settings, model: str, *requests: object) -> None:
    async def go() -> None:
        queue = RequestQueue.from_settings(settings)
        for request in requests:
            await queue.enqueue(request, model=model)  # type: ignore[arg-type]
        await queue.close()

    asyncio.run(go())


def http_get(port: int, path: str) -> tuple[int, str]:
    """Status and body of GET http://127.0.0.1:port/path; (0, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, OSError) as error:
        return 0, str(error)


def wait_for_status(port: int, path: str, status: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    seen: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        seen = http_get(port, path)
        if seen[0] == status:
            return seen[1]
        time.sleep(0.1)
    raise AssertionError(f"{path} did not answer {status}; last: {seen}")


def test_status_shows_redis_workers_queues_and_oldest_wait(
    start_worker: Callable[..., WorkerProcess], settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    short_answers(settings().prompts_dir)
    worker = start_worker(job_heartbeat_ttl_seconds=3)  # beats every second: tokens/s shows soon
    answered = a_request("count my tokens")
    enqueue_on(settings(), "default", answered)
    enqueue_on(settings(), "unserved", a_request("nobody serves this model"))
    wait_for(lambda: bool(dones(redis_client, answered.request_id)), 60, "the answer")
    wait_for(
        lambda: (gather(settings())["workers"][0]["tokens_per_second"] or 0) > 0,
        10,
        "tokens/s in the heartbeat",
    )

    code, out, err = cli("status", "--json")

    assert code == 0, err
    status = json.loads(out)
    assert status["redis"]["reachable"] is True
    assert status["redis"]["address"] == TEST_REDIS_URL.removeprefix("redis://")
    assert status["redis"]["server"] in ("redis", "valkey") and status["redis"]["version"] != "?"
    [record] = status["workers"]
    assert record["model"] == "default" and record["engine"] == "transformers" and record["mode"]
    assert record["live_slots"] == record["slots"] == 4 and record["in_flight"] == 0
    assert record["tokens_per_second"] > 0 and record["heartbeat_age_seconds"] < 10
    queues = {q["model"]: q for q in status["queues"]}
    assert queues["unserved"]["waiting"] == 1 and queues["unserved"]["oldest_wait_seconds"] >= 0
    assert queues["default"]["waiting"] == 0 and status["failed"] == 0

    code, out, err = cli("status")
    assert code == 0, err
    assert f"Redis {status['redis']['address']}: {status['redis']['server']}" in out
    assert record["name"] in out and "brandbot:model:unserved" in out
    assert "nobody serves" not in out + worker.log()


def test_status_without_redis_is_one_line_and_exit_code_2() -> None:
    code, out, err = cli("status", "--json", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert code == 2 and out == ""
    assert err.startswith("brandbot: cannot reach Redis at BRANDBOT_REDIS_URL (127.0.0.1:")
    assert len(err.strip().splitlines()) == 1


def test_status_user_sees_queues_and_only_the_admin_handles_failed_jobs(tmp_path: Path) -> None:
    server = LockedRedis(tmp_path / "redis")
    server.start()
    try:
        admin = server.client("admin")
        queue = Queue(keys.model_queue("default"), connection=admin, serializer=JSONSerializer)
        queue.enqueue(JOB_FUNCTION, {"request_id": "waiting1"}, job_id="waiting1")
        queue.create_job(JOB_FUNCTION, args=({},), job_id="failed1").save()
        admin.zadd(queue.failed_job_registry.key, {"failed1": time.time() + 3600})

        code, out, err = cli("status", "--json", redis_url=server.url("status"))
        assert code == 0, err
        [waiting] = json.loads(out)["queues"]
        # The `status` user may not read job hashes; with no worker to publish the wait, it is unknown.
        assert waiting["waiting"] == 1 and waiting["oldest_wait_seconds"] is None and waiting["failed"] == 1

        code, _, err = cli("failed", "list", redis_url=server.url("status"))
        assert code == 1 and "run `brandbot failed` as the Redis admin user" in err
        code, out, err = cli("failed", "list", redis_url=server.url("admin"))
        assert code == 0 and "failed1" in out, err
    finally:
        server.stop()


def test_failed_jobs_are_listed_shown_requeued_and_purged_without_their_text(
    worker_process: WorkerProcess, redis_client: redis.Redis
) -> None:
    queue = Queue(keys.model_queue("default"), connection=redis_client, serializer=JSONSerializer)
    payload = {"request_id": "bad1", "turns": [{"role": "user", "content": "my secret question"}]}
    queue.enqueue(JOB_FUNCTION, payload, job_id="bad1", retry=None)  # no target: the worker gives up on it
    failed = FailedJobRegistry(queue=queue)
    wait_for(lambda: "bad1" in failed.get_job_ids(), 30, "the job to fail")

    code, out, err = cli("failed", "list")
    assert code == 0, err
    [row] = [line for line in out.splitlines() if "bad1" in line]
    assert "brandbot:model:default" in row and "BadRequestPayload" in row
    assert "payload does not match the contract" in row
    code, out, _ = cli("failed", "list", "--json")
    [listed] = json.loads(out)
    assert listed["id"] == "bad1" and listed["kind"] == "BadRequestPayload" and listed["attempts"] == 1

    code, out, err = cli("failed", "show", "bad1")
    assert code == 0 and "BadRequestPayload" in out and "turns: 1" in out, err
    assert "secret question" not in out
    code, out, _ = cli("failed", "show", "bad1", "--show-text")
    assert "my secret question" in out and "Traceback" in out

    code, out, err = cli("failed", "requeue", "bad1")
    assert code == 0 and "requeued bad1 (attempt 2)" in out, err
    wait_for(
        lambda: any(isinstance(e, ErrorEvent) and e.attempt == 2 for e in events_of(redis_client, "bad1")),
        30,
        "the requeued job to run again",
    )
    wait_for(lambda: "bad1" in failed.get_job_ids(), 30, "the job to fail again")

    code, out, err = cli("failed", "purge", "bad1")
    assert code == 0 and "purged 1 failed job" in out, err
    assert not redis_client.exists(Job.key_for("bad1"), keys.reply_stream("bad1"))
    code, out, _ = cli("failed", "list")
    assert "No failed jobs." in out
    code, _, err = cli("failed", "show", "bad1")
    assert code == 1 and "no failed job bad1" in err
    assert "secret question" not in worker_process.log()


def test_a_worker_loading_its_model_is_alive_but_not_ready_and_says_why(
    start_worker: Callable[..., WorkerProcess],
) -> None:
    port = free_port()
    loading = start_worker(wait=False, metrics_port=port, env={"BRANDBOT_TEST_LOAD_DELAY_SECONDS": "3600"})
    wait_for_status(port, "/healthz", 200)
    assert wait_for_status(port, "/readyz", 503).strip() == "not ready: model loaded"
    code, _, err = cli("probe", "--ready", "--port", str(port))
    assert code == 1 and "/readyz answered 503: not ready: model loaded" in err
    assert loading.process.poll() is None


def test_worker_health_and_readiness_follow_redis_and_probe_says_so(
    start_worker: Callable[..., WorkerProcess], private_redis: PrivateRedis
) -> None:
    port = free_port()
    code, _, err = cli("probe", "--port", str(port))
    assert code == 1 and err.startswith("brandbot: nothing answers http://127.0.0.1:")

    start_worker(wait=False, redis_url=private_redis.url, metrics_port=port)
    wait_for_status(port, "/healthz", 200)
    assert wait_for_status(port, "/readyz", 200).strip() == "ready"
    at = ("--port", str(port))
    assert cli("probe", "--ready", *at)[0] == 0
    assert "brandbot_jobs_in_flight" in http_get(port, "/metrics")[1]

    private_redis.stop()
    assert "redis reachable" in wait_for_status(port, "/readyz", 503)
    code, _, err = cli("probe", "--ready", *at)
    assert code == 1 and "/readyz answered 503: not ready: redis reachable" in err
    assert cli("probe", *at)[0] == 0  # alive all the same
    private_redis.start()
    wait_for_status(port, "/readyz", 200)
    code, _, _ = cli("probe", "--ready", BRANDBOT_METRICS_PORT=str(port))  # the compose healthcheck
    assert code == 0


@pytest.mark.timeout(120)
async def test_slack_front_end_is_ready_once_connected_and_counts_a_mention(
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    private_redis: PrivateRedis,
    tmp_path: Path,
) -> None:
    slack = slack_emulator
    port = free_port()
    base = front_end_settings(
        slack, settings(redis_url=private_redis.url, worker_wait_seconds=2.0, metrics_port=port)
    )
    slack.latency["apps.connections.open"] = 3.0  # the connection to Slack takes a while
    async with front_end("slack", base, tmp_path / "slack.log") as process:
        body = await asyncio.to_thread(wait_for_status, port, "/readyz", 503)
        assert "slack connected" in body and "redis" not in body
        await slack.wait_for_client(timeout=30)
        await asyncio.to_thread(wait_for_status, port, "/readyz", 200)

        _, envelope = await slack.send_user_message(
            channel="C1",
            user="U1",
            text=f"<@{slack.bot_user_id}> my private question",
            event_type="app_mention",
        )
        await slack.wait_for_ack(envelope)
        in_flight = 'brandbot_frontend_answers_in_flight{platform="slack"} 1.0'
        metrics = await asyncio.to_thread(wait_for_metric, port, in_flight)
        assert 'brandbot_frontend_enqueue_seconds_count{platform="slack"} 1.0' in metrics
        assert 'brandbot_frontend_events_total{platform="slack"} 1.0' in metrics
        assert 'brandbot_frontend_acks_total{platform="slack"} 1.0' in metrics
        # No worker serves it: the relay gives up after `worker_wait_seconds` and says so.
        metrics = await asyncio.to_thread(
            wait_for_metric, port, 'brandbot_frontend_errors_total{kind="no_worker",platform="slack"} 1.0'
        )
        assert 'brandbot_frontend_answers_in_flight{platform="slack"} 0.0' in metrics
        assert "private question" not in metrics and "U1" not in metrics

        private_redis.stop()
        assert "redis reachable" in await asyncio.to_thread(wait_for_status, port, "/readyz", 503)
        private_redis.start()
        await asyncio.to_thread(wait_for_status, port, "/readyz", 200)
        assert await process.stop() == 0
        assert "private question" not in process.log()


def wait_for_metric(port: int, line: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = http_get(port, "/metrics")[1]
        if line in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{line!r} not in the metrics:\n{text}")


async def test_discord_front_end_is_ready_once_connected_and_serves_its_metrics(
    discord_emulator: DiscordEmulator, settings: Callable[..., Settings], tmp_path: Path
) -> None:
    emulator = discord_emulator
    port = free_port()
    base = settings(metrics_port=port).model_copy(
        update={
            "discord_token": SecretStr(emulator.token),
            "discord_api_url": AnyHttpUrl(emulator.api_url),
            "discord_gateway_url": emulator.gateway_url,
        }
    )
    async with front_end("discord", base, tmp_path / "discord.log") as process:
        await emulator.wait_for_identify(timeout=30)
        assert (await asyncio.to_thread(wait_for_status, port, "/readyz", 200)).strip() == "ready"
        metrics = http_get(port, "/metrics")[1]
        assert 'brandbot_frontend_events_total{platform="discord"} 0.0' in metrics
        assert 'brandbot_frontend_answers_in_flight{platform="discord"} 0.0' in metrics
        assert await process.stop() == 0


def test_a_forged_failed_job_is_shown_as_refused_and_never_requeued(redis_client: redis.Redis) -> None:
    queue = Queue(keys.model_queue("default"), connection=redis_client, serializer=JSONSerializer)
    job = queue.create_job(JOB_FUNCTION, args=({},), job_id="forged1")
    job.save()
    redis_client.hset(job.key, "success_callback_name", "os.system")  # RQ would import and call it
    redis_client.zadd(queue.failed_job_registry.key, {"forged1": time.time() + 3600})

    code, out, err = cli("failed", "list", "--json")
    assert code == 0, err
    [row] = json.loads(out)
    assert row["id"] == "forged1" and row["refused"] is True
    code, _, err = cli("failed", "requeue", "forged1")
    assert code == 1 and "is not a reply job" in err
    assert redis_client.llen(queue.key) == 0
