"""The GPU tier talks to Redis only and holds no platform credential: checked on real worker processes."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redis

from brandbot.settings import Settings, WorkerSettings
from tests.conftest import REPO, TEST_REDIS_URL, WorkerProcess, free_port
from tests.test_worker_process import a_request, dones, enqueue, wait_for

PLATFORM_SECRETS = {
    "BRANDBOT_SLACK_BOT_TOKEN": "xoxb-the-worker-must-not-hold-this",
    "BRANDBOT_SLACK_APP_TOKEN": "xapp-the-worker-must-not-hold-this",
    "BRANDBOT_SLACK_SIGNING_SECRET": "signing-secret-the-worker-must-not-hold",
    "BRANDBOT_DISCORD_TOKEN": "discord-token-the-worker-must-not-hold",
}
HUB_ONLINE = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}

SOCKET_AUDIT = """
import sys

def _record(event, args):
    if event in ("socket.connect", "socket.getaddrinfo"):
        address = args[1] if event == "socket.connect" else args[:2]
        with open({log!r}, "a") as log:
            log.write(repr((event, address)) + "\\n")

sys.addaudithook(_record)
"""


def answer_one_question(client: redis.Redis, settings: Settings) -> None:
    request = a_request("a question for the boundary test")
    enqueue(settings, request)
    wait_for(lambda: bool(dones(client, request.request_id)), 60, "the answer")


def environment_of(worker: WorkerProcess) -> dict[str, str]:
    """The environment the kernel shows for the process (what `os.environ` edits cannot remove)."""
    raw = Path(f"/proc/{worker.process.pid}/environ").read_bytes()
    return dict(entry.decode().partition("=")[::2] for entry in raw.split(b"\0") if entry)


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a listening TCP socket on `port`, from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_metrics_listen_on_loopback_unless_configured(
    start_worker: Callable[..., WorkerProcess],
) -> None:
    port = free_port()
    start_worker(metrics_port=port)
    assert listening_addresses(port) == {"127.0.0.1"}


def test_worker_starts_without_platform_credentials_and_with_the_hub_offline(
    start_worker: Callable[..., WorkerProcess], redis_client: redis.Redis, settings: Callable[..., Settings]
) -> None:
    worker = start_worker(env={**PLATFORM_SECRETS, **HUB_ONLINE})
    environment = environment_of(worker)
    raw = Path(f"/proc/{worker.process.pid}/environ").read_bytes()
    assert [name for name, secret in PLATFORM_SECRETS.items() if secret.encode() in raw] == []
    assert environment["HF_HUB_OFFLINE"] == "1" and environment["TRANSFORMERS_OFFLINE"] == "1"
    answer_one_question(redis_client, settings())


def test_worker_connects_to_redis_and_nothing_else(
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    audit_log = tmp_path / "sockets.log"
    site = tmp_path / "audit"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SOCKET_AUDIT.format(log=str(audit_log)))
    worker = start_worker(env={"PYTHONPATH": str(site), **HUB_ONLINE})
    answer_one_question(redis_client, settings())
    assert worker.stop(signal.SIGTERM) == 0
    redis_address = urlparse(TEST_REDIS_URL)
    allowed = {
        ("socket.connect", (redis_address.hostname, redis_address.port)),
        ("socket.getaddrinfo", (redis_address.hostname, redis_address.port)),
    }
    seen = [ast.literal_eval(line) for line in audit_log.read_text().splitlines()]
    assert ("socket.connect", (redis_address.hostname, redis_address.port)) in seen, "the audit saw nothing"
    assert [entry for entry in seen if entry not in allowed] == []


def test_worker_settings_never_read_platform_settings_from_dotenv_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "".join(f"{name}={value}\n" for name, value in PLATFORM_SECRETS.items())
        + "BRANDBOT_MODEL_NAME=from-dotenv\n"
    )
    monkeypatch.setenv("BRANDBOT_DISCORD_TOKEN", PLATFORM_SECRETS["BRANDBOT_DISCORD_TOKEN"])

    worker = WorkerSettings(_env_file=dotenv)  # type: ignore[call-arg]
    front_end = Settings(_env_file=dotenv)  # type: ignore[call-arg]

    assert worker.model_name == "from-dotenv"
    assert worker.slack_bot_token is worker.slack_app_token is worker.slack_signing_secret is None
    assert worker.discord_token is None
    assert front_end.slack_bot_token is not None and front_end.discord_token is not None


def test_worker_started_beside_a_front_end_dotenv_does_not_read_its_platform_part(tmp_path: Path) -> None:
    """One `.env` for every tier: a platform setting the worker would reject (an unknown Slack mode) does
    not stop it, because it never reads it; it stops on its own missing model folder instead."""
    (tmp_path / ".env").write_text("BRANDBOT_SLACK_MODE=carrier-pigeon\nBRANDBOT_SLACK_BOT_TOKEN=xoxb-1\n")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BRANDBOT_")}
    result = subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "worker"],
        env={
            **environment,
            "PYTHONPATH": str(REPO),
            "BRANDBOT_REDIS_URL": TEST_REDIS_URL,
            "BRANDBOT_MODEL_DIR": str(tmp_path / "no-model-here"),
            "BRANDBOT_PROMPTS_DIR": str(REPO / "prompts"),
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "SLACK" not in result.stderr
    assert "no-model-here" in result.stderr
