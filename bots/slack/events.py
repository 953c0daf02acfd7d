"""Which Slack events are questions for the bot, and what each question is — no network, no Redis.

Questions come from a mention in a channel (`app_mention`), any message in a DM with the app
(`message.im`, also Slack's AI-assistant threads), and — where enabled — a reply in a thread the bot
already answers in, without a new mention. Never a question: edits and other message subtypes, anything
from a bot (the bot's own messages included), and a message that is only `@here`/`@channel` or is
addressed to someone else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from slack_bolt.request.internals import extract_actor_team_id, extract_team_id

from bots.access import Asker
from brandbot.logs import get_logger

log = get_logger(__name__)

ANSWERABLE_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
"""Subtypes of what a person writes; everything else (edits, joins, bot posts, deletions) is no question."""

USER_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
CROWD_MENTION = re.compile(r"<!(?:here|channel|everyone)(?:\|[^>]*)?>|<!subteam\^[A-Z0-9]+(?:\|[^>]*)?>")
PLAIN_CROWD = re.compile(r"(?<!\w)@(?:here|channel|everyone)\b", re.IGNORECASE)

TEXT_FIELDS = (
    "user",
    "channel",
    "ts",
    "text",
    "thread_ts",
    "team",
    "channel_type",
    "subtype",
    "client_msg_id",
)
"""Fields of a message event that must be strings where present; anything else is a malformed event."""

SLACK_ID = re.compile(r"^[A-Za-z0-9._-]{1,40}$")


class Trigger(StrEnum):
    MENTION = "mention"
    DIRECT_MESSAGE = "direct_message"
    THREAD_FOLLOWUP = "thread_followup"


@dataclass(frozen=True)
class SlackQuestion:
    """One question as the front-end needs it; `text` is Slack's raw markup (mentions still as ids)."""

    trigger: Trigger
    team_id: str | None
    channel_id: str
    user_id: str
    ts: str  # the question's own message
    thread_ts: str  # where the answer goes
    text: str
    dedup_ids: tuple[str, ...]  # every id a retry, replay or twin event of this message carries
    asker_team_id: str | None = None  # the asker's own workspace (None: Slack did not say)
    is_external: bool = False  # from another workspace than the app's, in a Slack Connect conversation

    @property
    def is_direct_message(self) -> bool:
        return self.trigger is Trigger.DIRECT_MESSAGE

    @property
    def explicit(self) -> bool:
        """Addressed to the bot on purpose: refusals are explained (a thread reply may not be for us)."""
        return self.trigger is not Trigger.THREAD_FOLLOWUP

    @property
    def in_existing_thread(self) -> bool:
        return self.thread_ts != self.ts

    @property
    def asker(self) -> Asker:
        return Asker(
            user_id=self.user_id,
            channel_id=self.channel_id,
            is_direct_message=self.is_direct_message,
            team_id=self.asker_team_id,
            is_external=self.is_external,
        )


def addressed_text(text: str, bot_user_id: str | None) -> str:
    """The text without the bot's mention and without crowd mentions (they address people, not us)."""
    text = USER_MENTION.sub(lambda m: "" if m.group(1) == bot_user_id else m.group(0), text)
    return PLAIN_CROWD.sub("", CROWD_MENTION.sub("", text)).strip()


def from_mention(
    event: dict[str, Any], body: dict[str, Any], bot_user_id: str | None
) -> SlackQuestion | None:
    """An `app_mention`: a question (maybe empty: the caller answers with a hint) or None."""
    if _malformed(event, body, required=("user", "channel", "ts")):
        return None
    if not _written_by_a_person(event, bot_user_id):
        return None
    return _question(Trigger.MENTION, event, body, event.get("thread_ts") or event["ts"])


def from_message(
    event: dict[str, Any], body: dict[str, Any], bot_user_id: str | None
) -> SlackQuestion | None:
    """A `message` event: a DM, or a reply in a thread (the caller checks the bot is part of it)."""
    if _malformed(event, body, required=() if event.get("subtype") else ("user", "channel", "ts")):
        return None
    if not _written_by_a_person(event, bot_user_id) or not addressed_text(event.get("text", ""), bot_user_id):
        return None
    if event.get("channel_type") == "im":
        # DMs are answered in a thread of their own, so a conversation's context is its thread.
        return _question(Trigger.DIRECT_MESSAGE, event, body, event.get("thread_ts") or event["ts"])
    thread_ts = event.get("thread_ts")
    if not thread_ts or thread_ts == event["ts"]:
        return None
    if _mentions_anyone(event.get("text", "")):
        return None  # the bot's mention arrives as app_mention too; others' mentions are for them
    return _question(Trigger.THREAD_FOLLOWUP, event, body, thread_ts)


def _malformed(event: Any, body: dict[str, Any], *, required: tuple[str, ...]) -> bool:
    """True (after one log line, ids only) if the event cannot be a well-formed message."""
    well_formed = isinstance(event, dict) and all(
        isinstance(event.get(name), str)
        if name in required
        else event.get(name) is None or isinstance(event.get(name), str)
        for name in TEXT_FIELDS
    )
    if not well_formed:
        log.warning("malformed slack event dropped", event_id=slack_id(body.get("event_id")))
    return not well_formed


def slack_id(value: object) -> str | None:
    """`value` if it looks like a Slack id (safe to log), else None."""
    return value if isinstance(value, str) and SLACK_ID.match(value) else None


def _written_by_a_person(event: dict[str, Any], bot_user_id: str | None) -> bool:
    user = event.get("user")
    return bool(
        user
        and user != bot_user_id
        and not event.get("bot_id")
        and not event.get("edited")
        and not event.get("hidden")
        and event.get("subtype") in ANSWERABLE_SUBTYPES
        and event.get("channel")
        and event.get("ts")
    )


def _mentions_anyone(text: str) -> bool:
    return bool(USER_MENTION.search(text) or CROWD_MENTION.search(text) or PLAIN_CROWD.search(text))


def _question(trigger: Trigger, event: dict[str, Any], body: dict[str, Any], thread_ts: str) -> SlackQuestion:
    channel, ts = str(event["channel"]), str(event["ts"])
    dedup = [f"msg:{channel}:{ts}"]
    if body.get("event_id"):
        dedup.append(f"event:{body['event_id']}")
    if event.get("client_msg_id"):
        dedup.append(f"client:{event['client_msg_id']}")
    # slack_bolt's reading of who acts; in Slack Connect, a person whose workspace it cannot name is external.
    asker_team = extract_actor_team_id(body)
    return SlackQuestion(
        trigger=trigger,
        team_id=body.get("team_id") or event.get("team"),
        channel_id=channel,
        user_id=str(event["user"]),
        ts=ts,
        thread_ts=str(thread_ts),
        text=str(event.get("text", "")),
        dedup_ids=tuple(dedup),
        asker_team_id=asker_team,
        is_external=body.get("is_ext_shared_channel") is True and asker_team != extract_team_id(body),
    )


def ts_order(ts: str) -> tuple[int, int]:
    """Slack timestamps compare as numbers (seconds, microseconds), not as strings."""
    seconds, _, fraction = ts.partition(".")
    try:
        return int(seconds), int((fraction + "000000")[:6])
    except ValueError:
        return 0, 0
