"""docker-compose.yml as a platform team deploys it, checked without Docker.

Docker does not run here. The compose file, the Dockerfiles and `.dockerignore` are parsed and their
invariants checked; the commands the containers run are run for real: Redis from the redis service's own
command line and environment (a real redis-server), and `brandbot worker` / `slack` / `discord` with the
environment compose would give them, interpolated from a `.env` the way compose does it.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from ruamel.yaml import YAML

from brandbot import keys
from brandbot.env_example import COMPOSE_VARIABLES, env_example
from brandbot.settings import Settings
from tests.conftest import REPO, free_port

COMPOSE: dict[str, Any] = YAML(typ="safe").load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
BRANDBOT_SERVICES = ("worker", "slack", "discord")
FRONT_ENDS = ("slack", "discord")
REDIS_USER = {"worker": "worker", "slack": "frontend", "discord": "frontend"}
PROBE = ["CMD", "brandbot", "probe", "--ready"]
ENV_EXAMPLE = (REPO / ".env.example").read_text()

# Settings compose sets itself, per service (paths and ports inside the containers, each tier's Redis user).
COMPOSE_OWNED = {"redis_url", "prompts_dir", "model_dir", "engine", "metrics_port", "metrics_host"}
# Settings compose deliberately does not pass: host paths, and Redis topology (compose runs its own Redis).
NOT_PASSED = {"lora_dir"} | {name for name in Settings.model_fields if name.startswith("redis_")}
PLATFORMS = ("slack_", "discord_")


def variable(name: str) -> str:
    return f"BRANDBOT_{name.upper()}"


def interpolate(value: str, env: dict[str, str]) -> str:
    """`${NAME}`, `${NAME:-default}` and `${NAME:?error}` as docker compose reads them from `.env`."""

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if operator == ":?":
            raise AssertionError(f"compose would refuse to start: {argument}")
        return argument or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", replace, value)


def container_environment(service: str, dot_env: dict[str, str]) -> dict[str, str]:
    """The environment compose gives `service`: values interpolated; a key without a value passes the
    `.env` value through, or is left out when `.env` does not set it."""
    environment: dict[str, str] = {}
    for name, value in SERVICES[service]["environment"].items():
        if value is None:
            if dot_env.get(name):
                environment[name] = dot_env[name]
        else:
            environment[name] = interpolate(str(value), dot_env)
    return environment


def tier_passwords() -> dict[str, str]:
    """A `.env`'s Redis passwords: one per tier user."""
    return {
        f"BRANDBOT_REDIS_{user.upper()}_PASSWORD": secrets.token_hex(16)
        for user in ("worker", "frontend", "status")
    }


# -- the compose file's invariants ------------------------------------------------------------------------


def test_redis_and_the_worker_reach_only_the_internal_network_and_nothing_is_published() -> None:
    networks = COMPOSE["networks"]
    assert networks["internal"]["internal"] is True
    assert not (networks["egress"] or {}).get("internal")
    assert SERVICES["redis"]["networks"] == ["internal"]
    assert SERVICES["worker"]["networks"] == ["internal"]
    for name in FRONT_ENDS:
        assert sorted(SERVICES[name]["networks"]) == ["egress", "internal"], name
    for name, service in SERVICES.items():
        assert "ports" not in service, f"{name} publishes a port"
        assert "network_mode" not in service and "extra_hosts" not in service, name
    # The worker never learns a platform's address or any other way out.
    assert set(COMPOSE["networks"]) == {"internal", "egress"}


def test_every_service_has_a_health_check_and_a_restart_policy() -> None:
    for name, service in SERVICES.items():
        assert service["restart"] in ("unless-stopped", "always"), name
        assert service["healthcheck"]["test"], name
        assert {"interval", "timeout", "retries", "start_period"} <= set(service["healthcheck"]), name
    for name in BRANDBOT_SERVICES:
        service = SERVICES[name]
        assert service["healthcheck"]["test"] == PROBE, name
        assert int(service["environment"]["BRANDBOT_METRICS_PORT"]) > 0, name  # where the probe looks
        assert service["environment"]["BRANDBOT_METRICS_HOST"] == "0.0.0.0", name  # Prometheus scrapes
        assert service["depends_on"] == {"redis": {"condition": "service_healthy"}}, name
        assert service["command"][:1] == ["brandbot"], name


