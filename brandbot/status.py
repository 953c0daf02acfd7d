"""`brandbot status`: what an operator checks first — is Redis there, are workers alive, are queues moving.

Read-only by construction: it counts raw keys (SMEMBERS, HGETALL, LLEN, ZCOUNT, ZCARD) and never reads a
job. RQ's own counters would not do: `registry.count` first cleans the registry up (moving jobs, running
their failure callbacks), and fetching a job deserialises whatever the hash holds.

It works as the `status` ACL user (deploy/redis/users.acl), which may not read job hashes: the age of
the oldest waiting request is the one the queue's workers publish in their heartbeat records; with no
worker alive, a user that may read job hashes gets it first-hand (one field of one hash), the `status`
user sees it as unknown.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import redis
from redis.connection import parse_url
from rich.console import Console
from rich.table import Table
from rq import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry

from brandbot import keys
from brandbot.connections import sync_client
from brandbot.errors import QueueUnavailable
from brandbot.queue import oldest_wait_seconds
from brandbot.settings import Settings

CONNECT_TIMEOUT_SECONDS = 3


def redis_address(settings: Settings) -> str:
    """Where BRANDBOT_REDIS_URL points, without its user or password."""
    if settings.redis_sentinels:
        return f"sentinel master {settings.redis_sentinel_master} via {', '.join(settings.redis_sentinels)}"
    url = parse_url(settings.redis_url)
    if "path" in url:
        return f"unix:{url['path']}"
    return f"{url.get('host', 'localhost')}:{url.get('port', 6379)}/{url.get('db', 0)}"


def server_info(connection: redis.Redis) -> dict[str, str]:
    """The server's name and version (`INFO server`, which the `status` user may run)."""
    info: Any = connection.info("server")
    name = str(info.get("server_name") or "redis")
    version = str(info.get(f"{name}_version") or info.get("redis_version") or "?")
    return {"server": name, "version": version}


def _worker(name: str, record: dict[str, str], now: datetime) -> dict[str, Any]:
    def number(field: str) -> int | None:
        value = record.get(field)
        return int(value) if value is not None and value.isdigit() else None

    try:
        age: float | None = round((now - datetime.fromisoformat(record["last_heartbeat"])).total_seconds(), 1)
    except (KeyError, ValueError):
        age = None
    try:
        rate: float | None = float(record["tokens_per_second"])
    except (KeyError, ValueError):
        rate = None
    return {
        "name": name,
        "model": record.get("model"),
        "engine": record.get("engine"),
        "mode": record.get("mode"),
        "slots": number("slots"),
        "live_slots": number("live_slots"),
        "in_flight": number("in_flight"),
        "tokens_per_second": rate,
        "last_heartbeat": record.get("last_heartbeat"),
        "heartbeat_age_seconds": age,
        "_oldest_wait": record.get("oldest_wait_seconds"),
    }


def collect_status(connection: redis.Redis) -> dict[str, Any]:
    """Workers and queues as plain data (what `--json` prints, less the `redis` section)."""
    now = datetime.now(UTC)
    workers = []
    names: Any = connection.smembers(keys.WORKERS_SET)
    for name in sorted(keys.as_text(n) for n in names):
        record: Any = connection.hgetall(keys.worker_heartbeat(name))
        if record:
            fields = {keys.as_text(k): keys.as_text(v) for k, v in record.items()}
            workers.append(_worker(name, fields, now))
    queue_keys: Any = connection.smembers(Queue.redis_queues_keys)
    prefix = Queue.redis_queue_namespace_prefix
    queue_names = {keys.as_text(key).removeprefix(prefix) for key in queue_keys}
    queue_names = {name for name in queue_names if name.startswith(keys.model_queue(""))}
    queue_names |= {keys.model_queue(w["model"]) for w in workers if w["model"]}  # served, even if unused
    started, failed = StartedJobRegistry.key_template, FailedJobRegistry.key_template
    queues = []
    for name in sorted(queue_names):
        model = name.removeprefix(keys.model_queue(""))
        waiting = int(connection.llen(prefix + name))
        queues.append(
            {
                "queue": name,
                "model": model,
                "waiting": waiting,
                "oldest_wait_seconds": _oldest_wait(connection, name, model, waiting, workers),
                # Entries whose heartbeat expired belong to dead workers; recovery retires them.
                "running": int(connection.zcount(started.format(name), time.time(), "+inf")),
                "failed": int(connection.zcard(failed.format(name))),
            }
        )
    for worker in workers:
        del worker["_oldest_wait"]
    return {"workers": workers, "queues": queues, "failed": sum(q["failed"] for q in queues)}


