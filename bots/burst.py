"""Who goes first when many questions arrive at once.

A company-wide announcement brings hundreds of mentions within a second, more than the front-end's event
loop has CPU for. Left alone, the loop does everything interleaved in arrival order: the acknowledgements
of later events wait behind the intake of earlier ones, and the placeholders and answers of early
questions hold up the queueing of later ones. So a burst's work is done in order of urgency, across all of
its questions:

1. acknowledgements, which have a deadline: Slack sends an event again if it is not acked within 3 s,
   Discord drops an interaction not deferred within 3 s. Intake starts once events stop arriving (a few
   turns of the event loop without a new one), or `ACK_FIRST_SECONDS` after the first at most;
2. queueing: once a question is in Redis, a worker can start on it;
3. placeholders: one goes up once at most one question is still being queued, or `QUEUE_FIRST_SECONDS`
   after it was ready at most;
4. answers: a relay starts once at most one placeholder is still to go up, or `SHOW_FIRST_SECONDS` later.

Stages 3 and 4 hold back only in a burst (more than `BURST_QUESTIONS` in the stage before): a few questions
at once each go their own pace, so one waiting for a slow name look-up or thread read delays no other's
placeholder. A lone question's arrival settles in a few idle turns of the loop.

```python
order = BurstOrder()
arrival = order.arrive()          # as the event is handed over (acked already)
await order.arrivals_settled()    # intake starts
await order.queued_first()        # before a placeholder is posted
arrival.queued()                  # in Redis, or not to be queued: others' placeholders may go up
arrival.shown()                   # its placeholder is up, or none will be: answers may be relayed
await order.shown_first()         # before an answer is relayed
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

SHOW_FIRST_SECONDS = 0.5
"""Longest an answer waits for other questions' placeholders before it is relayed anyway."""

BURST_QUESTIONS = 8
"""More questions than this being queued at once is a burst: cosmetic look-ups (people's display names)
are then left out; the question is queued with what is known."""


class _Stage:
    """The questions that have not passed one stage yet."""

    def __init__(self, burst_questions: int) -> None:
        self._burst_questions = burst_questions
        self.count = 0
        self._nearly_passed = asyncio.Event()  # at most one question has not
        self._nearly_passed.set()

    def enter(self) -> None:
        self.count += 1
        if self.count > 1:
            self._nearly_passed.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 1:
            self._nearly_passed.set()

    @property
    def in_burst(self) -> bool:
        return self.count > self._burst_questions

    async def nearly_passed(self, patience_seconds: float) -> None:
        """Return at once unless a burst is in this stage; then once at most one question has not passed
        (or `patience_seconds` later)."""
        if not self.in_burst:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(patience_seconds):
                await self._nearly_passed.wait()


@dataclass
class Arrival:
    """One question on its way through the stages (each step is idempotent)."""

    order: BurstOrder
    unqueued: bool = True
    unshown: bool = True

    def queued(self) -> None:
        """In Redis, or not to be queued (refused, a duplicate, failed): holds back placeholders no more."""
        if self.unqueued:
            self.unqueued = False
            self.order._queueing.leave()

    def shown(self) -> None:
        """Its placeholder is up, or none will be: holds back answers no more."""
        self.queued()
        if self.unshown:
            self.unshown = False
            self.order._showing.leave()


class BurstOrder:
    """Orders the work of the questions one front-end process takes in (one per `Conversations`)."""

    def __init__(
        self,
        *,
        ack_first_seconds: float = ACK_FIRST_SECONDS,
        queue_first_seconds: float = QUEUE_FIRST_SECONDS,
        show_first_seconds: float = SHOW_FIRST_SECONDS,
        burst_questions: int = BURST_QUESTIONS,
    ) -> None:
        self._ack_first_seconds = ack_first_seconds
        self._queue_first_seconds = queue_first_seconds
        self._show_first_seconds = show_first_seconds
        self._arrivals = 0
        self._settling: asyncio.Task[None] | None = None
        self._queueing = _Stage(burst_questions)
        self._showing = _Stage(burst_questions)

    @property
    def pending(self) -> int:
        """Questions arrived and not yet queued (or dropped)."""
        return self._queueing.count

    @property
    def in_burst(self) -> bool:
        """More than `burst_questions` are being queued."""
        return self._queueing.in_burst

    def arrive(self) -> Arrival:
        self._arrivals += 1
        self._queueing.enter()
        self._showing.enter()
        return Arrival(self)

    async def arrivals_settled(self) -> None:
        """Return once questions stop arriving (or `ack_first_seconds` after this wait began, at most)."""
        if self._settling is None or self._settling.done():
            self._settling = asyncio.create_task(self._settle(), name="brandbot-burst-settle")
        await asyncio.shield(self._settling)

    async def queued_first(self) -> None:
        """In a burst, return once at most one question is still being queued (or `queue_first_seconds`
        later); at once otherwise."""
        await self._queueing.nearly_passed(self._queue_first_seconds)

    async def shown_first(self) -> None:
        """In a burst, return once at most one placeholder is still to go up (or `show_first_seconds`
        later); at once otherwise."""
        await self._showing.nearly_passed(self._show_first_seconds)

    async def _settle(self) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._ack_first_seconds
        quiet, seen = 0, self._arrivals
        while quiet < QUIET_TURNS and loop.time() < give_up_at:
            await asyncio.sleep(0)
            quiet = quiet + 1 if self._arrivals == seen else 0
            seen = self._arrivals