def test_redis_requires_every_tier_password_keeps_an_append_only_file_and_is_probed_as_status() -> None:
    service = SERVICES["redis"]
    assert service["command"][0] == "/etc/brandbot/redis/start-redis.sh"
    assert " ".join(service["command"]).count("--appendonly yes") == 1
    assert "redis-data:/data" in service["volumes"]
    assert "./deploy/redis:/etc/brandbot/redis:ro" in service["volumes"]
    for user in ("worker", "frontend", "status"):
        password = f"BRANDBOT_REDIS_{user.upper()}_PASSWORD"
        assert service["environment"][password].startswith(f"${{{password}:?"), password
        with pytest.raises(AssertionError, match="compose would refuse to start"):
            container_environment("redis", {k: v for k, v in tier_passwords().items() if k != password})
    probe = service["healthcheck"]["test"]
    assert probe[0] == "CMD-SHELL" and "--user status" in probe[1]
    assert service["environment"]["REDISCLI_AUTH"] == "${BRANDBOT_REDIS_STATUS_PASSWORD}"
    shipped = (REPO / "deploy" / "redis" / "users.acl").read_text()
    assert "user default off resetpass" in shipped


def test_front_ends_start_by_profile_and_compose_starts_without_their_tokens() -> None:
    for name in FRONT_ENDS:
        assert SERVICES[name]["profiles"] == [name]
        # Compose interpolates every service, started or not: a required (`:?`) variable in a front-end
        # would stop `docker compose up` on a host that runs only the other platform.
        assert ":?" not in str(SERVICES[name]), name
    for name in ("redis", "worker"):
        assert "profiles" not in SERVICES[name], name
    assert "COMPOSE_PROFILES=" in ENV_EXAMPLE.splitlines()


