"""Prompt edits reach a running worker without a restart; bad edits are logged and never go live.

Each answer's `usage.prompt_tokens` says exactly which prompt the worker built, so comparing it with
`brandbot prompts show`'s count for a given version of the files tells which version answered.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio
import redis

from brandbot import keys
from brandbot.cli.prompts import render_preview
from brandbot.contract import (
    DeltaEvent,
    DoneEvent,
    FinishReason,
    GenerationRequest,
    Platform,
    ReplyTarget,
    Role,
    Turn,
    UserRef,
    parse_reply_event,
)
from brandbot.promptfiles import load_prompt_library
from brandbot.queue import RequestQueue
from brandbot.settings import Settings
from tests.conftest import WorkerProcess

WAIT_SECONDS = 30.0  # a limit for a hung process, not a speed requirement
COMPANY = "Acme"  # the worker's BRANDBOT_COMPANY_NAME default


def request(persona: str, question: str) -> GenerationRequest:
    return GenerationRequest(
        target=ReplyTarget(platform=Platform.SLACK, workspace_id="T1", channel_id="C1"),
        user=UserRef(id="U1", display_name="Dana"),
        channel_name="general",
        persona=persona,
        turns=[Turn(role=Role.USER, content=question)],
    )


def expected_prompt_tokens(prompts_dir: Path, model_dir: Path, sent: GenerationRequest) -> int:
    """What `brandbot prompts show` counts for this request with the files as they are now."""
    persona = load_prompt_library(prompts_dir).persona(sent.persona)
    assert persona is not None
    return render_preview(sent, persona, model_dir=model_dir, company=COMPANY).prompt_tokens


def edit(path: Path, old: str, new: str) -> None:
    """Save as editors do: write a new file, rename it over the old one."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text.replace(old, new))
    temporary.replace(path)


def wait_for_log(worker: WorkerProcess, text: str, *, count: int = 1) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while worker.log().count(text) < count:
        if time.monotonic() > deadline or worker.process.poll() is not None:
            raise AssertionError(f"worker never logged {text!r} ×{count}:\n{worker.log()}")
        time.sleep(0.05)


@pytest_asyncio.fixture
async def queue(settings: Callable[..., Settings]) -> AsyncIterator[RequestQueue]:
    test_settings = settings()
    request_queue = RequestQueue.from_settings(test_settings)
    yield request_queue
    await request_queue.close()


async def answer(queue: RequestQueue, sent: GenerationRequest) -> DoneEvent:
    await queue.enqueue(sent, model="default")
    deadline = time.monotonic() + WAIT_SECONDS
    async for _id, event in queue.events(sent.request_id):
        if isinstance(event, DoneEvent):
            return event
        if event is not None and event.type == "error":
            raise AssertionError(f"worker answered with an error: {event}")
        if time.monotonic() > deadline:
            raise AssertionError("no answer")
    raise AssertionError("unreachable")


async def test_prompt_edit_reaches_a_running_worker_and_show_matches_what_it_built(
    start_worker: Callable[..., WorkerProcess], queue: RequestQueue, prompts_dir: Path, tiny_model: Path
) -> None:
    worker = start_worker()
    before = request("support", "Where is my invoice?")
    done = await answer(queue, before)
    assert done.usage.prompt_tokens == expected_prompt_tokens(prompts_dir, tiny_model, before)

    edit(
        prompts_dir / "personas" / "support.yaml",
        "voice_rules:\n",
        "voice_rules:\n  - Mention our spring sale in every answer, {{ user }}.\n",
    )
    wait_for_log(worker, "prompt files reloaded")
    after = request("support", "Where is my invoice?")
    edited = await answer(queue, after)
    assert edited.usage.prompt_tokens == expected_prompt_tokens(prompts_dir, tiny_model, after)
    assert edited.usage.prompt_tokens > done.usage.prompt_tokens


