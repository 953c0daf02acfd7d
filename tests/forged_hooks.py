"""Functions an attacker could name in a forged RQ job hash (importable by a worker started in the repo).

Each leaves a mark in Redis when called, so a test sees whether the worker ran it. Nothing in brandbot
imports this module; only a worker that resolves names read from Redis would.
"""

from __future__ import annotations

from typing import Any

HOOK_RAN_KEY = "forged:hook-ran"


def leave_mark(job: Any, connection: Any, *rest: Any) -> None:
    """A callback's signature (`job, connection, …`): records which job ran it."""
    connection.rpush(HOOK_RAN_KEY, job.id)
