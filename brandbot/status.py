"""`brandbot status`: what an operator checks first — are workers alive, are queues moving."""

from __future__ import annotations

import sys
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
    names = {q.name for q in Queue.all(connection=connection) if q.name.startswith(keys.model_queue(""))}
    names |= {keys.model_queue(w["model"]) for w in workers if "model" in w}  # served, even if never used
    queues = []
    for name in sorted(names):
        queue = Queue(name, connection=connection)
        queues.append(
            {
                "queue": queue.name,
                "waiting": str(queue.count),
                # Counted without RQ's cleanup, which writes and reads job hashes: status stays
                # read-only and runs as the ACL's read-only `status` user.
                "running": str(StartedJobRegistry(queue=queue).get_job_count(cleanup=False)),
                "failed": str(FailedJobRegistry(queue=queue).get_job_count(cleanup=False)),
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
