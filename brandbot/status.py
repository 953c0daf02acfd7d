"""`brandbot status`: what an operator checks first — are workers alive, are queues moving.

Read-only by construction: it counts raw keys (SMEMBERS, HGETALL, LLEN, ZCOUNT, ZCARD) and never reads a
job. RQ's own counters would not do: `registry.count` first cleans the registry up (moving jobs, running
their failure callbacks), and fetching a job deserialises whatever the hash holds.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import redis
from rich.console import Console
from rich.table import Table
from rq import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry

from brandbot import keys
from brandbot.connections import sync_client
from brandbot.errors import QueueUnavailable
from brandbot.settings import Settings


def collect_status(connection: redis.Redis) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    workers = []
    names: Any = connection.smembers(keys.WORKERS_SET)
    for name in sorted(keys.as_text(n) for n in names):
        record: Any = connection.hgetall(keys.worker_heartbeat(name))
        if record:
            workers.append({"name": name, **{keys.as_text(k): keys.as_text(v) for k, v in record.items()}})
    queue_keys: Any = connection.smembers(Queue.redis_queues_keys)
    prefix = Queue.redis_queue_namespace_prefix
    queue_names = {keys.as_text(key).removeprefix(prefix) for key in queue_keys}
    queue_names = {name for name in queue_names if name.startswith(keys.model_queue(""))}
    queue_names |= {keys.model_queue(w["model"]) for w in workers if "model" in w}  # served, even if unused
    started, failed = StartedJobRegistry.key_template, FailedJobRegistry.key_template
    queues = []
    for name in sorted(queue_names):
        queues.append(
            {
                "queue": name,
                "waiting": str(connection.llen(prefix + name)),
                # Entries whose heartbeat expired belong to dead workers; recovery retires them.
                "running": str(connection.zcount(started.format(name), time.time(), "+inf")),
                "failed": str(connection.zcard(failed.format(name))),
            }
        )
    return workers, queues


def print_status(settings: Settings) -> None:
    connection = sync_client(settings, socket_connect_timeout=3)
    try:
        workers, queues = collect_status(connection)
    except redis.ConnectionError as error:
        raise QueueUnavailable(f"cannot reach Redis at BRANDBOT_REDIS_URL ({error})") from None
    except redis.exceptions.NoPermissionError as error:
        raise QueueUnavailable(f"BRANDBOT_REDIS_URL's user may not read the queues ({error})") from None
    # Piped output (scripts, CI logs) gets a wide table instead of wrapped cells.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    table = Table(
        "worker", "model", "engine", "mode", "in flight", "slots", "last heartbeat", title="Workers"
    )
    for w in workers:
        table.add_row(
            w["name"],
            w.get("model", "?"),
            w.get("engine", "?"),
            w.get("mode", "?"),
            w.get("in_flight", "?"),
            w.get("slots", "?"),
            w.get("last_heartbeat", "?"),
        )
    console.print(table if workers else "No workers alive.")
    queue_table = Table("queue", "waiting", "running", "failed", title="Queues")
    for q in queues:
        queue_table.add_row(q["queue"], q["waiting"], q["running"], q["failed"])
    console.print(queue_table if queues else "No queues yet.")
