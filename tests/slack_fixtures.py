"""Helpers for the Slack front-end's tests: the front-end running against the emulator (Socket Mode or
HTTP), a scripted worker for answers whose exact text a test needs, and ways to read what Slack shows.

The scripted worker takes jobs off the model queue like `brandbot worker` and publishes the contract's
events through the worker's own `ReplyPublisher`; only the text comes from a script instead of a model,
because no model can be asked for `<!channel>` or a code fence across a message boundary on cue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import AnyHttpUrl, SecretStr
from rq.job import Job
from rq.serializers import JSONSerializer
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

from bots.access import AccessRules
from bots.slack import SlackApp, build_slack_app
from bots.slack.blocks import FEEDBACK_GOOD_ACTION, STOP_ACTION
from bots.slack.http_mode import serve_http
from brandbot import keys
from brandbot.contract import (
    DeltaEvent,
    DoneEvent,
    FinishReason,
    GenerationRequest,
    ReplyEvent,
    StartEvent,
    Usage,
    parse_reply_event,
)
from brandbot.emulators.slack import Message, SlackEmulator
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.queue import RequestQueue
from brandbot.settings import Settings, SlackMode
from tests.conftest import free_port
from tests.core_fixtures import shows_cursor
from worker.replies import ReplyPublisher

SIGNING_SECRET = "test-signing-secret"
MODEL_QUEUE = f"rq:queue:{keys.model_queue('default')}"


# ---------------------------------------------------------------------- reading what Slack shows
def visible(message: Message) -> str:
    """The text a person sees: `markdown_text`, else the blocks' text, else `text`."""
    if message.markdown_text:
        return message.markdown_text
    texts = []
    for block in message.blocks or []:
        if block.get("type") == "markdown":
            texts.append(block["text"])
        elif block.get("type") == "section":
            texts.append(block["text"]["text"])
    return "\n".join(texts) if texts else message.text


def buttons(message: Message) -> list[str]:
    return [
        element["action_id"]
        for block in message.blocks or []
        if block.get("type") == "actions"
        for element in block["elements"]
    ]


def button_value(message: Message, action_id: str) -> str:
    [value] = [
        element["value"]
        for block in message.blocks or []
        if block.get("type") == "actions"
        for element in block["elements"]
        if element["action_id"] == action_id
    ]
    return str(value)


def settled(message: Message) -> bool:
    """Not streaming, no Stop button, no cursor: nothing will change it any more."""
    return (
        not message.streaming and STOP_ACTION not in buttons(message) and not shows_cursor(visible(message))
    )


def is_final_answer(message: Message) -> bool:
    return settled(message) and FEEDBACK_GOOD_ACTION in buttons(message)


def reply_events(client: redis.Redis, request_id: str) -> list[ReplyEvent]:
    entries: Any = client.xrange(keys.reply_stream(request_id))
    return [parse_reply_event(fields[b"event"]) for _id, fields in entries]


def done_of(client: redis.Redis, request_id: str) -> DoneEvent | None:
    dones = [e for e in reply_events(client, request_id) if isinstance(e, DoneEvent)]
    return dones[-1] if dones else None


def queued_requests(client: redis.Redis) -> list[GenerationRequest]:
    """Every request a front-end enqueued (the job payloads, as a worker would read them)."""
    requests = []
    for key in client.scan_iter(match="rq:job:*"):
        job_id = key.decode().removeprefix("rq:job:")
        if ":" in job_id:
            continue
        job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
        requests.append(GenerationRequest.model_validate(job.args[0]))
    return sorted(requests, key=lambda r: r.created_at)


# ---------------------------------------------------------------------- the front-end
@dataclass
class RunningSlack:
    """The front-end in this test's event loop, talking to the emulator."""

    emulator: SlackEmulator
    settings: Settings
    queue: RequestQueue
    app: SlackApp
    http_url: str = ""
    rules: list[AccessRules] = field(default_factory=lambda: [AccessRules()])

    def bot_messages(self, channel: str, thread_ts: str) -> list[Message]:
        return [
            m for m in self.emulator.messages_in(channel, thread_ts) if m.user == self.emulator.bot_user_id
        ]

    async def wait_for_answer(self, channel: str, thread_ts: str, timeout: float = 60.0) -> Message:  # noqa: ASYNC109
        """The one message left in the thread once the answer is finished (and nothing else of ours)."""

        def finished() -> bool:
            replies = self.bot_messages(channel, thread_ts)
            return len(replies) >= 1 and all(settled(m) for m in replies)

        await self.emulator.wait_until(finished, timeout=timeout, what="a finished answer")
        await asyncio.sleep(0.3)  # anything still in flight (a duplicate, a late edit) arrives by now
        [answer] = self.bot_messages(channel, thread_ts)
        return answer

    async def mention(self, channel: str, user: str, text: str, thread_ts: str | None = None) -> Message:
        message, envelope = await self.emulator.send_user_message(
            channel=channel,
            user=user,
            text=f"<@{self.emulator.bot_user_id}> {text}",
            thread_ts=thread_ts,
            event_type="app_mention",
        )
        await self.emulator.wait_for_ack(envelope)
        return message

    async def click(self, message: Message, action_id: str, user: str) -> None:
        """A person presses a button of one of the bot's messages."""
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": user, "team_id": self.emulator.team_id},
            "channel": {"id": message.channel, "name": "general"},
            "container": {
                "type": "message",
                "message_ts": message.ts,
                "channel_id": message.channel,
                "thread_ts": message.thread_ts,
            },
            "message": self.emulator.render(message),
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": "b",
                    "value": button_value(message, action_id),
                    "action_ts": "1.2",
                }
            ],
            "trigger_id": "t",
            "response_url": "http://127.0.0.1:1/unused",
        }
        await self.emulator.wait_for_ack(await self.emulator.send_interactive(payload))


