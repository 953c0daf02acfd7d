"""Redis Sentinel: the master dies in the middle of a stream of questions, and none of them is lost.

Real processes: a master and a replica (both on the shipped ACL), one sentinel (quorum 1, down after
1 s), a real `brandbot worker` and the Slack front-end in-process, both finding the master through the
sentinel on their own ACL users. The master is SIGKILLed while questions are being asked and answered.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from brandbot import keys, messages
from brandbot.connections import async_client, sync_client
from brandbot.emulators.slack import Message, SlackEmulator
from brandbot.settings import Settings
from tests.conftest import REPO, free_port, length_note, set_sampling
from tests.redis_servers import SentinelSet, start_worker_on
from tests.slack_fixtures import done_of, settled, slack_running, visible

QUESTIONS = 10
KILL_AFTER_QUESTION = 3
"""The master is killed right after question 3 is acknowledged (0-3 not all answered yet); 4-9 follow."""

PAUSE_BETWEEN_QUESTIONS_SECONDS = 0.4
FAILOVER_WAIT_SECONDS = 30.0


def answered(replies: list[Message]) -> bool:
    return bool(replies) and all(settled(reply) for reply in replies)


@pytest.fixture
def short_answers(prompts_dir: Path) -> None:
    """Short answers keep ten of them on a loaded CPU within the test's time limit."""
    persona = prompts_dir / "personas" / "default.yaml"
    set_sampling(persona, max_new_tokens=48)


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    servers = SentinelSet(tmp_path / "sentinel-set")
    servers.start()
    yield servers
    servers.stop()


@pytest.mark.timeout(300)
async def test_master_killed_during_a_stream_of_questions_every_question_gets_one_answer(
    short_answers: None,
    sentinel_set: SentinelSet,
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    def through_sentinel(user: str) -> Settings:
        return settings(
            **sentinel_set.settings_for(user),
            redis_failover_wait_seconds=FAILOVER_WAIT_SECONDS,
            worker_wait_seconds=FAILOVER_WAIT_SECONDS,  # the failover is not "no worker"
        )

    watcher = sync_client(through_sentinel("admin"))
    worker = start_worker_on(through_sentinel("worker"), watcher, tmp_path / "worker.log")
    first_master = sentinel_set.master()
    try:
        async with slack_running(slack_emulator, through_sentinel("frontend")) as slack:
            asked: list[Message] = []
            for index in range(QUESTIONS):
                # One person per question: the per-user rate limit is not what this test is about.
                asked.append(await slack.mention(f"C{index}", f"U{index}", f"question number {index}"))
                if index == KILL_AFTER_QUESTION:
                    first_master.kill()
                    killed_at = time.monotonic()
                    in_flight = [q for q in asked if not answered(slack.bot_messages(q.channel, q.ts))]
                await asyncio.sleep(PAUSE_BETWEEN_QUESTIONS_SECONDS)
            await asyncio.to_thread(sentinel_set.wait_for_failover, first_master.port)
            failover_seconds = time.monotonic() - killed_at
            answers = [
                await slack.wait_for_answer(question.channel, question.ts, timeout=120) for question in asked
            ]
        streams = [keys.as_text(key) for key in watcher.scan_iter(match=keys.reply_stream("*"))]
        dones = [done_of(watcher, stream.rpartition(":")[2]) for stream in streams]
    finally:
        worker.stop()
        watcher.close()
    assert sentinel_set.master() is not first_master
    for question, answer in zip(asked, answers, strict=True):
        text = visible(answer).strip()
        # Exactly one message per thread (wait_for_answer checks it), and it is an answer, not an excuse.
        assert text and not messages.is_bot_notice(text), (question.channel, text)
    # One finished reply per question on the new master, and each shown exactly as the worker wrote it
    # (a delta written twice by a retried command would show here).
    assert len(dones) == QUESTIONS and all(done is not None for done in dones)
    assert sorted(visible(answer).strip() for answer in answers) == sorted(
        done.text.strip() + length_note(done) for done in dones if done is not None
    )
    assert in_flight  # the failover did happen in the middle of answering
    attempts = sorted(done.attempt for done in dones if done is not None)
    print(
        f"\nfailover: new master named {failover_seconds:.1f} s after the kill; {len(in_flight)} questions "
        f"in flight then; attempts {attempts}"
    )


@pytest.mark.parametrize("client_kind", ["sync", "asyncio"])
async def test_a_reader_blocked_on_the_master_follows_the_failover(
    sentinel_set: SentinelSet, settings: Callable[..., Settings], client_kind: str
) -> None:
    """A connection broken by the master's death reconnects to the new master, not the dead address."""
    base = settings(
        **sentinel_set.settings_for("frontend"), redis_failover_wait_seconds=FAILOVER_WAIT_SECONDS
    )
    stream = keys.reply_stream("r1")
    first_master = sentinel_set.master()

    if client_kind == "sync":
        blocking = sync_client(base, socket_connect_timeout=2)
        blocking.ping()

        async def read() -> Any:
            return await asyncio.to_thread(blocking.xread, {stream: "0-0"}, block=20_000)

    else:
        evented = async_client(base, socket_connect_timeout=2)
        await evented.ping()

        async def read() -> Any:
            return await evented.xread({stream: "0-0"}, block=20_000)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.5)  # the reader now waits on the master, on an open connection
    first_master.kill()
    await asyncio.to_thread(sentinel_set.wait_for_failover, first_master.port)
    with sync_client(base) as writer:
        writer.xadd(stream, {"event": "after the failover"})
    batches = await asyncio.wait_for(reader, timeout=FAILOVER_WAIT_SECONDS * 2)
    [(_name, [(_id, fields)])] = batches
    assert fields == {b"event": b"after the failover"}


def test_unreachable_sentinels_end_in_one_line_not_a_hang(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "BRANDBOT_REDIS_URL": "redis://status:user-secret@unused:6379/0",
        "BRANDBOT_REDIS_SENTINELS": f'["127.0.0.1:{free_port()}"]',
        "BRANDBOT_REDIS_SENTINEL_PASSWORD": "sentinel-secret",
        "BRANDBOT_REDIS_FAILOVER_WAIT_SECONDS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "brandbot.cli", "status"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        "brandbot: cannot reach Redis at BRANDBOT_REDIS_URL (sentinel master mymaster via "
    )
    assert line.endswith("No master found for 'mymaster'")
