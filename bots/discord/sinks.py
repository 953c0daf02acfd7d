"""Where one Discord answer is written: channel messages, or an interaction's own messages.

Both are `bots.relay.MessageSink`s, so the shared `StreamingEditor` drives them (`DiscordEditor` adds the
👍/👎 buttons to the last message of a finished answer, never to an error notice). Every send and edit
pings nobody (`allowed_mentions` with an empty `parse`), whatever the model wrote. A sink's `state()` is
JSON (ids only, never text), kept in Redis so a restarted front-end can finish the answer in the same
messages: it then `adopt`s them in order instead of posting new ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import discord
from discord.http import Route

from bots.discord.rating import rating_view
from bots.relay import EMPTY_ANSWER
from bots.splitting import split_message
from bots.surface import AnswerEditor, Undeliverable
from brandbot import messages
from brandbot.logs import get_logger

log = get_logger(__name__)

DISCORD_MAX_CHARS = 2000
"""Discord rejects longer message content with 400 / 50035."""

INVALID_FORM_BODY = 50035

SAFE_RETRY_CHARS = 1900
"""A body Discord rejected is sent once more, clipped to this and without a reply reference."""

INTERACTION_TOKEN_SECONDS = 15 * 60
"""An interaction's token (its webhook) works this long after the command."""

TOKEN_MARGIN_SECONDS = 60
"""The answer moves to normal messages this long before the token dies: the move itself needs the token."""

NO_PINGS = discord.AllowedMentions.none()
EPHEMERAL_FLAG = 1 << 6
ORIGINAL = "original"
"""The id a sink gives an interaction's own (deferred) response."""

T = TypeVar("T")


class DeliveryFailed(Undeliverable):
    """Discord refused a message of this answer for good (deleted, no permission, or still invalid)."""

    def __init__(self, action: str, error: discord.HTTPException) -> None:
        super().__init__(f"{action}: HTTP {error.status}, code {error.code}")
        self.status, self.code = error.status, error.code


def clip(text: str) -> str:
    return text if len(text) <= SAFE_RETRY_CHARS else text[: SAFE_RETRY_CHARS - 1] + "…"


async def deliver(action: str, call: Callable[[bool], Awaitable[T]]) -> T:
    """Run one Discord call; a rejected body (50035) is tried once more in its safe form (`call(True)`).

    discord.py already waits out 429s (honouring retry-after) and retries 5xx; what still fails is final.
    """
    try:
        return await call(False)
    except discord.HTTPException as error:
        if error.code != INVALID_FORM_BODY:
            raise DeliveryFailed(action, error) from error
        log.warning("discord rejected a message body, sending it clipped", action=action, code=error.code)
    try:
        return await call(True)
    except discord.HTTPException as error:
        raise DeliveryFailed(action, error) from error


@dataclass
class ChannelWriter:
    """Posts, edits and deletes the bot's own messages in one channel, thread or DM."""

    channel: discord.PartialMessageable

    @property
    def channel_id(self) -> int:
        return self.channel.id

    async def send(self, text: str, *, reply_to: int | None, view: discord.ui.View | None = None) -> str:
        async def attempt(safe: bool) -> discord.Message:
            extra: dict[str, Any] = {} if view is None else {"view": view}
            if reply_to is not None and not safe:
                extra["reference"] = discord.MessageReference(
                    message_id=reply_to, channel_id=self.channel.id, fail_if_not_exists=False
                )
            return await self.channel.send(
                clip(text) if safe else text, allowed_mentions=NO_PINGS, mention_author=False, **extra
            )

        return str((await deliver("post", attempt)).id)

    async def edit(self, message_id: str, text: str, *, view: discord.ui.View | None = None) -> None:
        message = self.channel.get_partial_message(int(message_id))
        extra: dict[str, Any] = {} if view is None else {"view": view}  # `view=None` would remove buttons

        async def attempt(safe: bool) -> None:
            await message.edit(content=clip(text) if safe else text, allowed_mentions=NO_PINGS, **extra)

        await deliver("edit", attempt)

    async def delete(self, message_id: str) -> None:
        try:
            await self.channel.get_partial_message(int(message_id)).delete()
        except discord.NotFound:
            pass  # already gone: that is what we wanted
        except discord.HTTPException as error:
            log.info("could not delete a message", status=error.status, code=error.code)


