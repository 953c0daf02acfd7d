"""A question's conversation: the thread it was asked in, as turns the worker can render.

The thread is read with `conversations.replies` (paginated); the bot's own messages become assistant
turns, everyone else's user turns carrying their display name (`users.info`, cached, waited for briefly).
Mentions are turned into `@names`, links into their labels. The context is capped by message count and
characters, newest kept; the worker trims precisely to the model's window with the real tokenizer.
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from functools import partial
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.relay import STREAMING_CURSOR
from bots.slack.events import SlackQuestion, ts_order
from bots.slack.sink import SLACK_UNREACHABLE
from bots.turns import Said, recent_turns
from brandbot.contract import GenerationRequest, Platform, ReplyTarget, Role, Turn, UserRef
from brandbot.logs import get_logger

log = get_logger(__name__)

MAX_CONTEXT_MESSAGES = 30
"""Earlier messages of a thread read for context (the newest ones)."""

MAX_CONTEXT_CHARS = 16_000
"""Characters of context at most, newest kept."""

MAX_TURN_CHARS = 4_000
"""One earlier message contributes at most this much (its beginning)."""

REPLIES_PAGE_SIZE = 200
REPLIES_MAX_PAGES = 10
"""A thread longer than pages × page size is read only that far (Slack lists replies oldest first)."""

NAME_CACHE_SECONDS = 3600
NAME_CACHE_SIZE = 5000
NAME_WAIT_SECONDS = 0.25
"""Longest a question waits for a person's or channel's name before it is queued without it."""

USER_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|([^>]*))?>")
CHANNEL_MENTION = re.compile(r"<#([CGD][A-Z0-9]+)(?:\|([^>]*))?>")
SPECIAL_MENTION = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>|<!subteam\^[A-Z0-9]+(?:\|@?([^>]*))?>")
LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]*))?>")
DATE = re.compile(r"<!date\^[^|>]*\|([^>]*)>")


class PeopleDirectory:
    """Display names (`users.info`) and channel names (`conversations.info`), cached and de-duplicated:
    a burst of questions from one person costs one lookup.

    A question waits for a name at most `wait_seconds`, and in a burst only cached names are used: past
    that it is queued without it (the worker needs no name to start: the prompt says "a colleague") and the
    lookup goes on, for the next question.
    """

    def __init__(self, client: AsyncWebClient, *, wait_seconds: float = NAME_WAIT_SECONDS) -> None:
        self._client = client
        self._wait_seconds = wait_seconds
        self._cache: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lookups: dict[str, asyncio.Task[str]] = {}

    async def names(
        self, user_ids: Iterable[str], channel_id: str | None, *, look_up: bool = True
    ) -> tuple[dict[str, str], str]:
        """People's display names and the channel's name (`channel_id` None: none). Cached ones at once; the
        others are looked up together and waited for `wait_seconds` at most in all.

        Without `look_up` (a burst is being queued) only cached names are given and none is looked up: the
        burst's CPU goes to queueing it, and the next question asked in a quieter moment looks them up.
        """
        wanted = {f"user:{user_id}": partial(self._fetch_user, user_id) for user_id in set(user_ids)}
        if channel_id is not None:
            wanted[f"channel:{channel_id}"] = partial(self._fetch_channel, channel_id)
        found = {key: self._lookup(key, fetch, start=look_up) for key, fetch in wanted.items()}
        looking_up = [lookup for lookup in found.values() if isinstance(lookup, asyncio.Task)]
        if looking_up and look_up:
            _, slow = await asyncio.wait(looking_up, timeout=self._wait_seconds)  # not cancelled when slow
            if slow:
                log.info("name lookup slow, question queued without it", lookups=len(slow))
        names = {
            key.partition(":")[2]: _name(lookup) for key, lookup in found.items() if key.startswith("user:")
        }
        return names, "" if channel_id is None else _name(found[f"channel:{channel_id}"])

    def _lookup(
        self, key: str, fetch: Callable[[], Coroutine[Any, Any, str | None]], *, start: bool
    ) -> str | asyncio.Task[str]:
        """The cached name, or the look-up under way for it (started here if none is and `start`; else "")."""
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            self._cache.move_to_end(key)
            return hit[1]
        task = self._lookups.get(key)
        if task is None:
            if not start:
                return ""
            task = asyncio.ensure_future(self._fetch_and_keep(key, fetch))
            self._lookups[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return task

    async def _fetch_and_keep(self, key: str, fetch: Callable[[], Coroutine[Any, Any, str | None]]) -> str:
        value = await fetch()
        if value is None:
            return ""  # Slack unreachable: not cached, asked again next time
        self._cache[key] = (time.monotonic() + NAME_CACHE_SECONDS, value)
        self._cache.move_to_end(key)
        while len(self._cache) > NAME_CACHE_SIZE:
            self._cache.popitem(last=False)
        return value

    def _forget(self, key: str, done: asyncio.Task[str]) -> None:
        self._lookups.pop(key, None)
        if not done.cancelled() and done.exception() is not None:
            # Nobody may be waiting for it any more; say it once here instead of "never retrieved".
            log.warning(
                "name lookup failed", lookup=key.partition(":")[0], error=type(done.exception()).__name__
            )

    async def _fetch_user(self, user_id: str) -> str | None:
        try:
            user = (await self._client.users_info(user=user_id))["user"]
        except SlackApiError as error:
            log.info("user name not found", user_id=user_id, error=error.response.get("error"))
            return ""
        except SLACK_UNREACHABLE:
            return None
        profile = user.get("profile") or {}
        name = profile.get("display_name") or profile.get("real_name") or user.get("real_name")
        return str(name or user.get("name") or "")

    async def _fetch_channel(self, channel_id: str) -> str | None:
        try:
            channel = (await self._client.conversations_info(channel=channel_id))["channel"]
        except SlackApiError as error:
            log.info("channel name not found", channel_id=channel_id, error=error.response.get("error"))
            return ""
        except SLACK_UNREACHABLE:
            return None
        return "" if channel.get("is_im") else str(channel.get("name") or "")


def _name(lookup: str | asyncio.Task[str]) -> str:
    """A name found, or "" for a look-up still under way or failed (its failure is logged once, by itself)."""
    if isinstance(lookup, str):
        return lookup
    if not lookup.done() or lookup.cancelled() or lookup.exception() is not None:
        return ""
    return lookup.result()


def mentioned_user_ids(text: str) -> set[str]:
    return {match.group(1) for match in USER_MENTION.finditer(text)}


def readable_text(text: str, names: dict[str, str], bot_user_id: str | None, *, crowd: bool = True) -> str:
    """Slack markup as people read it: the bot's mention removed, `@names`, `#channels`, link labels.

    With `crowd=False` crowd mentions vanish (in a question they address people, not the bot).
    """

    def user(match: re.Match[str]) -> str:
        if match.group(1) == bot_user_id:
            return ""
        return "@" + (names.get(match.group(1)) or match.group(2) or "someone")

    def special(match: re.Match[str]) -> str:
        if not crowd:
            return ""
        return "@" + (match.group(1) or match.group(2) or "team")

    text = USER_MENTION.sub(user, text)
    text = CHANNEL_MENTION.sub(lambda m: "#" + (m.group(2) or "channel"), text)
    text = SPECIAL_MENTION.sub(special, text)
    text = DATE.sub(lambda m: m.group(1), text)
    text = LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(2) else m.group(1), text)
    return html.unescape(text).strip()


async def thread_history(
    client: AsyncWebClient, *, channel: str, thread_ts: str, before_ts: str
) -> list[dict[str, Any]]:
    """The newest messages of a thread written before `before_ts`, oldest first (at most the cap)."""
    window: deque[dict[str, Any]] = deque(maxlen=MAX_CONTEXT_MESSAGES)
    cursor: str | None = None
    for _ in range(REPLIES_MAX_PAGES):
        try:
            page = await client.conversations_replies(
                channel=channel, ts=thread_ts, limit=REPLIES_PAGE_SIZE, cursor=cursor
            )
        except SlackApiError as error:
            log.warning("thread not readable, answering without it", error=error.response.get("error"))
            break
        except SLACK_UNREACHABLE:
            log.warning("thread not readable, answering without it", error="unreachable")
            break
        found: list[dict[str, Any]] = page.get("messages", [])
        window.extend(m for m in found if ts_order(str(m.get("ts"))) < ts_order(before_ts))
        cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
        if not page.get("has_more") or not cursor:
            break
    return list(window)


async def conversation_request(
    client: AsyncWebClient,
    people: PeopleDirectory,
    question: SlackQuestion,
    *,
    persona: str,
    request_id: str,
    bot_user_id: str | None,
    look_up_names: bool = True,
) -> GenerationRequest:
    """The request for a question: its thread before it as turns, names resolved (those not cached only
    `look_up_names`), then the question."""
    history = (
        await thread_history(
            client, channel=question.channel_id, thread_ts=question.thread_ts, before_ts=question.ts
        )
        if question.in_existing_thread
        else []
    )
    ids = {question.user_id, *(str(m["user"]) for m in history if m.get("user"))}
    for text in [question.text, *(str(m.get("text", "")) for m in history)]:
        ids |= mentioned_user_ids(text)
    ids.discard(bot_user_id or "")  # its mention is dropped and its own turns carry no name
    # A DM has no channel name: the template says "a direct message".
    channel = None if question.is_direct_message else question.channel_id
    names, channel_name = await people.names(ids, channel, look_up=look_up_names)
    asker = names.get(question.user_id, "")
    return GenerationRequest(
        request_id=request_id,
        target=ReplyTarget(
            platform=Platform.SLACK,
            workspace_id=question.team_id,
            channel_id=question.channel_id,
            thread_id=question.thread_ts,
            message_id=question.ts,
        ),
        user=UserRef(id=question.user_id, display_name=asker),
        channel_name=channel_name,
        persona=persona,
        turns=[
            *to_turns(history, names, bot_user_id),
            Turn(
                role=Role.USER,
                content=readable_text(question.text, names, bot_user_id, crowd=False),
                name=asker or None,
            ),
        ],
    )


def to_turns(history: list[dict[str, Any]], names: dict[str, str], bot_user_id: str | None) -> list[Turn]:
    """Conversation turns of a thread's messages (see `bots.turns.recent_turns`)."""

    def newest_first() -> Iterator[Said]:
        for message in reversed(history):
            if message.get("subtype") not in (None, "thread_broadcast"):
                continue
            ours = bool(bot_user_id) and message.get("user") == bot_user_id
            text = _our_text(message) if ours else readable_text(message.get("text", ""), names, bot_user_id)
            yield Said(text, ours, None if ours else _author(message, names))

    return recent_turns(newest_first(), max_chars=MAX_CONTEXT_CHARS, max_turn_chars=MAX_TURN_CHARS)


def _our_text(message: dict[str, Any]) -> str:
    """What the bot wrote, as Markdown: a `markdown` block's text if it has one, else the message text."""
    for block in message.get("blocks") or []:
        if block.get("type") == "markdown" and block.get("text"):
            return str(block["text"]).removesuffix(STREAMING_CURSOR).strip()
    return str(message.get("text") or "").removesuffix(STREAMING_CURSOR).strip()


def _author(message: dict[str, Any], names: dict[str, str]) -> str:
    if message.get("bot_id"):
        profile = message.get("bot_profile") or {}
        return str(profile.get("name") or message.get("username") or "a bot")
    return names.get(str(message.get("user")), "")