def test_the_worker_reserves_a_gpu_mounts_the_model_read_only_and_writes_only_its_cache() -> None:
    worker = SERVICES["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    mounts = {interpolate(volume, {}).split(":")[1]: volume for volume in worker["volumes"]}
    assert mounts["/models"].endswith(":ro")
    assert worker["environment"]["BRANDBOT_MODEL_DIR"].startswith("/models/")
    assert mounts["/app/prompts"].endswith(":ro")
    assert mounts["/cache"] == "worker-cache:/cache"  # a named volume: the image's /cache ownership
    assert "worker-cache" in COMPOSE["volumes"]
    writable = [target for target, volume in mounts.items() if not volume.endswith(":ro")]
    assert writable == ["/cache"]
    assert worker["read_only"] is True and worker["tmpfs"] == ["/tmp"]
    gpu_image = (REPO / "Dockerfile.gpu").read_text()
    for cache in ("TRITON_CACHE_DIR=/cache/", "TORCH_EXTENSIONS_DIR=/cache/", "HOME=/cache/"):
        assert cache in gpu_image, cache


def test_each_container_gets_its_own_tiers_settings_and_no_other_secret() -> None:
    passed = {
        name for name in Settings.model_fields if name not in COMPOSE_OWNED | NOT_PASSED
    }  # every setting an admin may put in .env reaches the tier that reads it
    shared = {variable(name) for name in passed if not name.startswith(PLATFORMS)}
    for service in BRANDBOT_SERVICES:
        environment = SERVICES[service]["environment"]
        assert "env_file" not in SERVICES[service], service  # .env as a whole holds every tier's secrets
        missing = shared - set(environment)
        assert not missing, f"add {sorted(missing)} to x-settings in docker-compose.yml"
        platform = {variable(name) for name in passed if name.startswith(f"{service}_")}
        assert platform <= set(environment), f"add {sorted(platform - set(environment))} to {service}"
        unknown = {
            name
            for name in environment
            if name.startswith("BRANDBOT_")
            and name.removeprefix("BRANDBOT_").lower() not in Settings.model_fields
        }
        assert not unknown, f"{service}: {unknown} are not settings"
        user = REDIS_USER[service]
        assert environment["BRANDBOT_REDIS_URL"] == (
            f"redis://{user}:${{BRANDBOT_REDIS_{user.upper()}_PASSWORD}}@redis:6379/0"
        )
        other_passwords = set(re.findall(r"BRANDBOT_REDIS_(\w+)_PASSWORD", str(environment))) - {user.upper()}
        assert not other_passwords, service
    worker = SERVICES["worker"]["environment"]
    assert not [name for name in worker if name.startswith(("BRANDBOT_SLACK_", "BRANDBOT_DISCORD_"))]
    assert not [name for name in SERVICES["slack"]["environment"] if name.startswith("BRANDBOT_DISCORD_")]
    assert not [name for name in SERVICES["discord"]["environment"] if name.startswith("BRANDBOT_SLACK_")]


def test_a_platform_token_in_dot_env_reaches_its_front_end_only() -> None:
    dot_env = tier_passwords() | {
        "BRANDBOT_SLACK_BOT_TOKEN": "xoxb-secret",
        "BRANDBOT_DISCORD_TOKEN": "discord-secret",
        "BRANDBOT_WORKER_CONCURRENCY": "8",
    }
    worker = container_environment("worker", dot_env)
    slack = container_environment("slack", dot_env)
    discord = container_environment("discord", dot_env)
    assert "xoxb-secret" not in str(worker) and "discord-secret" not in str(worker)
    assert slack["BRANDBOT_SLACK_BOT_TOKEN"] == "xoxb-secret" and "discord-secret" not in str(slack)
    assert discord["BRANDBOT_DISCORD_TOKEN"] == "discord-secret" and "xoxb-secret" not in str(discord)
    assert worker["BRANDBOT_WORKER_CONCURRENCY"] == "8"
    assert "BRANDBOT_CACHE_TYPE" not in worker  # unset in .env: left out, so the default applies
    assert dot_env["BRANDBOT_REDIS_WORKER_PASSWORD"] not in str(slack)
    assert dot_env["BRANDBOT_REDIS_FRONTEND_PASSWORD"] not in str(worker)


def test_docker_waits_for_a_worker_to_drain_before_killing_it() -> None:
    grace = SERVICES["worker"]["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace.removesuffix("s")) > Settings.model_fields["drain_grace_seconds"].default + 10


def test_containers_run_unprivileged_on_a_read_only_root() -> None:
    assert SERVICES["redis"]["user"] == "redis"
    for name, service in SERVICES.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert not service.get("privileged"), name
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        users = re.findall(r"^USER (\S+)", (REPO / dockerfile).read_text(), flags=re.M)
        assert users and users[-1].split(":")[0] not in ("0", "root"), dockerfile


def test_every_variable_compose_reads_is_in_env_example() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    for service in SERVICES.values():
        used |= {name for name, value in (service.get("environment") or {}).items() if value is None}
    documented = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE, flags=re.M))
    assert used - documented == set()
    assert {v.name for v in COMPOSE_VARIABLES} - used - {"COMPOSE_PROFILES"} == set()  # none stale


# -- .env.example ------------------------------------------------------------------------------------------


def test_env_example_is_the_generated_file_with_every_setting_and_its_description() -> None:
    # Regenerate with: brandbot settings example > .env.example
    assert env_example() == ENV_EXAMPLE
    result = subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "settings", "example"],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ENV_EXAMPLE
    flat = re.sub(r"\n# ", " ", ENV_EXAMPLE)  # descriptions wrapped over comment lines
    for name, field in Settings.model_fields.items():
        assert f"\n# {variable(name)}=" in ENV_EXAMPLE, name
        assert field.description and field.description in flat, name
    for secret in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "DISCORD_TOKEN"):
        assert f"\n# BRANDBOT_{secret}=\n" in ENV_EXAMPLE, secret
    assert "\n# BRANDBOT_WORKER_CONCURRENCY=4\n" in ENV_EXAMPLE
    assert "\n# BRANDBOT_DISCORD_COMMAND_GUILDS=[]\n" in ENV_EXAMPLE
    assert "\n# BRANDBOT_FEEDBACK_ENABLED=true\n" in ENV_EXAMPLE


def test_env_example_loads_as_settings_unchanged() -> None:
    """Copied to .env as is, it gives the defaults (every setting line is a comment or compose's)."""
    loaded = Settings(_env_file=REPO / ".env.example")
    assert loaded == Settings(_env_file=None)


# -- the images -------------------------------------------------------------------------------------------


