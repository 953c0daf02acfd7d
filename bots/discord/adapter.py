"""Discord as the conversation core sees it: receptions for messages and for `/ask`, and answer sinks
(channel messages, or an interaction's own messages until its token is about to die)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import discord

from bots.access import Refusal
from bots.conversation import INTAKE_REDIS_SECONDS, PATIENT_INTAKE_SECONDS, Question
from bots.discord.conversation import DiscordQuestion, conversation_before
from bots.discord.sinks import (
    INTERACTION_TOKEN_SECONDS,
    NO_PINGS,
    TOKEN_MARGIN_SECONDS,
    ChannelSink,
    ChannelWriter,
    DeliveryFailed,
    DiscordEditor,
    InteractionSink,
    InteractionWriter,
    Sink,
    clip,
)
from bots.relay import ChannelPacer
from bots.surface import AnswerEditor, AnswerSink
from brandbot import messages
from brandbot.contract import GenerationRequest, Platform, ReplyTarget, Role, Turn, UserRef
from brandbot.logs import get_logger

log = get_logger(__name__)

Clock = Callable[[], float]


class DiscordAdapter:
    """The Discord side of `bots.conversation.Conversations`; one per front-end process.

    `clock` is wall-clock seconds: interaction tokens expire by it, and in-flight records that another
    process may resume store times in it (so not `time.monotonic`, which is per machine).
    `rates_answers`: finished answers carry 👍/👎 (`BRANDBOT_FEEDBACK_ENABLED`).
    """

    platform = Platform.DISCORD

    def __init__(self, *, client: discord.Client, clock: Clock, rates_answers: bool) -> None:
        self.client = client
        self.clock = clock
        self.rates_answers = rates_answers

    def question(self, asked: DiscordQuestion) -> Question:
        return Question(
            platform=Platform.DISCORD,
            event_ids=(asked.event_id,),
            asker=asked.asker,
            text=asked.text,
            workspace_id=asked.guild_id,
            channel_id=asked.channel_id,
            parent_channel_id=asked.parent_channel_id,
            requested_persona=asked.requested_persona,
        )

    # ------------------------------------------------------------------ sinks
    def channel_sink(self, *, channel_id: int, reply_to: int | None, request_id: str | None) -> ChannelSink:
        """`request_id`: the answer shown there (rated under it), None for a notice."""
        return ChannelSink(
            writer=self._channel_writer(channel_id), reply_to=reply_to, rating_for=self._rated(request_id)
        )

    def interaction_sink(
        self, interaction: discord.Interaction, *, private: bool, request_id: str
    ) -> InteractionSink:
        assert interaction.channel_id is not None
        return self._interaction_sink(
            request_id=request_id,
            application_id=interaction.application_id,
            token=interaction.token,
            private=private,
            channel_id=interaction.channel_id,
            user_id=interaction.user.id,
            move_at=self.clock() + INTERACTION_TOKEN_SECONDS - TOKEN_MARGIN_SECONDS,
        )

    def _interaction_sink(
        self,
        *,
        request_id: str,
        application_id: int,
        token: str,
        private: bool,
        channel_id: int,
        user_id: int,
        move_at: float,
    ) -> InteractionSink:
        async def open_fallback() -> ChannelWriter:
            if not private:
                return self._channel_writer(channel_id)
            try:
                dm = await self.client.create_dm(discord.Object(user_id))
            except discord.HTTPException as error:
                raise DeliveryFailed("open DM", error) from error
            return self._channel_writer(dm.id, kind=discord.ChannelType.private)

        return InteractionSink(
            webhook=InteractionWriter(self.client.http, application_id, token, private),
            channel_id=channel_id,
            user_id=user_id,
            move_at=move_at,
            clock=self.clock,
            open_fallback=open_fallback,
            rating_for=self._rated(request_id),
        )

    def _rated(self, request_id: str | None) -> str | None:
        return request_id if self.rates_answers else None

    def _channel_writer(self, channel_id: int, kind: discord.ChannelType | None = None) -> ChannelWriter:
        return ChannelWriter(self.client.get_partial_messageable(channel_id, type=kind))

    # ------------------------------------------------------------------ ChatAdapter
    def editor(self, sink: AnswerSink, pacer: ChannelPacer) -> AnswerEditor:
        return DiscordEditor(sink, pacer)

    def sink_from_state(self, request_id: str, state: dict[str, Any]) -> Sink:
        """Rebuild a sink from its in-flight record; it adopts the messages it showed before."""
        adopt = [str(message_id) for message_id in state["message_ids"]]
        if state["kind"] == "channel":
            sink = self.channel_sink(
                channel_id=int(state["channel_id"]), reply_to=state.get("reply_to"), request_id=request_id
            )
            sink.adopt = adopt
            return sink
        restored = self._interaction_sink(
            request_id=request_id,
            application_id=int(state["application_id"]),
            token=str(state["token"]),
            private=bool(state["private"]),
            channel_id=int(state["channel_id"]),
            user_id=int(state["user_id"]),
            move_at=float(state["move_at"]),
        )
        restored.adopt = adopt
        restored.placed = {str(k): str(v) for k, v in state.get("placed", {}).items()}
        if state.get("fallback_channel_id"):
            restored.fallback_channel_id = int(state["fallback_channel_id"])
        return restored

    def refusal_text(self, refusal: Refusal) -> str:
        return messages.NOT_ALLOWED


def generation_request(
    asked: DiscordQuestion, *, request_id: str, persona: str, history: list[Turn]
) -> GenerationRequest:
    in_thread = asked.parent_channel_id is not None
    return GenerationRequest(
        request_id=request_id,
        target=ReplyTarget(
            platform=Platform.DISCORD,
            workspace_id=asked.guild_id,
            channel_id=asked.parent_channel_id or asked.channel_id,
            thread_id=asked.channel_id if in_thread else None,
            message_id=asked.message_id,
        ),
        user=UserRef(id=asked.user_id, display_name=asked.display_name),
        channel_name=asked.channel_name,
        persona=persona,
        turns=[*history, Turn(role=Role.USER, content=asked.text, name=asked.display_name or None)],
    )


@dataclass
class MessageReception:
    """A mention, a reply to the bot, or a DM: answered as a reply to it; notices are replies too."""

    adapter: DiscordAdapter
    message: discord.Message
    asked: DiscordQuestion
    bot_user_id: int
    empty_hint: str = messages.EMPTY_MENTION
    answers_every_refusal: bool = False
    intake_patience_seconds: float = PATIENT_INTAKE_SECONDS  # a message waits; nothing expires

    def open_sink(self, request_id: str) -> ChannelSink:
        return self.adapter.channel_sink(
            channel_id=self.message.channel.id, reply_to=self.message.id, request_id=request_id
        )

    async def tell(self, text: str, *, privately: bool) -> None:
        """A message has no private reply: the notice is a reply in the channel."""
        try:
            notice = self.adapter.channel_sink(
                channel_id=self.message.channel.id, reply_to=self.message.id, request_id=None
            )
            await notice.post(text)
        except DeliveryFailed as error:
            log.warning("notice could not be posted", error=error)

    async def acknowledge(self) -> bool:
        return True

    async def request(self, *, request_id: str, persona: str, look_up_names: bool) -> GenerationRequest:
        history = await conversation_before(self.message, self.bot_user_id)
        return generation_request(self.asked, request_id=request_id, persona=persona, history=history)


@dataclass
class InteractionReception:
    """`/ask`: refusals are ephemeral responses; the answer goes into the deferred response."""

    adapter: DiscordAdapter
    interaction: discord.Interaction
    asked: DiscordQuestion
    private: bool
    empty_hint: str = messages.DISCORD_EMPTY_ASK
    answers_every_refusal: bool = True  # an interaction left unanswered shows as failed
    intake_patience_seconds: float = INTAKE_REDIS_SECONDS  # Discord drops it unless deferred within 3 s

    def open_sink(self, request_id: str) -> InteractionSink:
        return self.adapter.interaction_sink(self.interaction, private=self.private, request_id=request_id)

    async def tell(self, text: str, *, privately: bool) -> None:
        """Only the person who ran the command sees it."""
        await tell(self.interaction, text)

    async def acknowledge(self) -> bool:
        try:
            await self.interaction.response.defer(thinking=True, ephemeral=self.private)
        except discord.HTTPException as error:  # 10062: Discord gave up on this interaction already
            log.warning("interaction expired before it was deferred", code=error.code)
            return False
        return True

    async def request(self, *, request_id: str, persona: str, look_up_names: bool) -> GenerationRequest:
        return generation_request(self.asked, request_id=request_id, persona=persona, history=[])


async def tell(interaction: discord.Interaction, text: str) -> None:
    """Answer the interaction so that only the person who ran the command sees it."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(clip(text), ephemeral=True, allowed_mentions=NO_PINGS)
        else:
            await interaction.response.send_message(clip(text), ephemeral=True, allowed_mentions=NO_PINGS)
    except discord.HTTPException as error:
        log.warning("notice could not be posted", status=error.status, code=error.code)
