"""Redis locked as shipped: the ACL file's users, TLS with client certificates, each tier on its own user.

The servers are real redis-server processes started by `deploy/redis/start-redis.sh` (the compose file's
command); the worker is a real `brandbot worker` subprocess; the Slack front-end runs in-process against
the Slack emulator.
"""

from __future__ import annotations

import hashlib
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from brandbot import keys
from brandbot.connections import sync_client
from brandbot.emulators.slack import SlackEmulator
from brandbot.settings import Settings
from tests.conftest import REPO
from tests.redis_servers import LockedRedis, make_certificates, start_worker_on
from tests.slack_fixtures import slack_running, visible

FRONT_END_KEYS = [
    keys.inflight_record("slack", "r1"),
    keys.inflight_index("slack"),
    keys.rate_limit_notice("slack", "U1"),
    keys.joined_conversation("slack", "C1:1.0"),
    keys.slack_assistant_thread("D1", "1.0"),
    "brandbot:inflight:slack:x",
    keys.relay_lease("slack", "r1"),
    keys.seen_event("slack", "Ev1"),
    keys.feedback("r1"),
    "brandbot:ratelimit:slack:U1",
    "brandbot:slack:installation",
    "brandbot:discord:interaction:1",
]


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[LockedRedis]:
    server = LockedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def locked_tls_redis(tmp_path: Path) -> Iterator[LockedRedis]:
    server = LockedRedis(tmp_path / "redis-tls", tls=make_certificates(tmp_path / "certs"))
    server.start()
    yield server
    server.stop()


def refused(call: Callable[[], Any]) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_acl_file_holds_only_password_hashes_and_nobody_gets_in_without_a_user(
    locked_redis: LockedRedis,
) -> None:
    written = locked_redis.acl_file.read_text()
    assert stat.S_IMODE(locked_redis.acl_file.stat().st_mode) == 0o600
    for user, password in locked_redis.passwords.items():
        assert password not in written
        assert f"user {user} on #{hashlib.sha256(password.encode()).hexdigest()} " in written
    # A refused login is a ConnectionError to redis-py, which retries it with backoff unless told not to.
    no_retry = Retry(NoBackoff(), 0)
    anonymous = redis.Redis(port=locked_redis.port, retry=no_retry)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=locked_redis.port, username="worker", password="guessed", retry=no_retry).ping()
    assert locked_redis.client("worker").ping()


def test_a_user_whose_password_is_unset_stays_off(tmp_path: Path) -> None:
    server = LockedRedis(tmp_path / "redis")
    server.passwords = {user: password for user, password in server.passwords.items() if user != "status"}
    server.start()
    try:
        assert "user status off " in server.acl_file.read_text()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, username="status", password="", retry=Retry(NoBackoff(), 0)).ping()
    finally:
        server.stop()