def test_gpu_image_compiles_both_engines_kernels_at_build_time() -> None:
    gpu_image = (REPO / "Dockerfile.gpu").read_text()
    base = re.search(r"^ARG BASE=(\S+)", gpu_image, flags=re.M)
    assert base and base.group(1).endswith("-devel")  # nvcc, for the build step
    assert re.search(r'^ARG TORCH_CUDA_ARCH_LIST="[0-9.;+PTX]+"', gpu_image, flags=re.M)
    assert "ENV TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}" in gpu_image
    assert '"exllamav2==0.3.2"' in gpu_image and '"exllamav3==1.6.5"' in gpu_image
    build = re.search(r"^RUN .*build_kernels\.py \\\n\s+(.*)$", gpu_image, flags=re.M)
    assert build and build.group(1).split()[:2] == [
        "exllamav2.ext:exllamav2_ext",
        "exllamav3.ext:exllamav3_ext",
    ]
    # Built as root before the unprivileged user exists; nothing is compiled once USER is set.
    assert gpu_image.index("build_kernels.py") < gpu_image.index("\nUSER ")
    args = SERVICES["worker"]["build"]["args"]
    assert args["TORCH_CUDA_ARCH_LIST"].startswith("${BRANDBOT_COMPOSE_CUDA_ARCH_LIST:-")
    assert SERVICES["worker"]["build"]["dockerfile"] == "Dockerfile.gpu"
    front_end_image = (REPO / "Dockerfile").read_text()
    assert "torch" not in front_end_image.split("FROM", 1)[1].lower()
    assert '".[slack,discord]"' in front_end_image


