"""The worker process's environment: no platform credentials, and no way to put the model hub online.

The GPU tier talks to Redis only. Front-end settings (Slack and Discord tokens and secrets) reach a worker
when one shell or `.env` starts every tier (`scripts/run`); the hub's offline switches can be turned
off by whoever starts the process. Removing a variable from `os.environ` leaves it in the process's
memory and in `/proc/<pid>/environ`, so the worker re-executes itself once with the sealed environment,
before anything is loaded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
"""Forced on, whatever the environment says: loading a model never reaches the network."""

PLATFORM_PREFIXES = ("BRANDBOT_SLACK_", "BRANDBOT_DISCORD_")
"""Front-end settings (tokens, signing secrets among them), which a worker has no use for."""


def sealed_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without platform settings (names are case-insensitive to our settings) and offline."""
    kept = {name: value for name, value in environ.items() if not name.upper().startswith(PLATFORM_PREFIXES)}
    return {**kept, **OFFLINE_ENVIRONMENT}


def seal_process_environment() -> None:
    """Re-execute this process with the sealed environment unless it already has it (then return)."""
    sealed = sealed_environment(os.environ)
    if sealed != dict(os.environ):
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], sealed)