STATUS_USER = "status"
"""The read-only ACL user of deploy/redis/users.acl."""


def _oldest_wait(
    connection: redis.Redis, queue: str, model: str, waiting: int, workers: list[dict[str, Any]]
) -> float | None:
    if not waiting:
        return 0.0
    published = [float(w["_oldest_wait"]) for w in workers if w["model"] == model and w["_oldest_wait"]]
    if published:
        return max(published)
    if connection.connection_pool.connection_kwargs.get("username") == STATUS_USER:
        return None  # it may not read job hashes (and would only leave a denial in the ACL log)
    try:
        return oldest_wait_seconds(connection, queue)
    except redis.exceptions.NoPermissionError:
        return None


def gather(settings: Settings) -> dict[str, Any]:
    """The whole status; raises `QueueUnavailable` (one line) when Redis cannot be asked."""
    address = redis_address(settings)
    connection = sync_client(settings, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS, socket_timeout=5)
    try:
        server = server_info(connection)
        status = collect_status(connection)
    except (redis.ConnectionError, redis.TimeoutError) as error:
        # Sentinel's MasterNotFoundError appends the whole client's repr after " : ".
        reason = str(error).partition(" : <")[0]
        raise QueueUnavailable(f"cannot reach Redis at BRANDBOT_REDIS_URL ({address}): {reason}") from None
    except redis.exceptions.NoPermissionError:
        raise QueueUnavailable(
            f"BRANDBOT_REDIS_URL's user may not read the queues at {address}: use the `status` user"
        ) from None
    finally:
        connection.close()
    return {"redis": {"reachable": True, "address": address, **server}, **status}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def _cell(value: object) -> str:
    return "?" if value is None else str(value)


def print_status(status: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2))
        return
    # Piped output (scripts, CI logs) gets a wide table instead of wrapped cells.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    server = status["redis"]
    console.print(f"Redis {server['address']}: {server['server']} {server['version']}, reachable")
    table = Table(
        "worker",
        "model",
        "engine",
        "mode",
        "in flight",
        "live slots",
        "tokens/s",
        "heartbeat",
        title="Workers",
    )
    for w in status["workers"]:
        rate = w["tokens_per_second"]
        table.add_row(
            w["name"],
            _cell(w["model"]),
            _cell(w["engine"]),
            _cell(w["mode"]),
            _cell(w["in_flight"]),
            f"{_cell(w['live_slots'])}/{_cell(w['slots'])}",
            "?" if rate is None else f"{rate:.1f}",
            f"{_age(w['heartbeat_age_seconds'])} ago",
        )
    console.print(table if status["workers"] else "No workers alive.")
    queue_table = Table("queue", "waiting", "running", "failed", "oldest wait", title="Queues")
    for q in status["queues"]:
        queue_table.add_row(
            q["queue"],
            str(q["waiting"]),
            str(q["running"]),
            str(q["failed"]),
            _age(q["oldest_wait_seconds"]) if q["waiting"] else "—",
        )
    console.print(queue_table if status["queues"] else "No queues yet.")
    if status["failed"]:
        console.print(f"{status['failed']} failed jobs: `brandbot failed list` (as the admin user).")
