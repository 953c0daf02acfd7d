"""Where one answer is written in Slack: a head message, then Slack's streaming API or `chat.update` edits.

The head is posted at once (the placeholder, with a Stop button). Then, where the workspace has Slack's
streaming API, the answer streams into a message of its own below the head (`chat.startStream`,
`appendStream`, `stopStream` with the 👍/👎 buttons) and the head is deleted when it is done. Without it,
the head itself becomes the answer through `chat.update`. Either way one message is left per answer.

The shared `StreamingEditor` drives the sink (whole texts, paced per channel); `SlackEditor` tells it
what each text is (a status, the answer so far, the finished answer, or a notice ending it), since the
same text lands differently: only the finished answer gets feedback buttons, a status keeps Stop.
A sink's `state()` holds ids only (never text), so a restarted front-end finishes the same messages.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bots.relay import STREAMING_CURSOR
from bots.safety import neutralize_slack_mentions
from bots.slack.blocks import Block, block_payload, feedback_buttons, stop_button, text_payload
from bots.slack.events import ts_order
from bots.surface import AnswerEditor, Undeliverable
from brandbot import messages
from brandbot.logs import get_logger

log = get_logger(__name__)

SLACK_MARKDOWN_LIMIT = 12_000
"""Slack's limit for `markdown_text` and `markdown` blocks; longer answers continue in follow-ups."""

MIN_MESSAGE_CHARS = 1_000
"""Floor for the per-message size after Slack answered `msg_too_long` and the sink halved it."""

FINAL_RENDER_TRIES = 4
"""A final text is tried this often (smaller parts after `msg_too_long`, waiting out `ratelimited`)."""

MAX_RATE_LIMIT_WAIT_SECONDS = 30.0

SLACK_UNREACHABLE = (aiohttp.ClientError, asyncio.TimeoutError)
"""Transport failures slack_sdk gives up on (after its connection-error retries)."""

# A streamed message only grows, so text that may still turn into markup is held back until it is
# complete: a `<…` that could close as `<!channel>`, an `@…` that could become `@here`.
PENDING_MARKUP = re.compile(r"(<[^<>]*|@\w*)$")
USER_PING = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")


class Phase(StrEnum):
    """What the text the editor renders next is."""

    STATUS = "status"  # placeholder, queue position, restarting: shown with Stop
    CONTENT = "content"  # the answer so far: shown with Stop
    ANSWER = "answer"  # the finished answer: shown with 👍/👎
    NOTICE = "notice"  # an end that is not an answer (error, no worker): text only


class DeliveryFailed(Undeliverable):
    """Slack refused a message of this answer for good (channel gone, message deleted, no permission)."""

    def __init__(self, action: str, code: str) -> None:
        super().__init__(f"{action}: {code}")
        self.code = code