@dataclass
class InteractionWriter:
    """An interaction's webhook: its original (deferred) response and follow-ups, by application id and token.

    Plain REST routes rather than `discord.Interaction` methods, because a restarted front-end holds only
    the token, never the `Interaction` object; discord.py's HTTP client still applies its rate limits.
    """

    http: discord.http.HTTPClient
    application_id: int
    token: str
    private: bool

    def _payload(self, text: str, view: discord.ui.View | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"content": text, "allowed_mentions": NO_PINGS.to_dict()}
        if view is not None:
            payload["components"] = view.to_components()
        return payload

    def _route(self, method: str, tail: str = "", **params: Any) -> Route:
        return Route(
            method,
            "/webhooks/{webhook_id}/{webhook_token}" + tail,
            webhook_id=self.application_id,
            webhook_token=self.token,
            **params,
        )

    async def edit(self, message_id: str, text: str, *, view: discord.ui.View | None = None) -> None:
        if message_id == ORIGINAL:
            route = self._route("PATCH", "/messages/@original")
        else:
            route = self._route("PATCH", "/messages/{message_id}", message_id=message_id)

        async def attempt(safe: bool) -> None:
            await self.http.request(route, json=self._payload(clip(text) if safe else text, view))

        await deliver("edit", attempt)

    async def send(self, text: str, *, view: discord.ui.View | None = None) -> str:
        async def attempt(safe: bool) -> Any:
            payload = self._payload(clip(text) if safe else text, view)
            if self.private:
                payload["flags"] = EPHEMERAL_FLAG  # a follow-up of a private answer must stay private
            return await self.http.request(self._route("POST"), json=payload, params={"wait": "true"})

        return str((await deliver("follow-up", attempt))["id"])

    async def delete(self, message_id: str) -> None:
        try:
            await self.http.request(self._route("DELETE", "/messages/{message_id}", message_id=message_id))
        except discord.HTTPException as error:
            log.info("could not delete an interaction message", status=error.status, code=error.code)