async def test_answer_arrives_over_tls_with_each_tier_on_its_own_acl_user(
    locked_tls_redis: LockedRedis,
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    server = locked_tls_redis
    with server.client("admin") as admin:
        worker = start_worker_on(settings(**server.settings_for("worker")), admin, tmp_path / "worker.log")
    try:
        async with slack_running(slack_emulator, settings(**server.settings_for("frontend"))) as slack:
            question = await slack.mention("C1", "U1", "what is our VPN called?")
            answer = await slack.wait_for_answer("C1", question.ts)
            with server.client("admin") as admin:
                users = {client["user"] for client in admin.client_list()}
        assert visible(answer).strip()
        assert users == {"worker", "frontend", "admin"}  # each tier on its own user, nobody as default
        # Every command both tiers sent was allowed: the ACL is complete for RQ and for the front-end.
        assert server.acl_denials() == []
    finally:
        worker.stop()


def test_the_tls_server_refuses_a_client_without_certificate_or_over_plain_tcp(
    locked_tls_redis: LockedRedis,
) -> None:
    server = locked_tls_redis
    assert server.tls is not None
    no_certificate = redis.Redis.from_url(
        server.url("worker"), ssl_ca_certs=str(server.tls.ca), socket_connect_timeout=2
    )
    with pytest.raises(redis.ConnectionError):
        no_certificate.ping()
    plain = redis.Redis(
        port=server.port, username="worker", password=server.passwords["worker"], socket_timeout=2
    )
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        plain.ping()


@pytest.mark.parametrize("check_hostname", [True, False])
def test_a_server_certificate_for_another_host_is_refused_unless_the_check_is_off(
    tmp_path: Path, settings: Callable[..., Settings], check_hostname: bool
) -> None:
    server = LockedRedis(
        tmp_path / "redis", tls=make_certificates(tmp_path / "certs", server_names="DNS:redis.example")
    )
    server.start()
    try:
        client = sync_client(
            settings(**server.settings_for("worker"), redis_tls_check_hostname=check_hostname),
            socket_connect_timeout=2,
        )
        if check_hostname:
            with pytest.raises(redis.ConnectionError, match="match"):
                client.ping()
        else:
            assert client.ping()  # still encrypted, and the certificate still signed by the CA
        client.close()
    finally:
        server.stop()


async def test_worker_user_cannot_read_front_end_keys_or_run_admin_commands_yet_serves_jobs(
    locked_redis: LockedRedis,
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    server = locked_redis
    with server.client("admin") as admin:
        # What a front-end keeps: platform tokens and conversations.
        admin.set(keys.inflight_record("slack", "r1"), '{"token": "xoxb-secret"}')
        admin.set("brandbot:inflight:slack:x", "secret")
        worker_process = start_worker_on(
            settings(**server.settings_for("worker")), admin, tmp_path / "worker.log"
        )
    try:
        async with slack_running(slack_emulator, settings(**server.settings_for("frontend"))) as slack:
            question = await slack.mention("C1", "U1", "hello there")
            answer = await slack.wait_for_answer("C1", question.ts)
        assert visible(answer).strip()
        assert server.acl_denials() == []  # the real worker never needed more than the ACL gives
    finally:
        worker_process.stop()

    worker = server.client("worker")
    for key in FRONT_END_KEYS:
        assert refused(lambda key=key: worker.get(key)), key
        assert refused(lambda key=key: worker.hgetall(key)), key
        assert refused(lambda key=key: worker.hscan(key)), key
        assert refused(lambda key=key: worker.dump(key)), key
        if key != keys.feedback("r1"):  # the worker writes (never reads) the feedback record it answered
            assert refused(lambda key=key: worker.delete(key)), key
    assert refused(lambda: worker.eval("return redis.call('GET', KEYS[1])", 1, "brandbot:inflight:slack:x"))
    assert refused(lambda: worker.scan())  # not even the names of other tiers' keys
    assert refused(lambda: worker.keys("*"))
    assert refused(lambda: worker.flushall())
    assert refused(lambda: worker.flushdb())
    assert refused(lambda: worker.config_get("*"))
    assert refused(lambda: worker.config_set("dir", "/tmp"))
    assert refused(lambda: worker.acl_list())
    assert refused(lambda: worker.client_list())
    assert refused(lambda: worker.info("clients"))
    assert refused(lambda: worker.execute_command("SHUTDOWN", "NOSAVE"))
    assert refused(lambda: worker.execute_command("MONITOR"))
    assert refused(lambda: worker.function_flush())
    assert refused(lambda: worker.script_flush())
    assert refused(lambda: worker.publish("brandbot:anything", "x"))
    # Its own tier's keys still work.
    assert worker.exists(keys.cancel_flag("r1")) == 0
    assert worker.info("server")["redis_version"]


def test_status_user_reads_queues_and_workers_but_neither_requests_nor_writes(
    locked_redis: LockedRedis, tmp_path: Path
) -> None:
    server = locked_redis
    with server.client("admin") as admin:
        admin.hset("rq:job:r1", "data", "a user's question")
        admin.xadd(keys.reply_stream("r1"), {"event": "an answer"})
    status = server.client("status")
    assert status.llen("rq:queue:brandbot:model:default") == 0
    assert status.smembers(keys.WORKERS_SET) == set()
    assert refused(lambda: status.hgetall("rq:job:r1"))
    assert refused(lambda: status.xrange(keys.reply_stream("r1")))
    assert refused(lambda: status.set(keys.WORKERS_SET, "x"))
    assert refused(lambda: status.delete("rq:queue:brandbot:model:default"))


def test_rediss_url_with_a_missing_ca_file_stops_with_one_line_naming_the_setting(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),
        "BRANDBOT_REDIS_URL": "rediss://worker:pw@127.0.0.1:6390/0",
        "BRANDBOT_REDIS_TLS_CA_FILE": str(tmp_path / "missing-ca.crt"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "status"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"brandbot: BRANDBOT_REDIS_TLS_CA_FILE: no such file: {tmp_path / 'missing-ca.crt'}"
    ]


def test_tls_certificates_without_a_rediss_url_are_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not checked here")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),
        "BRANDBOT_REDIS_URL": "redis://127.0.0.1:6390/0",
        "BRANDBOT_REDIS_TLS_CA_FILE": str(ca),
    }
    result = subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "status"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "BRANDBOT_REDIS_TLS_CA_FILE set, but BRANDBOT_REDIS_URL is not rediss://" in result.stderr


def test_brandbot_status_runs_as_the_read_only_status_user(locked_redis: LockedRedis, tmp_path: Path) -> None:
    server = locked_redis
    queue = "rq:queue:brandbot:model:default"
    with server.client("admin") as admin:
        admin.sadd("rq:queues", queue)
        admin.rpush(queue, "waiting-1")
        admin.zadd("rq:wip:brandbot:model:default", {"running-1": 1})  # a job whose heartbeat is stale
        admin.hset("rq:job:running-1", "data", "a user's question")
    result = subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "status"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "BRANDBOT_REDIS_URL": server.url("status")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "brandbot:model:default" in result.stdout
    assert server.acl_denials() == []
