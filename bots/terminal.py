"""The terminal (`brandbot chat`) as the conversation core sees it: one person typing questions, each
answer drawn on standard output as it streams.

A terminal only grows: what is printed stays. So an answer is one "message" that an edit extends by
printing what the new text adds, and the editor draws notes where a chat would edit them in. Where a
core concept has no terminal counterpart, this adapter says so instead of working around it:

- retries and replays: a typed line arrives once, so each question has a fresh id and is never "seen";
- pacing: a terminal has no rate limit on output, so every delta is printed as it arrives;
- leases and resuming: the conversation lives in this process only, so no other process can finish an
  answer here (`sink_from_state` refuses; the CLI starts no housekeeping);
- access rules and rate limits: the only asker is the person at the keyboard (`TERMINAL_ACCESS`).
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

from bots.access import AccessRules, Asker, RateLimit, Refusal
from bots.conversation import PATIENT_INTAKE_SECONDS, Question
from bots.relay import ChannelPacer
from bots.relay_book import REDIS_ERRORS
from bots.surface import AnswerEditor, AnswerSink
from brandbot import messages
from brandbot.contract import (
    DoneEvent,
    FinishReason,
    GenerationRequest,
    Platform,
    ReplyTarget,
    Role,
    Turn,
    UserRef,
)
from brandbot.promptfiles.models import Persona
from brandbot.queue import RequestQueue

CHANNEL_ID = "terminal"
"""The one place a terminal chat happens (prompt templates see it as the channel name)."""

TERMINAL_ACCESS = AccessRules(rate_limit=RateLimit(questions_per_minute=600, burst=60))
"""No allow or block lists: whoever runs `brandbot chat` can reach Redis anyway. The core's rate limit
still runs, set where typing one question at a time and waiting for its answer never meets it."""

ENDINGS = {
    FinishReason.DEADLINE: messages.TERMINAL_CUT_SHORT,
    FinishReason.CANCELLED: messages.TERMINAL_STOPPED,
}


@dataclass
class TerminalSink:
    """Standard output as one answer's only message; `answer` is its text once it finished complete."""

    out: TextIO
    speaker: str  # the persona's display name, which opens the answer's line
    model: str
    adopt: list[str] = field(default_factory=list)  # always empty: nothing is resumed here
    on_change: Any = None
    answer: str | None = None
    stopped: bool = False  # Ctrl-C: whatever the relay still receives is not drawn
    _drawn: str = ""

    channel_key = CHANNEL_ID
    max_chars = sys.maxsize  # lines wrap: nothing to split

    def write(self, text: str) -> None:
        if not self.stopped:
            self.out.write(text)
            self.out.flush()

    async def post(self, text: str) -> str:
        self.write(text)
        self._drawn = ""
        return CHANNEL_ID

    async def edit(self, message_id: str, text: str) -> None:
        """Print what `text` adds to what is shown; anything else cannot be redrawn, so it stays as is."""
        if text.startswith(self._drawn):
            self.write(text[len(self._drawn) :])
            self._drawn = text

    async def delete(self, message_id: str) -> None:
        """Printed text cannot be taken back."""

    def state(self) -> dict[str, Any]:
        return {"kind": CHANNEL_ID}

    async def prepare_resume(self) -> None:
        raise ValueError("a terminal answer is not resumed")

    async def discard_leftovers(self) -> None:
        """Nothing was adopted."""

    async def abandon(self) -> None:
        """A terminal never refuses a message."""

    async def after_answer(self) -> None:
        """No status line to clear."""


@dataclass
class TerminalEditor(AnswerEditor):
    """Draws the reply stream in terminal words: the speaker's name for "Thinking…", notes in parentheses."""

    screen: TerminalSink = field(kw_only=True)

    async def start(self, placeholder: str) -> str:
        return await self.screen.post(f"{self.screen.speaker}> ")

    async def update(self, text: str) -> None:
        await self.screen.edit(CHANNEL_ID, text)

    async def flush(self) -> None:
        """Every update was drawn at once."""

    async def show_status(self, text: str) -> None:
        """The queue position is not drawn: the answer's line is already open and waiting."""

    async def finish(self, text: str) -> None:
        """An error or a notice ends the answer's line (the worker's messages are for any chat)."""
        if text == messages.NO_WORKER:
            text = messages.TERMINAL_NO_WORKER.format(model=self.screen.model)
        elif text != messages.QUEUE_UNREACHABLE:
            text = f"({text})"
        self.screen.write(f"\n{text}\n")

    async def finish_reply(self, event: DoneEvent, notices: list[str]) -> str:
        await self.screen.edit(CHANNEL_ID, event.text)  # deltas are batched: the rest may not be shown yet
        lines = [ENDINGS[event.finish_reason]] if event.finish_reason in ENDINGS else []
        lines += [messages.TERMINAL_NOTE.format(notice=notice) for notice in notices]
        self.screen.write("\n" + "".join(f"{line}\n" for line in lines))
        if event.finish_reason is not FinishReason.CANCELLED:
            self.screen.answer = event.text
        return event.text

    async def restart(self, placeholder: str) -> None:
        await self.screen.post(messages.TERMINAL_RESTARTING)  # the new attempt is drawn below the old one