@dataclass(kw_only=True)
class _AdoptingSink(ABC):
    """What both sinks share: the ids they show, adoption of an earlier process's messages, change hook."""

    message_ids: list[str] = field(default_factory=list)
    adopt: list[str] = field(default_factory=list)  # ids to reuse, in order, before posting new ones
    on_change: Callable[[], Awaitable[None]] | None = None  # called when `state()` changed
    max_chars: int = DISCORD_MAX_CHARS
    rating_for: str | None = None  # the request a finished answer's 👍/👎 rate; None: no buttons
    rating_at: int | None = None  # which message carries them, set by the editor for the final render

    async def post(self, text: str) -> str:
        view = self._buttons(len(self.message_ids))
        if self.adopt:
            message_id = self.adopt.pop(0)
            if self.message_ids:  # the first keeps what it shows until the stream replays over it
                await self._edit(message_id, text, view)
        else:
            message_id = await self._post_new(text, view)
        self.message_ids.append(message_id)
        await self._changed()
        return message_id

    async def edit(self, message_id: str, text: str) -> None:
        index = self.message_ids.index(message_id) if message_id in self.message_ids else None
        await self._edit(message_id, text, self._buttons(index))

    def _buttons(self, index: int | None) -> discord.ui.View | None:
        if self.rating_for is None or self.rating_at is None or index != self.rating_at:
            return None
        return rating_view(self.rating_for)

    async def delete(self, message_id: str) -> None:
        await self._delete(message_id)
        if message_id in self.message_ids:
            self.message_ids.remove(message_id)
        await self._changed()

    async def discard_leftovers(self) -> None:
        """Delete adopted messages the finished answer did not need (an earlier render had more parts)."""
        while self.adopt:
            await self._delete(self.adopt.pop())

    async def prepare_resume(self) -> None:  # noqa: B027 - deliberately nothing to do on Discord
        """Nothing to settle: an adopted message is simply edited again."""

    async def abandon(self) -> None:  # noqa: B027 - deliberately nothing to do on Discord
        """Nothing to take down: Discord refused the message itself."""

    async def after_answer(self) -> None:  # noqa: B027 - deliberately nothing to do on Discord
        """No status line to clear."""

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    @abstractmethod
    async def _edit(self, message_id: str, text: str, view: discord.ui.View | None) -> None: ...

    @abstractmethod
    async def _post_new(self, text: str, view: discord.ui.View | None) -> str: ...

    @abstractmethod
    async def _delete(self, message_id: str) -> None: ...

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Where the answer is shown (ids, no text), as JSON for the in-flight record."""


@dataclass(kw_only=True)
class ChannelSink(_AdoptingSink):
    """An answer as channel messages: the first replies to the question, each further part to the one
    before, so a reply to any part carries the whole answer as conversation context."""

    writer: ChannelWriter
    reply_to: int | None = None

    @property
    def channel_key(self) -> str:
        return f"discord:{self.writer.channel_id}"

    async def _post_new(self, text: str, view: discord.ui.View | None) -> str:
        previous = int(self.message_ids[-1]) if self.message_ids else self.reply_to
        return await self.writer.send(text, reply_to=previous, view=view)

    async def _edit(self, message_id: str, text: str, view: discord.ui.View | None) -> None:
        await self.writer.edit(message_id, text, view=view)

    async def _delete(self, message_id: str) -> None:
        await self.writer.delete(message_id)

    def state(self) -> dict[str, Any]:
        return {
            "kind": "channel",
            "channel_id": self.writer.channel_id,
            "reply_to": self.reply_to,
            "message_ids": self.message_ids,
        }


OpenChannel = Callable[[], Awaitable[ChannelWriter]]


@dataclass(kw_only=True)
class InteractionSink(_AdoptingSink):
    """An answer in a slash command's deferred response (+ follow-ups) while its token lives.

    Shortly before the token dies the answer moves: each message is posted again as a normal message (in
    the channel, or in a DM for a private answer), the original response says where it went, follow-ups
    go. The ids the editor holds stay the same; `placed` says where each one lives now.
    """

    webhook: InteractionWriter
    channel_id: int  # where the command was run (edits are paced per channel)
    user_id: int  # who ran it (a private answer moves to their DMs)
    move_at: float  # clock time after which nothing more is written through the token
    clock: Callable[[], float]
    open_fallback: OpenChannel
    placed: dict[str, str] = field(default_factory=dict)  # editor id -> channel message id, once moved
    fallback_channel_id: int | None = None
    _shown: dict[str, str] = field(default_factory=dict)  # editor id -> its text, to post it again
    _fallback: ChannelWriter | None = None

    @property
    def channel_key(self) -> str:
        return f"discord:{self.channel_id}"

    @property
    def moved(self) -> bool:
        return self.fallback_channel_id is not None

    async def _post_new(self, text: str, view: discord.ui.View | None) -> str:
        if await self._moving():
            message_id = await self._fallback_send(text, view)
            self.placed[message_id] = message_id
            return message_id
        if ORIGINAL not in self.message_ids and ORIGINAL not in self._shown:
            # The deferred response already shows Discord's own "thinking…"; keep it for the placeholder.
            self._shown[ORIGINAL] = text
            return ORIGINAL
        message_id = await self.webhook.send(text, view=view)
        self._shown[message_id] = text
        return message_id

    async def _edit(self, message_id: str, text: str, view: discord.ui.View | None) -> None:
        if await self._moving():
            await (await self._fallback_writer()).edit(self.placed[message_id], text, view=view)
            return
        await self.webhook.edit(message_id, text, view=view)
        self._shown[message_id] = text

    async def _delete(self, message_id: str) -> None:
        if message_id in self.placed:
            await (await self._fallback_writer()).delete(self.placed.pop(message_id))
        elif not self.moved and message_id != ORIGINAL:
            await self.webhook.delete(message_id)
        self._shown.pop(message_id, None)

    async def _moving(self) -> bool:
        """True once the answer lives in normal messages; moves it there when the token is about to die."""
        if self.moved:
            return True
        if self.clock() < self.move_at:
            return False
        try:
            writer = await self._fallback_writer()
            # Adopted ids not shown yet (a restarted process mid-replay) move too; their text follows.
            for message_id in [*self.message_ids, *self.adopt]:
                self.placed[message_id] = await self._fallback_send(self._shown.get(message_id) or "…")
        except DeliveryFailed:
            await self._note(messages.DISCORD_MOVE_FAILED)  # e.g. the asker does not accept DMs
            raise
        self.fallback_channel_id = writer.channel_id
        await self._leave_note()
        await self._changed()
        log.info("interaction token near its end, answer moved", messages=len(self.placed))
        return True

    async def _leave_note(self) -> None:
        """Point the interaction's messages at the moved answer (best effort: the token may be dead)."""
        private = self.webhook.private
        await self._note(messages.DISCORD_MOVED_TO_DM if private else messages.DISCORD_MOVED_BELOW)
        for message_id in [*self.message_ids, *self.adopt]:
            if message_id != ORIGINAL:
                await self.webhook.delete(message_id)

    async def _note(self, text: str) -> None:
        try:
            await self.webhook.edit(ORIGINAL, text)
        except DeliveryFailed as error:
            log.info("interaction response not updated", status=error.status, code=error.code)

    async def _fallback_send(self, text: str, view: discord.ui.View | None = None) -> str:
        writer = await self._fallback_writer()
        previous = list(self.placed.values())
        return await writer.send(text, reply_to=int(previous[-1]) if previous else None, view=view)

    async def _fallback_writer(self) -> ChannelWriter:
        if self._fallback is None:
            self._fallback = await self.open_fallback()
        return self._fallback

    def state(self) -> dict[str, Any]:
        return {
            "kind": "interaction",
            "application_id": self.webhook.application_id,
            "token": self.webhook.token,
            "private": self.webhook.private,
            "channel_id": self.channel_id,
            "user_id": self.user_id,
            "move_at": self.move_at,
            "message_ids": self.message_ids,
            "placed": self.placed,
            "fallback_channel_id": self.fallback_channel_id,
        }


Sink = ChannelSink | InteractionSink


class DiscordEditor(AnswerEditor):
    """The shared editor; a finished answer gets 👍/👎 on its last message (an error notice never does)."""

    async def finish(self, text: str) -> None:
        self._rate_at(None)
        await super().finish(text)

    async def finish_answer(self, text: str) -> None:
        final = text or EMPTY_ANSWER
        last = len(split_message(final, self.sink.max_chars) or [final]) - 1
        if self._rate_at(last) and last < len(self._shown):
            self._shown[last] = ""  # drawn again with its buttons, even where its text stays
        await super().finish(text)

    def _rate_at(self, index: int | None) -> bool:
        """Put the buttons on message `index` in the next render (None: on none); False if never rated."""
        sink = self.sink
        if not isinstance(sink, _AdoptingSink) or sink.rating_for is None:
            return False
        sink.rating_at = index
        return True
