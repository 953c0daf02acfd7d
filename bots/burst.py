"""Who goes first when many questions arrive at once.

A company-wide announcement brings hundreds of mentions within a second, more than the front-end's event
loop has CPU for. Left alone, the loop does everything interleaved in arrival order: the acknowledgements
of later events wait behind the intake of earlier ones, and the placeholders of early questions hold up the
queueing of later ones. So a burst's work is done in order of urgency, across all of its questions:

1. acknowledgements, which have a deadline: Slack sends an event again if it is not acked within 3 s,
   Discord drops an interaction not deferred within 3 s. Intake starts once events stop arriving (a few
   turns of the event loop without a new one), or `ACK_FIRST_SECONDS` after the first at most;
2. queueing: once a question is in Redis, a worker can start on it;
3. showing life: a question's placeholder goes up once at most one question is still being queued, or
   `QUEUE_FIRST_SECONDS` after it was ready at most.

A lone question waits for neither: its arrival settles in a few idle turns of the loop, and it is the only
question being queued.

```python
order = BurstOrder()
arrival = order.arrive()          # as the event is handed over (acked already)
await order.arrivals_settled()    # intake starts
...                               # screened, queued
arrival.done()                    # queued, refused or dropped: no longer holds back placeholders
await order.queued_first()        # before a placeholder is posted
```
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

ACK_FIRST_SECONDS = 0.05
"""Longest intake waits for a burst's events to stop arriving (a no-op slack-bolt app acks 500 events in
about 40 ms on 2 cores); a longer burst is then taken in while it still arrives."""

QUIET_TURNS = 3
"""Turns of the event loop without a new question after which a burst has stopped arriving."""

QUEUE_FIRST_SECONDS = 0.3
"""Longest a placeholder waits for other questions to be queued before it goes up anyway."""

BURST_QUESTIONS = 8
"""More questions than this being queued at once is a burst: cosmetic look-ups (people's display names)
are then not waited for; the question is queued with what is known."""


@dataclass
class Arrival:
    """One question from its arrival until it is queued or dropped."""

    order: BurstOrder
    pending: bool = True

    def done(self) -> None:
        """Queued, refused, a duplicate or failed: it holds back others' placeholders no more (idempotent)."""
        if self.pending:
            self.pending = False
            self.order._left()


class BurstOrder:
    """Orders the work of the questions one front-end process takes in (one per `Conversations`)."""

    def __init__(
        self,
        *,
        ack_first_seconds: float = ACK_FIRST_SECONDS,
        queue_first_seconds: float = QUEUE_FIRST_SECONDS,
    ) -> None:
        self._ack_first_seconds = ack_first_seconds
        self._queue_first_seconds = queue_first_seconds
        self._arrivals = 0
        self._settling: asyncio.Task[None] | None = None
        self._pending = 0
        self._few_pending = asyncio.Event()  # at most one question is being queued
        self._few_pending.set()

    @property
    def pending(self) -> int:
        """Questions arrived and not yet queued or dropped."""
        return self._pending

    @property
    def in_burst(self) -> bool:
        return self._pending > BURST_QUESTIONS

    def arrive(self) -> Arrival:
        self._arrivals += 1
        self._pending += 1
        if self._pending > 1:
            self._few_pending.clear()
        return Arrival(self)

    async def arrivals_settled(self) -> None:
        """Return once questions stop arriving (or `ack_first_seconds` after this wait began, at most)."""
        if self._settling is None or self._settling.done():
            self._settling = asyncio.create_task(self._settle(), name="brandbot-burst-settle")
        await asyncio.shield(self._settling)

    async def queued_first(self) -> None:
        """Return once at most one question is still being queued (or `queue_first_seconds` later)."""
        if self._few_pending.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._queue_first_seconds):
                await self._few_pending.wait()

    async def _settle(self) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._ack_first_seconds
        quiet, seen = 0, self._arrivals
        while quiet < QUIET_TURNS and loop.time() < give_up_at:
            await asyncio.sleep(0)
            quiet = quiet + 1 if self._arrivals == seen else 0
            seen = self._arrivals

    def _left(self) -> None:
        self._pending -= 1
        if self._pending <= 1:
            self._few_pending.set()