class TerminalAdapter:
    """The terminal side of `bots.conversation.Conversations`; one per `brandbot chat` process."""

    platform = Platform.TERMINAL

    def __init__(self, *, queue: RequestQueue, out: TextIO, rates_answers: bool) -> None:
        self.queue = queue
        self.out = out
        self.rates_answers = rates_answers  # the chat offers /good and /bad, unless feedback is off

    def question(
        self, text: str, *, user: UserRef, persona: Persona, history: list[Turn]
    ) -> tuple[Question, TerminalReception]:
        """The core's question for a typed line, asked of `persona` after the conversation so far."""
        question = Question(
            platform=Platform.TERMINAL,
            event_ids=(uuid.uuid4().hex,),  # a typed line is never delivered twice
            asker=Asker(user_id=user.id, channel_id=CHANNEL_ID),
            text=text,
            workspace_id=None,
            channel_id=CHANNEL_ID,
            requested_persona=persona.name,
        )
        return question, TerminalReception(
            adapter=self, text=text, user=user, persona=persona, history=list(history)
        )

    # ------------------------------------------------------------------ ChatAdapter
    def editor(self, sink: AnswerSink, pacer: ChannelPacer) -> AnswerEditor:
        if not isinstance(sink, TerminalSink):
            raise TypeError(f"a terminal draws only on a TerminalSink, not {type(sink).__name__}")
        return TerminalEditor(sink, pacer, screen=sink)

    def sink_from_state(self, request_id: str, state: dict[str, Any]) -> AnswerSink:
        """Never: the terminal that showed the answer is gone with its process."""
        raise ValueError("a terminal answer cannot be finished by another process")

    def refusal_text(self, refusal: Refusal) -> str:
        return messages.NOT_ALLOWED


@dataclass
class TerminalReception:
    """How one typed question is answered: on the same terminal, refusals included."""

    adapter: TerminalAdapter
    text: str
    user: UserRef
    persona: Persona
    history: list[Turn]
    sink: TerminalSink | None = None
    request_id: str | None = None
    stopped: bool = False
    empty_hint: str = messages.TERMINAL_EMPTY  # not met in practice: the prompt skips empty lines
    answers_every_refusal: bool = True  # the person at the keyboard waits for a reply to every line
    intake_patience_seconds: float = PATIENT_INTAKE_SECONDS

    def open_sink(self, request_id: str) -> TerminalSink:
        self.request_id = request_id
        persona = self.persona
        self.sink = TerminalSink(
            out=self.adapter.out, speaker=persona.display_name, model=persona.model, stopped=self.stopped
        )
        return self.sink

    async def tell(self, text: str, *, privately: bool) -> None:
        self.adapter.out.write(f"{text}\n")
        self.adapter.out.flush()

    async def acknowledge(self) -> bool:
        return True

    def asked(self) -> Turn:
        return Turn(role=Role.USER, content=self.text, name=self.user.display_name or None)

    def exchange(self) -> list[Turn] | None:
        """The question and its answer as turns of the conversation; None unless it was answered whole."""
        if self.sink is None or self.sink.answer is None:
            return None
        return [self.asked(), Turn(role=Role.ASSISTANT, content=self.sink.answer)]

    async def request(self, *, request_id: str, persona: str, look_up_names: bool) -> GenerationRequest:
        return GenerationRequest(
            request_id=request_id,
            target=ReplyTarget(platform=Platform.TERMINAL, channel_id=CHANNEL_ID),
            user=self.user,
            channel_name=CHANNEL_ID,
            persona=persona,
            turns=[*self.history, self.asked()],
        )

    async def stop(self) -> None:
        """Ctrl-C during the answer: say so at once and tell the worker to stop (if Redis is gone, there
        is nothing left to stop); the relay still ends through the stream, without drawing."""
        await self.tell(f"\n{messages.TERMINAL_STOPPED}", privately=True)
        self.stopped = True
        if self.sink is not None:
            self.sink.stopped = True
        if self.request_id is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self.adapter.queue.cancel(self.request_id)
