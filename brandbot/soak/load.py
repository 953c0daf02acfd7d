"""The people asking, and a watch over what they see.

Questions go in all at once, a share through Discord, the rest through Slack, spread over channels and
people. Slack's own promise is kept for it: an event not acknowledged within `SLACK_RETRY_SECONDS` is
delivered again with the same event id (Slack retries up to three times), as the real Slack does while a
front-end is down. Discord's gateway sends an event once; a session that resumes gets what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from brandbot.soak.sight import (
    Seen,
    discord_replies,
    seen_in_discord,
    seen_in_slack,
    slack_replies,
    slack_text,
    visible_text,
)
from brandbot.soak.stack import SoakStack

SLACK_RETRY_SECONDS = 3.0
SLACK_RETRIES = 3
WATCH_INTERVAL_SECONDS = 0.1
QUIET_SECONDS = 3.0
"""After the last question settles, the watch goes on this long: a duplicate or a late edit shows up."""
QUESTION_TEXT = "question {index}: how do I reset my password?"


class Platform(StrEnum):
    SLACK = "slack"
    DISCORD = "discord"


@dataclass
class Question:
    index: int
    platform: Platform
    key: str  # Slack: "<channel>/<ts>"; Discord: the question's message id
    sent_at: float
    expect_error: bool = False
    first_text_at: float | None = None
    settled_at: float | None = None
    answers: int = 0
    errors: int = 0
    writing: int = 0

    @property
    def settled(self) -> bool:
        return self.settled_at is not None and not self.writing


@dataclass
class SlackDelivery:
    """One Slack event and its deliveries, until acknowledged."""

    event: dict[str, Any]
    event_id: str
    envelope_ids: list[str] = field(default_factory=list)
    last_sent: float = 0.0


class People:
    """Everyone asking, across scenarios (question numbers and Slack event ids never repeat)."""

    def __init__(self, stack: SoakStack) -> None:
        self.stack = stack
        self._next = 0
        self._slack_pending: list[SlackDelivery] = []
        for index in range(stack.plan.users):
            stack.slack.add_user(slack_user(index), f"person{index}", real_name=f"Person {index}")

    async def ask(self, count: int, *, discord_share: float, marked: dict[int, str]) -> list[Question]:
        """`count` questions at once; `marked` adds a marker to the question at that position."""
        first, self._next = self._next, self._next + count
        every = round(1 / discord_share) if discord_share > 0 else 0

        async def one(position: int) -> Question:
            index = first + position
            text = QUESTION_TEXT.format(index=index)
            if position in marked:
                text = f"{text} {marked[position]}"
            if every and position % every == every - 1:
                return await self._ask_discord(index, text, expect_error=position in marked)
            return await self._ask_slack(index, text, expect_error=position in marked)

        return list(await asyncio.gather(*(one(position) for position in range(count))))

    async def _ask_slack(self, index: int, text: str, *, expect_error: bool) -> Question:
        slack, users = self.stack.slack, self.stack.plan.users
        channel, user = f"CS{index % self.stack.plan.channels:04d}", slack_user(index % users)
        full = f"<@{slack.bot_user_id}> {text}"
        message = slack.add_user_message(channel=channel, user=user, text=full)
        event = {"type": "app_mention", "user": user, "text": full, "channel": channel, "ts": message.ts}
        delivery = SlackDelivery(
            {**event, "team": slack.team_id, "event_ts": message.ts}, f"EvSoak{index:07d}"
        )
        sent_at = time.monotonic()
        await self._deliver(delivery)
        self._slack_pending.append(delivery)
        return Question(index, Platform.SLACK, f"{channel}/{message.ts}", sent_at, expect_error)

    async def _ask_discord(self, index: int, text: str, *, expect_error: bool) -> Question:
        stack = self.stack
        channels = stack.discord_channels()
        author = stack.discord_user(index % stack.plan.users)
        sent_at = time.monotonic()
        message = await stack.discord.send_message(
            channel_id=channels[index % len(channels)],
            author=author,
            content=f"<@{stack.discord.bot_user['id']}> {text}",
        )
        return Question(index, Platform.DISCORD, str(message["id"]), sent_at, expect_error)

    async def _deliver(self, delivery: SlackDelivery) -> None:
        delivery.last_sent = time.monotonic()
        attempt = len(delivery.envelope_ids)
        with contextlib.suppress(AssertionError):  # no client connected yet: the next round tries again
            envelope = await self.stack.slack.send_event(
                delivery.event,
                event_id=delivery.event_id,
                retry_attempt=attempt,
                retry_reason="timeout" if attempt else "",
            )
            delivery.envelope_ids.append(envelope)

    async def redeliver_unacknowledged(self) -> None:
        """Slack's retries: an event with no ack after `SLACK_RETRY_SECONDS` is sent again."""
        acks, now = self.stack.slack.acks, time.monotonic()
        still = []
        for delivery in self._slack_pending:
            if any(envelope in acks for envelope in delivery.envelope_ids):
                continue
            if len(delivery.envelope_ids) > SLACK_RETRIES:
                continue  # Slack gives up too
            still.append(delivery)
            if now - delivery.last_sent >= SLACK_RETRY_SECONDS:
                await self._deliver(delivery)
        self._slack_pending = still


def slack_user(index: int) -> str:
    return f"US{index:05d}"


class Watch:
    """What each question shows, sampled every `WATCH_INTERVAL_SECONDS`, with the times it changed."""

    def __init__(self, people: People, questions: list[Question]) -> None:
        self.people = people
        self.questions = questions
        self.on_settled: Callable[[int], None] = lambda _count: None

    def settled_count(self) -> int:
        return sum(1 for q in self.questions if q.settled)

    def look(self) -> None:
        now = time.monotonic()
        stack = self.people.stack
        slack, discord = slack_replies(stack.slack), discord_replies(stack.discord)
        before = self.settled_count()
        for question in self.questions:
            seen: list[tuple[Seen, str]]
            if question.platform is Platform.SLACK:
                channel, ts = question.key.split("/")
                seen = [(seen_in_slack(m), slack_text(m)) for m in slack.get((channel, ts), [])]
            else:
                seen = [
                    (seen_in_discord(m), str(m.get("content") or "")) for m in discord.get(question.key, [])
                ]
            if question.first_text_at is None and any(visible_text(text) for _, text in seen):
                question.first_text_at = now
            question.answers = sum(1 for state, _ in seen if state is Seen.ANSWER)
            question.errors = sum(1 for state, _ in seen if state is Seen.ERROR)
            question.writing = sum(1 for state, _ in seen if state is Seen.WRITING)
            if question.settled_at is None and (question.answers or question.errors) and not question.writing:
                question.settled_at = now
                if question.first_text_at is None:
                    question.first_text_at = now  # an error notice is the first text the person sees
        after = self.settled_count()
        if after > before:
            self.on_settled(after - before)

    async def run(self) -> None:
        while True:
            self.look()
            await self.people.redeliver_unacknowledged()
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)

    async def until_settled_share(self, share: float, timeout: float) -> None:  # noqa: ASYNC109
        """Until `share` of the questions are settled (or `timeout`): when a fault hits mid-load."""
        deadline = time.monotonic() + timeout
        while self.settled_count() < share * len(self.questions) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)

    async def until_all_settled(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Until every question is settled and stays so for `QUIET_SECONDS`; False at `timeout`."""
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if self.settled_count() == len(self.questions):
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= QUIET_SECONDS:
                    return True
            else:
                quiet_since = None
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
        return False
