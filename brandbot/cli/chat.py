"""`brandbot chat`: a terminal front-end through the same Redis queue and worker as Slack and Discord.

It is how an admin tries a voice before shipping it: edit a persona file, ask again, read the answer
as it streams. The conversation is kept until `/reset`; prompt files reload while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import sys
import time
from dataclasses import dataclass, field
from typing import Annotated, TextIO
from urllib.parse import urlsplit, urlunsplit

import redis
import typer

from brandbot import messages
from brandbot.contract import (
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    FinishReason,
    GenerationRequest,
    NoticeEvent,
    Platform,
    ReplyTarget,
    Role,
    StartEvent,
    Turn,
    UserRef,
)
from brandbot.errors import PromptFileError, QueueUnavailable
from brandbot.feedback import FeedbackStore
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.queue import RequestQueue

PROMPT = "you> "
CHANNEL_ID = "terminal"
HELP = (
    "Commands: /reset starts a new conversation · /persona [NAME] shows or switches the persona · "
    "/good or /bad rates the last answer · /quit leaves (so does Ctrl-D). Ctrl-C stops an answer."
)
STOPPED = "(stopped)"
CUT_SHORT = "(the answer was cut short: the generation deadline was reached)"
RESTARTING = "\n(the worker restarted; starting the answer over)\n"


@dataclass
class Reply:
    """How one question ended: `text` is set only for a complete answer worth keeping in the conversation."""

    status: str  # done, error, no_worker, unreachable, stopped
    text: str = ""


@dataclass
class ChatSession:
    """One terminal conversation: read a line, queue it, stream the answer, keep both turns."""

    queue: RequestQueue
    prompts: LivePromptLibrary
    feedback: FeedbackStore
    user: UserRef
    persona_name: str
    worker_wait_seconds: float
    max_question_chars: int
    out: TextIO = sys.stdout
    turns: list[Turn] = field(default_factory=list)
    last_request_id: str | None = None
    _problems_shown: list[str] = field(default_factory=list)

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self, runner: asyncio.Runner) -> int:
        """Until /quit or end of input; returns the exit status."""
        while True:
            try:
                line = input(PROMPT)
            except EOFError:
                self.say("")
                return 0
            except KeyboardInterrupt:
                self.say("")
                return 130
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line, runner):
                    return 0
                continue
            self.ask(line, runner)

    def command(self, line: str, runner: asyncio.Runner) -> bool:
        """Run one /command; False means leave."""
        name, _, argument = line.partition(" ")
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.turns.clear()
            self.last_request_id = None
            self.say("(new conversation)")
        elif name == "/persona":
            self.switch_persona(argument.strip())
        elif name in ("/good", "/bad"):
            runner.run(self.rate(1 if name == "/good" else -1))
        else:
            self.say(HELP)
        return True

    def ask(self, question: str, runner: asyncio.Runner) -> None:
        if len(question) > self.max_question_chars:
            self.say(messages.TOO_LONG.format(length=len(question), limit=self.max_question_chars))
            return
        self.show_prompt_problems()
        persona = self.prompts.current().persona(self.persona_name)
        if persona is None:
            self.say(f"(persona {self.persona_name!r} is gone from the prompt files; pick one with /persona)")
            return
        self.turns.append(Turn(role=Role.USER, content=question, name=self.user.display_name or None))
        request = GenerationRequest(
            target=ReplyTarget(platform=Platform.TERMINAL, channel_id=CHANNEL_ID),
            user=self.user,
            channel_name=CHANNEL_ID,
            persona=persona.name,
            turns=list(self.turns),
        )
        self.write(f"{persona.display_name}> ")
        try:
            reply = runner.run(self.stream(request, model=persona.model))
        except KeyboardInterrupt:
            runner.run(self.cancel(request.request_id))
            reply = Reply("stopped")
            self.say(f"\n{STOPPED}")
        if reply.status == "done":
            self.turns.append(Turn(role=Role.ASSISTANT, content=reply.text))
            self.last_request_id = request.request_id
        else:
            self.turns.pop()  # unanswered: the next question must not follow a dangling one

    # -- one answer -------------------------------------------------------------------------------------
    async def stream(self, request: GenerationRequest, *, model: str) -> Reply:
        """Queue the request and print its reply as it arrives (as bots/relay.py does for a chat)."""
        try:
            await self.queue.enqueue(request, model=model)
            return await self._follow(request.request_id, model)
        except (QueueUnavailable, redis.ConnectionError, redis.TimeoutError):
            self.say(f"\n{messages.QUEUE_UNREACHABLE}")
            return Reply("unreachable")

    async def _follow(self, request_id: str, model: str) -> Reply:
        text, attempt, started = "", 0, False
        notices: list[str] = []
        waiting_since = time.monotonic()
        async for _stream_id, event in self.queue.events(request_id):
            if event is None:
                if not started and time.monotonic() - waiting_since > self.worker_wait_seconds:
                    if await self.queue.workers_alive(model) == 0:
                        await self.queue.cancel(request_id)
                        self.say(
                            f"\n(no worker is serving model {model!r}: start one with `brandbot worker`)"
                        )
                        return Reply("no_worker")
                    waiting_since = time.monotonic()  # workers are alive, just busy: keep waiting
                continue
            if event.attempt < attempt:
                continue  # a late event of an attempt already superseded
            if event.attempt > attempt:
                if attempt:
                    text, notices = "", []
                    self.write(RESTARTING)
                attempt = event.attempt
            if isinstance(event, StartEvent):
                started = True
            elif isinstance(event, DeltaEvent):
                started = True
                text += event.text
                self.write(event.text)
            elif isinstance(event, NoticeEvent):
                notices.append(event.message)
            elif isinstance(event, DoneEvent):
                self._finish(event, shown=text, notices=notices)
                return Reply("done", event.text)
            elif isinstance(event, ErrorEvent):
                self.say(f"\n({event.message})")
                return Reply("error")
        raise AssertionError("reply stream ended without done or error")  # events() never ends by itself

    def _finish(self, event: DoneEvent, *, shown: str, notices: list[str]) -> None:
        if event.text.startswith(shown) and len(event.text) > len(shown):
            self.write(event.text[len(shown) :])  # deltas are batched: print what has not come yet
        self.say("")
        endings = {FinishReason.DEADLINE: CUT_SHORT, FinishReason.CANCELLED: STOPPED}
        if event.finish_reason in endings:
            self.say(endings[event.finish_reason])
        for notice in notices:
            self.say(f"(note: {notice})")

    async def cancel(self, request_id: str) -> None:
        """Ask the worker to stop; if Redis is gone there is nothing left to stop."""
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            await self.queue.cancel(request_id)

    # -- commands ---------------------------------------------------------------------------------------
    def switch_persona(self, name: str) -> None:
        library = self.prompts.current()
        if not name:
            names = ", ".join(library.personas)
            self.say(f"(persona: {self.persona_name}; available: {names})")
        elif library.persona(name) is None:
            self.say(f"(no persona named {name!r}; available: {', '.join(library.personas)})")
        else:
            self.persona_name = name
            self.say(f"(persona: {name}, {library.personas[name].display_name}; the conversation goes on)")

    async def rate(self, rating: int) -> None:
        if self.last_request_id is None:
            self.say("(nothing to rate yet)")
            return
        try:
            stored = await self.feedback.rate(
                self.last_request_id, rating=1 if rating > 0 else -1, user_id=f"terminal:{self.user.id}"
            )
        except (redis.ConnectionError, redis.TimeoutError):
            self.say(messages.QUEUE_UNREACHABLE)
            return
        if stored:
            self.say("(thanks: rating saved for the fine-tuning export)")
        else:
            self.say("(that answer is not stored: past the retention period, or the worker keeps no answers)")

    def show_prompt_problems(self) -> None:
        """Say once when an edit was rejected, so the admin does not test a voice that isn't live."""
        problems = self.prompts.last_problems
        if problems and problems != self._problems_shown:
            self.say("(your last prompt edit was rejected; the last good version is live:)")
            for problem in problems:
                self.say(f"  {problem}")
        self._problems_shown = list(problems)

    # -- output -----------------------------------------------------------------------------------------
    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def say(self, line: str) -> None:
        self.write(line + "\n")