class Throttled(Undeliverable):
    """Try again later: Slack still answered `ratelimited` after the client's own retries, or could
    not be reached at all."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"ratelimited, retry after {retry_after}s")
        self.retry_after = retry_after


class MessageTooLong(Undeliverable):
    """Slack answered `msg_too_long`; the sink has lowered `max_chars`, so render again."""


STREAMING_UNAVAILABLE = frozenset(
    {
        "unknown_method",
        "method_deprecated",
        "not_allowed_token_type",
        "missing_scope",
        "feature_not_enabled",
        "not_allowed",
        "team_access_not_granted",
    }
)
"""`chat.startStream` errors that mean the workspace (or the app) has no streaming API at all."""


@dataclass
class StreamingSupport:
    """Whether answers use Slack's streaming API. A refusal that says the workspace has none switches it
    off for this process; any other refusal only sends that one answer through chat.update."""

    enabled: bool

    def refused(self, code: str) -> None:
        if code in STREAMING_UNAVAILABLE and self.enabled:
            log.warning("slack streaming API unavailable, answers use chat.update", error=code)
            self.enabled = False
        else:
            log.info("streaming refused for one answer, it uses chat.update", error=code)


@dataclass(frozen=True)
class Place:
    """Where an answer goes and for whom (the streaming API needs the recipient outside DMs)."""

    channel: str
    thread_ts: str
    asker_id: str
    team_id: str | None = None
    assistant_thread: bool = False


@dataclass
class Streamed:
    """The message the answer streams into; `text` is what it shows (as far as this process knows)."""

    ts: str
    text: str = ""
    open: bool = True


@dataclass
class SlackAnswerSink:
    """A `bots.relay.MessageSink` for one answer; ids it returns are Slack message timestamps."""

    client: AsyncWebClient
    place: Place
    request_id: str
    native_markdown: bool
    streaming: StreamingSupport
    rated: bool = True  # the finished answer carries 👍/👎 (off where the admin switched feedback off)
    max_chars: int = SLACK_MARKDOWN_LIMIT
    phase: Phase = Phase.STATUS
    head_ts: str | None = None
    head_gone: bool = False
    stream_refused: bool = False
    stream_pending: bool = False  # a `chat.startStream` was sent and its answer not yet recorded
    content: Streamed | None = None
    parts: list[str] = field(default_factory=list)
    adopt: list[str] = field(default_factory=list)  # messages of an earlier process, reused in order
    on_change: Callable[[], Awaitable[None]] | None = None

    @property
    def channel_key(self) -> str:
        return f"slack:{self.place.channel}"

    # ------------------------------------------------------------------ MessageSink
    async def post(self, text: str) -> str:
        if self.head_ts is None:
            if self.adopt:
                self.head_ts = self.adopt.pop(0)  # keeps what it shows until the replay renders over it
            else:
                payload = block_payload(self._safe(text), native=self.native_markdown, actions=self._stop())
                self.head_ts = await self._post(payload)
                if self.place.assistant_thread:
                    await self.set_assistant_status(messages.SLACK_ASSISTANT_STATUS)
            await self._changed()
            return self.head_ts
        if self.adopt:
            message_id = self.adopt.pop(0)
            await self._edit_part(message_id, text)
        else:
            message_id = await self._post(text_payload(self._visible(text), native=self.native_markdown))
        self.parts.append(message_id)
        await self._changed()
        return message_id

    async def edit(self, message_id: str, text: str) -> None:
        if message_id == self.head_ts:
            await self._render_head(text)
        else:
            await self._edit_part(message_id, text)

    async def delete(self, message_id: str) -> None:
        await self._delete_quietly(message_id)
        if message_id in self.parts:
            self.parts.remove(message_id)
        await self._changed()

    # ------------------------------------------------------------------ the head and the stream
    async def _render_head(self, text: str) -> None:
        if self.phase is Phase.CONTENT and (self.content is not None or self._may_stream()):
            await self._stream(text)
            return
        if self.phase is Phase.ANSWER and self.content is not None:
            await self._finish_stream(text)
            return
        if self.phase in (Phase.STATUS, Phase.NOTICE):
            await self._drop_content()  # a restart or an error replaces whatever was streamed
        await self._update_head(text, self._actions_for_head())

    def _actions_for_head(self) -> Block | None:
        if self.phase is Phase.ANSWER:
            return self._rating()
        return self._stop() if self.phase in (Phase.STATUS, Phase.CONTENT) else None

    def _may_stream(self) -> bool:
        # The streaming API takes Markdown only: with native Markdown off, answers use chat.update.
        return self.native_markdown and self.streaming.enabled

    async def _stream(self, text: str) -> None:
        shown = self._streamable(text)
        if self.content is None:
            if self.stream_refused:
                await self._update_head(text, self._stop())
            elif shown:
                await self._start_stream(text, shown)
            return
        if self.content.open and shown.startswith(self.content.text):
            delta = shown[len(self.content.text) :]
            if delta:
                append = self.client.chat_appendStream(
                    channel=self.place.channel, ts=self.content.ts, markdown_text=delta
                )
                await self._call("append", append)
                self.content.text = shown
            return
        await self._replace_content(shown, actions=None)

    async def _start_stream(self, text: str, shown: str) -> None:
        if self.stream_pending:
            await self._close_unrecorded_streams()  # an earlier start whose answer never came back
        self.stream_pending = True
        await self._changed()  # recorded first: a crash before the answer leaves a stream nobody knows of
        # Outside DMs Slack needs to know whom the stream is for (they see it as it is written).
        in_direct_message = self.place.channel.startswith("D")
        try:
            response = await self.client.chat_startStream(
                channel=self.place.channel,
                thread_ts=self.place.thread_ts,
                markdown_text=shown,
                recipient_user_id=None if in_direct_message else self.place.asker_id,
                recipient_team_id=None if in_direct_message else self.place.team_id,
            )
        except SLACK_UNREACHABLE as error:
            raise Throttled(1.0) from error
        except SlackApiError as error:
            code = _code(error)
            if code == "ratelimited":
                raise Throttled(_retry_after(error)) from error
            self.streaming.refused(code)
            self.stream_refused, self.stream_pending = True, False
            await self._update_head(text, self._stop())  # this answer (maybe later ones) by chat.update
            return
        self.content, self.stream_pending = Streamed(str(response["ts"]), shown), False
        await self._changed()

    async def _close_unrecorded_streams(self) -> None:
        """Close and delete what a stream start whose answer was lost (a crash, a timeout) may have made: a
        message of this app in the thread, after the head, still streaming, that this answer does not know.

        Slack says which messages are still streaming only by refusing to stop the others. A second answer
        streaming in the same thread at this moment would be taken for it: two faults at once, left alone.
        """
        known = {self.head_ts, *self.parts, *self.adopt, self.content.ts if self.content else None}
        try:
            page = await self.client.conversations_replies(
                channel=self.place.channel, ts=self.place.thread_ts, oldest=self.head_ts or "0", limit=200
            )
        except (SlackApiError, *SLACK_UNREACHABLE) as error:
            log.info("thread not read for an unrecorded stream", error=type(error).__name__)
            return
        head = ts_order(self.head_ts or "0")
        for message in page.get("messages") or []:
            ts = str(message.get("ts"))
            if ts in known or not message.get("bot_id") or ts_order(ts) <= head:
                continue
            try:
                await self.client.chat_stopStream(channel=self.place.channel, ts=ts)
            except SlackApiError:
                continue  # not streaming, or not ours: a finished message of another answer
            except SLACK_UNREACHABLE:
                return
            log.info("unrecorded stream closed and deleted")
            await self._delete_quietly(ts)
        self.stream_pending = False

    async def _finish_stream(self, text: str) -> None:
        assert self.content is not None
        final, buttons = self._safe(text), self._rating()
        if self.content.open and final.startswith(self.content.text):
            delta = final[len(self.content.text) :]
            stop = self.client.chat_stopStream(
                channel=self.place.channel,
                ts=self.content.ts,
                markdown_text=delta or None,
                blocks=[buttons] if buttons else None,
            )
            await self._call("stop", stop)
            self.content.open, self.content.text = False, final
        else:
            await self._replace_content(final, actions=buttons)
        await self._delete_head()

    async def _replace_content(self, shown: str, *, actions: Block | None) -> None:
        """Rewrite the streamed message whole (it cannot shrink by appending): stop it, then edit it."""
        assert self.content is not None
        await self._stop_stream()
        if actions is None:
            await self._update(self.content.ts, text_payload(shown, native=True))
        else:
            await self._update(self.content.ts, block_payload(shown, native=True, actions=actions))
        self.content.text = shown

    async def _stop_stream(self) -> None:
        if self.content is None or not self.content.open:
            return
        try:
            await self._call(
                "stop", self.client.chat_stopStream(channel=self.place.channel, ts=self.content.ts)
            )
        except DeliveryFailed as error:
            if error.code != "message_not_in_streaming_state":  # Slack may have closed it already
                raise
        self.content.open = False

    async def _drop_content(self) -> None:
        if self.content is None:
            return
        await self._stop_stream()
        await self._delete_quietly(self.content.ts)
        self.content = None
        await self._changed()

    async def _update_head(self, text: str, actions: Block | None) -> None:
        assert self.head_ts is not None
        if self.head_gone:
            return  # the answer lives in the streamed message now
        await self._update(
            self.head_ts, block_payload(self._visible(text), native=self.native_markdown, actions=actions)
        )

    async def _delete_head(self) -> None:
        if self.head_ts is not None and not self.head_gone:
            await self._delete_quietly(self.head_ts)
            self.head_gone = True
            await self._changed()

    async def _edit_part(self, message_id: str, text: str) -> None:
        await self._update(message_id, text_payload(self._visible(text), native=self.native_markdown))

    # ------------------------------------------------------------------ assistant threads, resuming
    async def set_assistant_status(self, status: str) -> None:
        """The "is thinking…" line of a Slack AI-assistant thread (best effort: it is decoration)."""
        try:
            await self.client.assistant_threads_setStatus(
                channel_id=self.place.channel, thread_ts=self.place.thread_ts, status=status
            )
        except SlackApiError as error:
            log.info("assistant status not set", error=_code(error))
        except SLACK_UNREACHABLE:
            log.info("assistant status not set", error="unreachable")

    async def prepare_resume(self) -> None:
        """After a restart nobody knows what the stream shows: close it; the replay rewrites it whole."""
        if self.stream_pending and self.content is None:
            await self._close_unrecorded_streams()
        if self.content is not None:
            self.content.text = ""
            try:
                await self._stop_stream()
            except DeliveryFailed as error:
                log.info("adopted stream not stopped", error=error.code)
                self.content.open = False

    async def abandon(self) -> None:
        """Slack refused this answer for good: take down what can be taken down (best effort), so no
        placeholder keeps a Stop button for an answer that will not come."""
        for cleanup in (self._stop_stream, self._delete_head):
            try:
                await cleanup()
            except (DeliveryFailed, Throttled, MessageTooLong) as error:
                log.info("abandoned answer not cleaned up", error=error)

    async def discard_leftovers(self) -> None:
        """Delete adopted messages the finished answer did not need (an earlier render had more parts)."""
        while self.adopt:
            await self._delete_quietly(self.adopt.pop())

    async def after_answer(self) -> None:
        if self.place.assistant_thread:
            await self.set_assistant_status("")

    def state(self) -> dict[str, Any]:
        return {
            "channel": self.place.channel,
            "thread_ts": self.place.thread_ts,
            "asker_id": self.place.asker_id,
            "team_id": self.place.team_id,
            "assistant_thread": self.place.assistant_thread,
            "head_ts": self.head_ts,
            "head_gone": self.head_gone,
            "content_ts": self.content.ts if self.content else None,
            "stream_pending": self.stream_pending,
            "parts": list(self.parts),
        }

    # ------------------------------------------------------------------ helpers
    def _rating(self) -> Block | None:
        return feedback_buttons(self.request_id) if self.rated else None

    def _stop(self) -> Block:
        return stop_button(self.request_id, self.place.asker_id)

    @staticmethod
    def _safe(text: str) -> str:
        """No crowd pings ever; and no pinging people either: a prompt could make the bot ping someone
        over and over, and the model never needs to (it sees people as @names, not as ids)."""
        return USER_PING.sub(lambda m: "@" + m.group(1), neutralize_slack_mentions(text))

    def _visible(self, text: str) -> str:
        """What a message shows for `text`: mentions neutralised; while the answer grows, nothing
        half-written either (each edit replaces the text whole, but a reader should never see `<!cha`)."""
        if self.phase is not Phase.CONTENT:
            return self._safe(text)
        cursor = STREAMING_CURSOR if text.endswith(STREAMING_CURSOR) else ""
        return self._streamable(text) + cursor

    def _streamable(self, text: str) -> str:
        """What may be appended now: no cursor (Slack animates streams itself), nothing half-written."""
        shown = self._safe(text.removesuffix(STREAMING_CURSOR)).strip()
        return PENDING_MARKUP.sub("", shown).rstrip()

    async def _post(self, payload: dict[str, Any]) -> str:
        post = self.client.chat_postMessage(
            channel=self.place.channel, thread_ts=self.place.thread_ts, **payload
        )
        return str((await self._call("post", post))["ts"])

    async def _update(self, ts: str, payload: dict[str, Any]) -> None:
        await self._call("update", self.client.chat_update(channel=self.place.channel, ts=ts, **payload))

    async def _call(self, action: str, call: Coroutine[Any, Any, AsyncSlackResponse]) -> AsyncSlackResponse:
        try:
            return await call
        except SlackApiError as error:
            raise self._failure(action, error) from error
        except SLACK_UNREACHABLE as error:
            log.info("slack unreachable", action=action, error=type(error).__name__)
            raise Throttled(1.0) from error

    def _failure(self, action: str, error: SlackApiError) -> Exception:
        code = _code(error)
        if code == "ratelimited":
            return Throttled(_retry_after(error))
        if code == "msg_too_long":
            self.max_chars = max(MIN_MESSAGE_CHARS, self.max_chars // 2)
            return MessageTooLong(action)
        return DeliveryFailed(action, code)

    async def _delete_quietly(self, message_id: str) -> None:
        try:
            await self.client.chat_delete(channel=self.place.channel, ts=message_id)
        except SlackApiError as error:
            log.info("message not deleted", error=_code(error))  # already gone is what we wanted
        except SLACK_UNREACHABLE:
            log.info("message not deleted", error="unreachable")

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()


class SlackEditor(AnswerEditor):
    """The shared editor, telling the Slack sink what it renders and riding out Slack's refusals."""

    @property
    def slack_sink(self) -> SlackAnswerSink:
        assert isinstance(self.sink, SlackAnswerSink)
        return self.sink

    async def start(self, placeholder: str) -> str:
        self.slack_sink.phase = Phase.STATUS
        return await super().start(placeholder)

    async def show_status(self, text: str) -> None:
        """A status on the head (e.g. the queue position), at once and kept until the answer starts."""
        self.slack_sink.phase = Phase.STATUS
        await self._deliver(super().finish, text)

    async def update(self, text: str) -> None:
        self.slack_sink.phase = Phase.CONTENT
        try:
            await super().update(text)
        except (Throttled, MessageTooLong) as refusal:
            # The text stays pending: the next update or flush shows it (smaller parts after a halving).
            log.info("streamed edit deferred", reason=type(refusal).__name__)

    async def restart(self, placeholder: str) -> None:
        self.slack_sink.phase = Phase.STATUS
        await self._deliver(super().restart, placeholder)

    async def finish(self, text: str) -> None:
        self.slack_sink.phase = Phase.NOTICE
        self._redraw_head()
        await self._deliver(super().finish, text)

    async def finish_answer(self, text: str) -> None:
        self.slack_sink.phase = Phase.ANSWER
        self._redraw_head()
        await self._deliver(super().finish, text)

    def _redraw_head(self) -> None:
        """The end changes the head's buttons even where its text stays (the first part of a long
        answer): make the base editor render it again instead of skipping an unchanged text."""
        if self._shown:
            self._shown[0] = ""

    async def _deliver(self, render: Callable[[str], Awaitable[None]], text: str) -> None:
        """Render a text that must arrive: again in smaller parts, or after Slack's wait."""
        for _ in range(FINAL_RENDER_TRIES - 1):
            try:
                await render(text)
                return
            except MessageTooLong:
                log.info("slack refused a long message, splitting smaller", chars=self.slack_sink.max_chars)
            except Throttled as throttled:
                await asyncio.sleep(min(throttled.retry_after, MAX_RATE_LIMIT_WAIT_SECONDS))
        await render(text)


def _code(error: SlackApiError) -> str:
    return str(error.response.get("error", "unknown"))


def _retry_after(error: SlackApiError) -> float:
    try:
        return float(error.response.headers.get("Retry-After", 1))
    except (TypeError, ValueError):
        return 1.0
