"""The faults, one scenario each: what is done to the running system, and when.

A fault waits until a share of the load is answered (answers are streaming then: every worker is
mid-generation, every front-end mid-relay), then acts. Some mark a question instead (`marked`): the
worker's test fault hooks act on the question's text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from brandbot.soak.load import Watch
from brandbot.soak.stack import POISON_MARKER, STALL_MARKER, SoakStack

FAULT_WAIT_SECONDS = 120.0
"""Longest wait for the share of answers a fault waits for (it acts then anyway)."""

Act = Callable[[SoakStack, Watch], Awaitable[None]]


async def nothing(_stack: SoakStack, _watch: Watch) -> None:
    """Load alone: the baseline."""


async def kill_workers(stack: SoakStack, watch: Watch) -> None:
    """SIGKILL a worker mid-generation, twice (a second worker once the first is back)."""
    names = stack.worker_names()
    await watch.until_settled_share(0.15, FAULT_WAIT_SECONDS)
    stack.kill(names[0])
    await watch.until_settled_share(0.45, FAULT_WAIT_SECONDS)
    stack.kill(names[1 % len(names)])


async def kill_front_ends(stack: SoakStack, watch: Watch) -> None:
    """SIGKILL the Slack front-end mid-stream, then the Discord one; the restart policy starts each again."""
    await watch.until_settled_share(0.15, FAULT_WAIT_SECONDS)
    stack.kill("slack")
    await watch.until_settled_share(0.45, FAULT_WAIT_SECONDS)
    stack.kill("discord")


async def restart_redis(stack: SoakStack, watch: Watch) -> None:
    """Stop Redis and start it again (append-only: the queue and the in-flight records survive)."""
    await watch.until_settled_share(0.3, FAULT_WAIT_SECONDS)
    await stack.restart_redis()


async def drop_slack(stack: SoakStack, watch: Watch) -> None:
    """Slack closes the Socket Mode connection without warning."""
    await watch.until_settled_share(0.3, FAULT_WAIT_SECONDS)
    await stack.slack.drop_connections(abort=True)


async def drop_discord(stack: SoakStack, watch: Watch) -> None:
    """Discord closes the gateway connection (the session may resume)."""
    await watch.until_settled_share(0.3, FAULT_WAIT_SECONDS)
    await stack.discord.drop_connection(resumable=True)


@dataclass(frozen=True)
class Fault:
    name: str
    act: Act
    marker: str | None = None
    """Text added to one question of the load (a worker fault hook acts on it)."""
    marker_expects_error: bool = True
    notes: list[str] = field(default_factory=list)


FAULTS: dict[str, Fault] = {
    fault.name: fault
    for fault in (
        Fault("none", nothing),
        Fault("worker-kill", kill_workers),
        Fault("front-end-kill", kill_front_ends),
        Fault("redis-restart", restart_redis),
        Fault("slack-drop", drop_slack),
        Fault("discord-drop", drop_discord),
        Fault("poison", nothing, marker=POISON_MARKER),
        # The stalling question sticks every engine that takes it, the retry's too: one clear error.
        Fault("engine-stall", nothing, marker=STALL_MARKER),
    )
}
