"""Slack as the conversation core sees it: a question's reception (whisper, say in the thread, read the
thread) and its answer sink (a head message, then Slack's streaming API or `chat.update`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from slack_sdk.web.async_client import AsyncWebClient

from bots.access import Refusal
from bots.conversation import PATIENT_INTAKE_SECONDS, Question
from bots.relay import ChannelPacer
from bots.relay_book import REDIS_ERRORS
from bots.slack.context import PeopleDirectory, conversation_request
from bots.slack.events import SlackQuestion, Trigger, addressed_text
from bots.slack.notices import say_in_thread, whisper
from bots.slack.sink import Place, SlackAnswerSink, SlackEditor, Streamed, StreamingSupport
from bots.surface import AnswerSink
from brandbot import keys, messages
from brandbot.contract import GenerationRequest, Platform
from brandbot.settings import Settings


class SlackAdapter:
    """The Slack side of `bots.conversation.Conversations`; one per front-end process."""

    platform = Platform.SLACK

    def __init__(self, *, client: AsyncWebClient, settings: Settings, redis: redis.asyncio.Redis) -> None:
        self.client = client
        self.settings = settings
        self.redis = redis
        self.people = PeopleDirectory(client)
        self.streaming = StreamingSupport(settings.slack_streaming and settings.slack_native_markdown)
        self.bot_user_id: str | None = None  # learned from the first event (bolt's auth.test)
        self.rates_answers = settings.feedback_enabled

    def question(self, asked: SlackQuestion, *, received_at: float) -> tuple[Question, SlackReception]:
        """The core's question for a Slack message, and how to answer it."""
        question = Question(
            platform=Platform.SLACK,
            event_ids=asked.dedup_ids,
            asker=asked.asker,
            text=addressed_text(asked.text, self.bot_user_id),
            workspace_id=asked.team_id,
            channel_id=asked.channel_id,
            explicit=asked.explicit,
            conversation_id=f"{asked.channel_id}:{asked.thread_ts}",
            followup=asked.trigger is Trigger.THREAD_FOLLOWUP,
            received_at=received_at,
        )
        return question, SlackReception(adapter=self, asked=asked)

    def sink(self, place: Place, request_id: str) -> SlackAnswerSink:
        return SlackAnswerSink(
            client=self.client,
            place=place,
            request_id=request_id,
            native_markdown=self.settings.slack_native_markdown,
            streaming=self.streaming,
            rated=self.rates_answers,
        )

    # ------------------------------------------------------------------ ChatAdapter
    def editor(self, sink: AnswerSink, pacer: ChannelPacer) -> SlackEditor:
        return SlackEditor(sink, pacer)

    def sink_from_state(self, request_id: str, state: dict[str, Any]) -> SlackAnswerSink:
        place = Place(
            channel=str(state["channel"]),
            thread_ts=str(state["thread_ts"]),
            asker_id=str(state["asker_id"]),
            team_id=state.get("team_id"),
            assistant_thread=bool(state.get("assistant_thread")),
        )
        sink = self.sink(place, request_id)
        sink.adopt = [str(ts) for ts in [state["head_ts"], *state.get("parts", [])] if ts]
        sink.head_gone = bool(state.get("head_gone"))
        if state.get("content_ts"):
            sink.content = Streamed(str(state["content_ts"]))
        sink.stream_pending = bool(state.get("stream_pending"))
        return sink

    def refusal_text(self, refusal: Refusal) -> str:
        return (
            messages.SLACK_DIRECT_MESSAGES_OFF if refusal is Refusal.DIRECT_MESSAGES else messages.NOT_ALLOWED
        )


@dataclass
class SlackReception:
    """How one Slack question is answered: in its thread; refusals only the asker sees."""

    adapter: SlackAdapter
    asked: SlackQuestion
    sink: SlackAnswerSink | None = None
    empty_hint: str = messages.EMPTY_MENTION
    answers_every_refusal: bool = False
    intake_patience_seconds: float = PATIENT_INTAKE_SECONDS  # bolt acked already: Slack will not retry

    def open_sink(self, request_id: str) -> SlackAnswerSink:
        asked = self.asked
        place = Place(
            channel=asked.channel_id, thread_ts=asked.thread_ts, asker_id=asked.user_id, team_id=asked.team_id
        )
        self.sink = self.adapter.sink(place, request_id)
        return self.sink

    async def tell(self, text: str, *, privately: bool) -> None:
        client, asked = self.adapter.client, self.asked
        if privately:
            thread_ts = asked.thread_ts if asked.in_existing_thread else None
            await whisper(
                client, channel=asked.channel_id, user=asked.user_id, text=text, thread_ts=thread_ts
            )
        else:
            native = self.adapter.settings.slack_native_markdown
            await say_in_thread(
                client, channel=asked.channel_id, thread_ts=asked.thread_ts, text=text, native_markdown=native
            )

    async def acknowledge(self) -> bool:
        """bolt acked already; learn whether the DM is an AI-assistant thread (it gets a status line)."""
        if self.asked.is_direct_message and self.sink is not None:
            key = keys.slack_assistant_thread(self.asked.channel_id, self.asked.thread_ts)
            try:
                assistant_thread = bool(await self.adapter.redis.exists(key))
            except REDIS_ERRORS:
                assistant_thread = False  # decoration only
            self.sink.place = dataclasses.replace(self.sink.place, assistant_thread=assistant_thread)
        return True

    async def request(self, *, request_id: str, persona: str, look_up_names: bool) -> GenerationRequest:
        return await conversation_request(
            self.adapter.client,
            self.adapter.people,
            self.asked,
            persona=persona,
            request_id=request_id,
            bot_user_id=self.adapter.bot_user_id,
            look_up_names=look_up_names,
        )
