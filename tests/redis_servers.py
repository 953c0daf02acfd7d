"""Locked Redis servers started by the tests: the shipped ACL (`deploy/redis`), TLS, Sentinel.

Each server runs from `deploy/redis/start-redis.sh` exactly as the compose file runs it, with random
passwords per user; certificates come from the `openssl` command line, made fresh for each test.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from pydantic import SecretStr

from brandbot.settings import Settings
from tests.conftest import REPO, WorkerProcess, free_port, wait_for_worker, worker_env

START_SCRIPT = REPO / "deploy" / "redis" / "start-redis.sh"
ACL_TEMPLATE = REPO / "deploy" / "redis" / "users.acl"
USERS = ("worker", "frontend", "status", "replica", "sentinel", "admin")
START_SECONDS = 15.0


def password_variable(user: str) -> str:
    return f"BRANDBOT_REDIS_{user.upper()}_PASSWORD"


def new_passwords() -> dict[str, str]:
    return {user: secrets.token_hex(16) for user in USERS}


@dataclass(frozen=True)
class Certificates:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by it."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(folder: Path, *, server_names: str = "IP:127.0.0.1,DNS:localhost") -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca")
    (folder / "server.ext").write_text(f"subjectAltName={server_names}\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        )  # fmt: skip
    return Certificates(
        ca=folder / "ca.crt",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
        client_cert=folder / "client.crt",
        client_key=folder / "client.key",
    )


@dataclass
class LockedRedis:
    """A redis-server started by `deploy/redis/start-redis.sh` with the shipped ACL file."""

    folder: Path
    passwords: dict[str, str] = field(default_factory=new_passwords)
    tls: Certificates | None = None
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def acl_file(self) -> Path:
        return self.folder / "users.acl"

    @property
    def log_path(self) -> Path:
        return self.folder / "redis.log"

    def url(self, user: str, *, db: int = 0) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/{db}"

    def settings_for(self, user: str) -> dict[str, Any]:
        """Settings overrides that connect a brandbot process as `user`."""
        values: dict[str, Any] = {"redis_url": self.url(user)}
        if self.tls:
            values |= {
                "redis_tls_ca_file": self.tls.ca,
                "redis_tls_cert_file": self.tls.client_cert,
                "redis_tls_key_file": self.tls.client_key,
            }
        return values

    def client(self, user: str, **options: Any) -> redis.Redis:
        if self.tls:
            options |= {
                "ssl_ca_certs": str(self.tls.ca),
                "ssl_certfile": str(self.tls.client_cert),
                "ssl_keyfile": str(self.tls.client_key),
            }
        return redis.Redis.from_url(self.url(user), **options)

    def command(self) -> list[str]:
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.server_cert), "--tls-key-file", str(self.tls.server_key),
                "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "yes",
            ]  # fmt: skip
        return [
            str(START_SCRIPT), *ports, "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--save", "", "--appendonly", "no", *self.extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "BRANDBOT_REDIS_ACL_FILE": str(self.acl_file),
            **{password_variable(user): password for user, password in self.passwords.items()},
        }
        self.process = subprocess.Popen(
            self.command(), env=env, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT
        )
        # Ready is ready, whatever names its certificate carries (a test may give it the wrong ones).
        probe = {"ssl_check_hostname": False} if self.tls else {}
        admin = self.client("admin", socket_connect_timeout=1, **probe)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            try:
                admin.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
            finally:
                admin.close()
        raise AssertionError(f"redis-server did not start:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def acl_denials(self) -> list[dict[str, Any]]:
        """What the server refused since start (ACL LOG), read as the operator."""
        with self.client("admin") as admin:
            entries: Any = admin.acl_log()
            return list(entries)


def start_worker_on(
    settings: Settings, watcher: redis.Redis, log_path: Path, **extra_env: str
) -> WorkerProcess:
    """A real `brandbot worker` on `settings`; returns once `watcher` sees its heartbeat."""
    process = subprocess.Popen(
        [sys.executable, "-m", "brandbot.cli", "worker"],
        env=worker_env(settings, **extra_env),
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    handle = WorkerProcess(process, log_path)
    try:
        wait_for_worker(watcher, process, log_path)
    except BaseException:
        handle.stop(signal.SIGKILL)
        raise
    return handle


@dataclass
class SentinelSet:
    """A master and a replica (both on the shipped ACL) watched by one sentinel: quorum 1, quick failover."""

    folder: Path
    master_name: str = "brandbot"
    passwords: dict[str, str] = field(default_factory=new_passwords)
    sentinel_password: str = field(default_factory=lambda: secrets.token_hex(16))
    sentinel_port: int = field(default_factory=free_port)
    down_after_ms: int = 1000
    servers: list[LockedRedis] = field(default_factory=list)
    sentinel: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        master = LockedRedis(self.folder / "master", passwords=self.passwords)
        master.start()
        replica = LockedRedis(
            self.folder / "replica",
            passwords=self.passwords,
            extra_args=(
                "--replicaof", "127.0.0.1", str(master.port),
                "--masteruser", "replica", "--masterauth", self.passwords["replica"],
            ),
        )  # fmt: skip
        replica.start()
        self.servers = [master, replica]
        self._wait(lambda: replica.client("admin").info("replication")["master_link_status"] == "up")
        config = self.folder / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.folder}\n"
            f"requirepass {self.sentinel_password}\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.master_name} 5000\n"
            f"sentinel auth-user {self.master_name} sentinel\n"
            f"sentinel auth-pass {self.master_name} {self.passwords['sentinel']}\n"
        )
        self.sentinel = subprocess.Popen(
            ["redis-server", str(config), "--sentinel"],
            stdout=(self.folder / "sentinel.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        self._wait(lambda: len(self._ask_sentinel("SENTINEL", "REPLICAS", self.master_name)) == 1)

    def _ask_sentinel(self, *command: str) -> Any:
        with redis.Redis(port=self.sentinel_port, password=self.sentinel_password) as sentinel:
            return sentinel.execute_command(*command)

    def _wait(self, ready: Callable[[], bool], seconds: float = START_SECONDS) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"sentinel set not ready:\n{(self.folder / 'sentinel.log').read_text()}")

    def master_port(self) -> int:
        _host, port = self._ask_sentinel("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(port)

    def master(self) -> LockedRedis:
        port = self.master_port()
        return next(server for server in self.servers if server.port == port)

    def settings_for(self, user: str) -> dict[str, Any]:
        """Settings overrides that reach the master through the sentinel as `user` (the URL's host unused)."""
        return {
            "redis_url": f"redis://{user}:{self.passwords[user]}@master-from-sentinel:6379/0",
            "redis_sentinels": [f"127.0.0.1:{self.sentinel_port}"],
            "redis_sentinel_master": self.master_name,
            "redis_sentinel_password": SecretStr(self.sentinel_password),
        }

    def wait_for_failover(self, old_port: int, seconds: float = 60.0) -> None:
        self._wait(lambda: self.master_port() != old_port, seconds)

    def stop(self) -> None:
        if self.sentinel is not None and self.sentinel.poll() is None:
            self.sentinel.terminate()
            self.sentinel.wait(timeout=10)
        for server in self.servers:
            server.stop()