def test_kernel_build_script_refuses_to_guess_architectures() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "gpu" / "build_kernels.py"), "exllamav2.ext:exllamav2_ext"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "set TORCH_CUDA_ARCH_LIST" in result.stderr


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context (last matching pattern wins; a pattern
    matching a folder covers everything in it)."""
    excluded = False
    parts = path.split("/")
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = re.escape(pattern.lstrip("!").strip("/"))
        regex = regex.replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_models_secrets_and_caches_out_of_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        "models/current/model.safetensors",
        "brandbot/models/x.safetensors",
        "my-model.gguf",
        ".venv/bin/python",
        ".run/worker.log",
        ".env",
        ".git/HEAD",
        ".mypy_cache/3.11/x.json",
        "brandbot/__pycache__/settings.cpython-311.pyc",
        ".pytest_cache/v/cache",
        "tests/test_compose.py",
        "build/lib/brandbot/x.py",
    ):
        assert dockerignored(path, patterns), path
    copied = set()
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        for sources in re.findall(r"^COPY (.+) \S+$", (REPO / dockerfile).read_text(), flags=re.M):
            copied |= set(sources.split())
    assert {"brandbot", "bots", "worker", "prompts", "pyproject.toml"} <= copied
    for source in copied:  # what the images need is in the context
        assert not dockerignored(source, patterns), source
        inside = next((REPO / source).rglob("*.py"), None) if (REPO / source).is_dir() else None
        if inside is not None:
            assert not dockerignored(str(inside.relative_to(REPO)), patterns), inside


# -- the commands the containers run ---------------------------------------------------------------------


@pytest.fixture
def compose_redis(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """The redis service run without Docker: its command, its environment from a `.env`."""
    service = SERVICES["redis"]
    dot_env = tier_passwords()
    environment = container_environment("redis", dot_env)
    mount = next(volume for volume in service["volumes"] if volume.startswith("./deploy/redis:"))
    inside = mount.split(":")[1]
    command = [part.replace(inside, str(REPO / "deploy" / "redis")) for part in service["command"]]
    port = free_port()
    # Only what a container gives for free differs: its own port and data folder, and its /tmp.
    here = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    log = tmp_path / "redis.log"
    server = subprocess.Popen(
        [*command, *here],
        env={
            "PATH": os.environ["PATH"],
            "BRANDBOT_REDIS_ACL_FILE": str(tmp_path / "users.acl"),
            **environment,
        },
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    probe = service["healthcheck"]["test"][1].replace("redis-cli", f"redis-cli -p {port}")

    def healthy(env: dict[str, str]) -> bool:
        return subprocess.run(["sh", "-c", probe], env=env, capture_output=True, timeout=10).returncode == 0

    try:
        deadline = time.monotonic() + 15
        while not healthy({"PATH": os.environ["PATH"], **environment}):
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()
            time.sleep(0.05)
        assert not healthy({"PATH": os.environ["PATH"], "REDISCLI_AUTH": "wrong"})
        yield port, dot_env
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_compose_redis_runs_locked_append_only_with_each_tier_limited(
    compose_redis: tuple[int, dict[str, str]], tmp_path: Path
) -> None:
    port, dot_env = compose_redis

    def client(user: str) -> redis.Redis:
        return redis.Redis(
            port=port, username=user, password=dot_env[f"BRANDBOT_REDIS_{user.upper()}_PASSWORD"]
        )

    assert (tmp_path / "appendonlydir").is_dir()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).ping()
    with pytest.raises(redis.AuthenticationError):  # no admin password in .env: no admin user
        redis.Redis(port=port, username="admin", password="", retry=Retry(NoBackoff(), 0)).ping()
    frontend, worker, status = client("frontend"), client("worker"), client("status")
    assert frontend.set(keys.inflight_record("slack", "r1"), "token-bearing record")
    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.get(keys.inflight_record("slack", "r1"))
    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.config_get("*")
    assert worker.sadd(keys.WORKERS_SET, "w1") == 1
    assert status.smembers(keys.WORKERS_SET) == {b"w1"}
    with pytest.raises(redis.exceptions.NoPermissionError):
        status.sadd(keys.WORKERS_SET, "w2")
    for connection in (frontend, worker, status):
        connection.close()


def test_the_worker_starts_with_the_environment_compose_gives_it(
    compose_redis: tuple[int, dict[str, str]], tiny_model: Path, tmp_path: Path
) -> None:
    """`brandbot worker` as the worker container runs it, on the compose Redis as its `worker` user.

    Only what Docker provides differs: the Redis host, the mounted folders, and the engine — the CPU
    engine on the tiny model stands in for the GPU here.
    """
    port, dot_env = compose_redis
    environment = container_environment("worker", dot_env | {"BRANDBOT_SLACK_BOT_TOKEN": "xoxb-secret"})
    metrics_port = free_port()
    environment |= {
        "BRANDBOT_REDIS_URL": environment["BRANDBOT_REDIS_URL"].replace("@redis:6379", f"@127.0.0.1:{port}"),
        "BRANDBOT_MODEL_DIR": str(tiny_model),
        "BRANDBOT_PROMPTS_DIR": str(REPO / "prompts"),
        "BRANDBOT_ENGINE": "transformers",  # GPU stand-in
        "BRANDBOT_METRICS_PORT": str(metrics_port),
    }
    log = tmp_path / "worker.log"
    command = [sys.executable, "-m", "brandbot.cli", *SERVICES["worker"]["command"][1:]]
    process = subprocess.Popen(
        command,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), **environment},
        cwd=tmp_path,  # no .env here: the container has none either
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    status = redis.Redis(port=port, username="status", password=dot_env["BRANDBOT_REDIS_STATUS_PASSWORD"])
    try:
        deadline = time.monotonic() + 60
        while not status.smembers(keys.WORKERS_SET):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            assert response.status == 200
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        assert b"xoxb-secret" not in environ and b"BRANDBOT_SLACK" not in environ
        # The health check exactly as Docker runs it: the healthcheck's command, the container's env.
        healthcheck = SERVICES["worker"]["healthcheck"]["test"][1:]
        probe = [sys.executable, "-m", "brandbot.cli", *healthcheck[1:]]
        probe_env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), **environment}
        deadline = time.monotonic() + 60
        while subprocess.run(probe, env=probe_env, cwd=tmp_path, timeout=30).returncode != 0:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=60)
        status.close()


@pytest.mark.parametrize("service", FRONT_ENDS)
def test_a_front_end_whose_profile_is_on_but_token_unset_says_so_in_one_line(service: str) -> None:
    environment = container_environment(service, tier_passwords())
    result = subprocess.run(
        [sys.executable, "-m", "brandbot.cli", *SERVICES[service]["command"][1:]],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), **environment},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    token = "BRANDBOT_SLACK_BOT_TOKEN" if service == "slack" else "BRANDBOT_DISCORD_TOKEN"
    assert result.stderr == f"brandbot: {token} must be set for this command\n"