def front_end_settings(emulator: SlackEmulator, base: Settings, **overrides: object) -> Settings:
    return base.model_copy(
        update={
            "slack_bot_token": SecretStr(emulator.bot_token),
            "slack_app_token": SecretStr(emulator.app_token),
            "slack_signing_secret": SecretStr(SIGNING_SECRET),
            "slack_api_url": AnyHttpUrl(emulator.api_url),
            **overrides,
        }
    )


@asynccontextmanager
async def slack_running(
    emulator: SlackEmulator,
    base: Settings,
    *,
    rules: AccessRules | None = None,
    on_enqueued: Callable[[float], None] | None = None,
    **overrides: object,
) -> AsyncIterator[RunningSlack]:
    """Start the front-end (Socket Mode, or HTTP when `slack_mode="http"`); shut it down cleanly after."""
    settings = front_end_settings(emulator, base, **overrides)
    queue = RequestQueue.from_settings(settings)
    holder = [rules or AccessRules()]
    app = build_slack_app(
        settings=settings,
        queue=queue,
        prompts=LivePromptLibrary(settings.prompts_dir),
        access=lambda: holder[0],
        on_enqueued=on_enqueued,
    )
    await app.start_background()
    running = RunningSlack(emulator, settings, queue, app, rules=holder)
    handler: AsyncSocketModeHandler | None = None
    runner = None
    if settings.slack_mode == SlackMode.HTTP:
        port = free_port()
        runner = await serve_http(app, host="127.0.0.1", port=port, path=settings.slack_http_path)
        running.http_url = f"http://127.0.0.1:{port}{settings.slack_http_path}"
    else:
        handler = AsyncSocketModeHandler(app, emulator.app_token, ping_interval=1)
        await handler.connect_async()
        await emulator.wait_for_client()
    try:
        yield running
    finally:
        if handler is not None:
            await handler.close_async()
        if runner is not None:
            await runner.cleanup()
        await app.shutdown()
        await queue.close()


# ---------------------------------------------------------------------- a scripted worker
Script = Callable[[GenerationRequest], list[ReplyEvent]]


def answer_with(text: str, *, chunk: int = 40) -> Script:
    """A script: start, the text in deltas of `chunk` characters, done."""

    def script(_request: GenerationRequest) -> list[ReplyEvent]:
        deltas: list[ReplyEvent] = [DeltaEvent(text=text[i : i + chunk]) for i in range(0, len(text), chunk)]
        return [StartEvent(), *deltas, done(text)]

    return script


def done(text: str, *, attempt: int = 1, reason: FinishReason = FinishReason.STOP) -> DoneEvent:
    usage = Usage(prompt_tokens=10, completion_tokens=max(len(text) // 4, 1), total_ms=5.0)
    return DoneEvent(attempt=attempt, text=text, finish_reason=reason, usage=usage)


@asynccontextmanager
async def scripted_worker(
    redis_url: str, script: Script, *, step_seconds: float = 0.02
) -> AsyncIterator[list[GenerationRequest]]:
    """Answer every job on the default model's queue with `script`; yields the requests it took."""
    client = redis.Redis.from_url(redis_url)
    publisher = ReplyPublisher(client, retention_seconds=600)
    taken: list[GenerationRequest] = []

    def next_request() -> GenerationRequest | None:
        popped: Any = client.blpop([MODEL_QUEUE], timeout=0.2)
        if popped is None:
            return None
        job = Job.fetch(keys.as_text(popped[1]), connection=client, serializer=JSONSerializer)
        return GenerationRequest.model_validate(job.args[0])

    async def work() -> None:
        while True:
            request = await asyncio.to_thread(next_request)
            if request is None:
                continue
            taken.append(request)
            for event in script(request):
                await asyncio.to_thread(publisher.publish, request.request_id, event)
                await asyncio.sleep(step_seconds)

    task = asyncio.create_task(work())
    try:
        yield taken
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        client.close()