def chat(
    persona: Annotated[
        str | None, typer.Option(help="Persona to talk to (default: routing's default).")
    ] = None,
    user: Annotated[
        str | None, typer.Option(help="Your display name in prompts ({{ user }}); default: your login.")
    ] = None,
) -> None:
    """Talk to a persona in the terminal, through the real queue and worker, streaming the answers."""
    from brandbot.cli import fail, settings_or_exit

    settings = settings_or_exit()
    try:
        prompts = LivePromptLibrary(settings.prompts_dir)
    except PromptFileError as error:
        fail("prompt files have problems (see `brandbot prompts check`):\n" + "\n".join(error.problems))
        return
    library = prompts.current()
    chosen = library.persona(persona) if persona else library.default_persona()
    if chosen is None:
        fail(f"no persona named {persona!r} (personas: {', '.join(library.personas)})", code=2)
        return
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - imported for its effect: line editing and history in input()
    login = getpass.getuser()
    queue = RequestQueue.from_settings(settings)
    session = ChatSession(
        queue=queue,
        prompts=prompts,
        feedback=FeedbackStore(queue.redis, retention_seconds=settings.retention_seconds),
        user=UserRef(id=login, display_name=user if user is not None else login),
        persona_name=chosen.name,
        worker_wait_seconds=settings.worker_wait_seconds,
        max_question_chars=settings.max_question_chars,
    )
    with asyncio.Runner() as runner:
        try:
            if not runner.run(queue.ping()):
                fail(f"cannot reach Redis at {redacted_url(settings.redis_url)}; is it running?")
            workers = runner.run(queue.workers_alive(chosen.model))
            session.say(
                f"Talking to {chosen.display_name} (persona {chosen.name}, model {chosen.model}). {HELP}"
            )
            if workers == 0:
                session.say(f"(no worker is serving model {chosen.model!r} yet: questions wait for one)")
            prompts.start_watching()
            status = session.run(runner)
        finally:
            prompts.stop_watching()
            runner.run(queue.close())
    raise typer.Exit(status)


def redacted_url(url: str) -> str:
    """The Redis URL without its password, fit for a terminal or a log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
