"""`brandbot chat`: a terminal front-end through the same conversation core, queue and worker as Slack
and Discord (`bots.terminal` is its adapter; this module is the command and its prompt loop).

It is how an admin tries a voice before shipping it: edit a persona file, ask again, read the answer
as it streams. The conversation is kept until `/reset`; prompt files reload while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import signal
import sys
from dataclasses import dataclass, field
from typing import Annotated, TextIO
from urllib.parse import urlsplit, urlunsplit

import redis
import typer

from bots.conversation import Conversations, Question
from bots.terminal import TERMINAL_ACCESS, TerminalAdapter, TerminalReception
from brandbot import messages
from brandbot.contract import Turn, UserRef
from brandbot.errors import PromptFileError
from brandbot.feedback import FeedbackStore
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.queue import RequestQueue

PROMPT = "you> "
HELP = (
    "Commands: /reset starts a new conversation · /persona [NAME] shows or switches the persona · "
    "/good or /bad rates the last answer · /quit leaves (so does Ctrl-D). Ctrl-C stops an answer."
)
STOP_WAIT_SECONDS = 5.0
"""After Ctrl-C the prompt waits this long for the worker to confirm the stop, so the answer's relay ends
and leaves nothing behind; past it (no worker has the request yet) the relay ends in the background."""
LOG_LEVEL_FLOOR = "WARNING"
"""The conversation shares the terminal with the log: below this, lines would interleave with answers."""


@dataclass
class ChatSession:
    """One terminal conversation: read a line, hand it to the conversation core, keep both turns."""

    conversations: Conversations
    adapter: TerminalAdapter
    prompts: LivePromptLibrary
    feedback: FeedbackStore
    user: UserRef
    persona_name: str
    out: TextIO = sys.stdout
    turns: list[Turn] = field(default_factory=list)
    last_request_id: str | None = None
    terminated: bool = False
    _relay: asyncio.Task[None] | None = None
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
                return 0 if self.terminated else 130
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line, runner):
                    return 0
                continue
            self.ask(line, runner)
            if self.terminated:
                return 0

    def on_terminate(self, _signal: int, _frame: object) -> None:
        """SIGTERM leaves as the end of input does, stopping the answer being drawn: it becomes Ctrl-C,
        which the prompt and asyncio's runner already turn into clean exceptions, and `terminated` says
        to leave rather than go on."""
        self.terminated = True
        signal.raise_signal(signal.SIGINT)

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

    def ask(self, text: str, runner: asyncio.Runner) -> None:
        self.show_prompt_problems()
        persona = self.prompts.current().persona(self.persona_name)
        if persona is None:
            self.say(f"(persona {self.persona_name!r} is gone from the prompt files; pick one with /persona)")
            return
        question, reception = self.adapter.question(text, user=self.user, persona=persona, history=self.turns)
        self._relay = None
        try:
            runner.run(self.answer(question, reception))
        except KeyboardInterrupt:
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C does not wait for the worker
                runner.run(self.stop(reception))
            return
        exchange = reception.exchange()
        if exchange is not None:  # unanswered: the next question must not follow a dangling one
            self.turns.extend(exchange)
            self.last_request_id = reception.request_id

    async def answer(self, question: Question, reception: TerminalReception) -> None:
        """Through the core's stages like any chat's question; returns when its answer is drawn."""
        self._relay = relay = await self.conversations.take(question, reception)
        if relay is not None:
            await asyncio.shield(relay)  # Ctrl-C ends the wait, not the relay: `stop` does

    async def stop(self, reception: TerminalReception) -> None:
        await reception.stop()
        if self._relay is not None:
            await asyncio.wait({self._relay}, timeout=STOP_WAIT_SECONDS)

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

    settings = settings_or_exit(log_level_floor=LOG_LEVEL_FLOOR)
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
    adapter = TerminalAdapter(queue=queue, out=sys.stdout, rates_answers=settings.feedback_enabled)
    # No housekeeping: a terminal's answers are never resumed by another process (see `bots.terminal`).
    conversations = Conversations(
        adapter=adapter, settings=settings, queue=queue, prompts=prompts, access=lambda: TERMINAL_ACCESS
    )
    session = ChatSession(
        conversations=conversations,
        adapter=adapter,
        prompts=prompts,
        feedback=FeedbackStore(queue.redis, retention_seconds=settings.retention_seconds),
        user=UserRef(id=login, display_name=user if user is not None else login),
        persona_name=chosen.name,
    )
    # Started with SIGINT ignored (a shell's background job), Ctrl-C would do nothing, and neither would
    # SIGTERM, which becomes Ctrl-C: take it back, so asyncio's runner turns it into a clean stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
            signal.signal(signal.SIGTERM, session.on_terminate)
            status = session.run(runner)
        finally:
            prompts.stop_watching()
            runner.run(conversations.shutdown())
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