async def test_bad_edits_are_logged_and_the_last_good_files_keep_answering(
    start_worker: Callable[..., WorkerProcess], queue: RequestQueue, prompts_dir: Path, tiny_model: Path
) -> None:
    worker = start_worker()
    good_tokens = expected_prompt_tokens(prompts_dir, tiny_model, request("default", "hi"))
    support_tokens = expected_prompt_tokens(prompts_dir, tiny_model, request("support", "hi"))
    default_yaml = prompts_dir / "personas" / "default.yaml"
    original = default_yaml.read_bytes()
    opened = (
        original.decode().splitlines().index("  repetition_penalty: 1.1") + 1
    )  # the edit opens a list here
    bad_edits: list[tuple[Callable[[], object], str]] = [
        (
            lambda: edit(default_yaml, "repetition_penalty: 1.1", "repetition_penalty: [1.1"),
            f"default.yaml:{opened + 1}: YAML syntax error: expected ',' or ']', but got ':' "
            f"(while parsing a flow sequence started on line {opened})",
        ),
        (lambda: edit(default_yaml, "{{ company }}", "{{ compnay }}"), "unknown template variable 'compnay'"),
        (lambda: default_yaml.write_bytes(original.replace(b"Brandbot", b"Br\xe4ndbot")), "not UTF-8 text"),
        (lambda: (prompts_dir / "personas" / "support.yaml").unlink(), "no persona named 'support'"),
    ]
    for rejected, (make_bad_edit, problem) in enumerate(bad_edits, start=1):
        make_bad_edit()
        wait_for_log(worker, "prompt files rejected", count=rejected)
        assert problem in worker.log()
        done = await answer(queue, request("default", "hi"))
        assert done.usage.prompt_tokens == good_tokens  # the last good default persona answered
        default_yaml.write_bytes(original)
    # support.yaml is gone from disk, but the last good configuration still has it
    assert (await answer(queue, request("support", "hi"))).usage.prompt_tokens == support_tokens
    assert worker.process.poll() is None


LONG_ANSWER_PERSONA = """\
display_name: Long
system_prompt: You are long.
sampling:
  temperature: 0
  max_new_tokens: 1900
"""
"""Greedy decoding of the tiny random model runs to the token limit for this prompt (it is deterministic:
no date or name in it), so the answer is still being written while the test edits the file."""


async def test_request_in_flight_keeps_the_configuration_it_started_with(
    start_worker: Callable[..., WorkerProcess],
    queue: RequestQueue,
    prompts_dir: Path,
    tiny_model: Path,
    redis_client: redis.Redis,
) -> None:
    long_yaml = prompts_dir / "personas" / "long.yaml"
    long_yaml.write_text(LONG_ANSWER_PERSONA)
    worker = start_worker()
    in_flight = request("long", "hello")
    started_with = expected_prompt_tokens(prompts_dir, tiny_model, in_flight)
    await queue.enqueue(in_flight, model="default")
    async for _id, event in queue.events(in_flight.request_id):
        if isinstance(event, DeltaEvent):
            break  # generating: its prompt was built from the files as they were

    edit(long_yaml, "You are long.", "You are long, and you talk like a pirate.")
    wait_for_log(worker, "prompt files reloaded")
    stream: Any = redis_client.xrange(keys.reply_stream(in_flight.request_id))
    assert not any(parse_reply_event(fields[b"event"]).type == "done" for _id, fields in stream), (
        "the answer ended before the reload: the test proves nothing (did the tiny model change?)"
    )
    await queue.cancel(in_flight.request_id)
    async for _id, event in queue.events(in_flight.request_id):
        if isinstance(event, DoneEvent):
            assert event.finish_reason is FinishReason.CANCELLED
            assert event.usage.prompt_tokens == started_with  # not dropped, not mixed with the new files
            break
    after = request("long", "hello")
    edited_tokens = expected_prompt_tokens(prompts_dir, tiny_model, after)
    assert edited_tokens > started_with
    await queue.enqueue(after, model="default")
    async for _id, event in queue.events(after.request_id):
        if event is not None and event.type == "start":
            break
    await queue.cancel(after.request_id)
    async for _id, event in queue.events(after.request_id):
        if isinstance(event, DoneEvent):
            assert event.usage.prompt_tokens == edited_tokens  # the next request sees the edit
            break
