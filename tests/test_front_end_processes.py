"""Front-end processes stop cleanly, and a stop loses no question: real `brandbot slack` and
`brandbot discord` subprocesses against the emulators, real Redis, a real worker."""

# ruff: noqa: F811 (test arguments are the imported fixtures, by pytest's design)

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from pydantic import AnyHttpUrl, SecretStr

from brandbot import messages
from brandbot.emulators.discord import DiscordEmulator
from brandbot.emulators.slack import Message, SlackEmulator
from brandbot.settings import Settings
from tests.conftest import REPO, WorkerProcess, free_port, set_sampling, worker_env
from tests.core_fixtures import inflight_records, recorded_sinks
from tests.discord_fixtures import discord_emulator  # noqa: F401 (fixture by name)
from tests.slack_fixtures import front_end_settings, is_final_answer, visible

BURST = 12


@dataclass
class FrontEnd:
    """A real `brandbot slack|discord` subprocess; its output goes to `log_path`."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:  # noqa: ASYNC109
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return await asyncio.to_thread(self.process.wait, timeout)


@asynccontextmanager
async def front_end(command: str, settings: Settings, log_path: Path) -> AsyncIterator[FrontEnd]:
    process = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block; waiting is off the loop
        [sys.executable, "-m", "brandbot.cli", command],
        env=worker_env(settings),
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    handle = FrontEnd(process, log_path)
    try:
        yield handle
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def short_answers(prompts_dir: Path) -> None:
    """A burst of short answers: the test is about losing none, not about the tiny model's speed."""
    persona = prompts_dir / "personas" / "default.yaml"
    set_sampling(persona, max_new_tokens=16)


def answers_in(slack: SlackEmulator, asked: list[str]) -> dict[str, list[Message]]:
    return {ts: [m for m in slack.messages_in("C1", ts) if m.user == slack.bot_user_id] for ts in asked}


@pytest.mark.timeout(300)  # a real worker answers the burst on a shared CPU
async def test_a_slack_front_end_reads_events_over_several_socket_mode_connections(
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    slack = slack_emulator
    slack.spread_envelopes = True  # as Slack does: each event down one of the app's connections
    base = front_end_settings(slack, settings(slack_socket_connections=3))
    short_answers(base.prompts_dir)
    start_worker(worker_concurrency=4)
    asked: list[str] = []
    async with front_end("slack", base, tmp_path / "slack.log") as running:
        await slack.wait_until(lambda: slack.open_connections == 3, timeout=60, what="three connections")
        for number in range(9):
            message, envelope = await slack.send_user_message(
                channel="C1",
                user=f"U{number}",
                text=f"<@{slack.bot_user_id}> q {number}",
                event_type="app_mention",
            )
            await slack.wait_for_ack(envelope)
            asked.append(message.ts)
        await slack.wait_until(
            lambda: all(
                len(replies) == 1 and is_final_answer(replies[0])
                for replies in answers_in(slack, asked).values()
            ),
            timeout=180,
            what="every question answered once",
        )
        assert sorted(slack.envelopes_per_connection.values()) == [3, 3, 3]  # each connection read its share
        assert await running.stop() == 0


@pytest.mark.timeout(300)  # a real worker answers the whole burst on a shared CPU
async def test_a_slack_front_end_stopped_mid_intake_leaves_no_question_unanswered(
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    slack = slack_emulator
    base = front_end_settings(slack, settings(worker_wait_seconds=120.0))
    short_answers(base.prompts_dir)
    slack.latency["conversations.replies"] = 1.5  # reading the thread is slow: the stop lands mid-intake
    asked: list[str] = []  # each question in a thread of its own, whose answer goes there
    async with front_end("slack", base, tmp_path / "first.log") as first:
        await slack.wait_for_client(timeout=30)
        for number in range(BURST):
            thread = slack.add_user_message(channel="C1", user="U0", text=f"release {number} is out")
            _message, envelope = await slack.send_user_message(
                channel="C1",
                user=f"U{number}",
                text=f"<@{slack.bot_user_id}> question {number}",
                thread_ts=thread.ts,
                event_type="app_mention",
            )
            await slack.wait_for_ack(envelope)
            asked.append(thread.ts)
        code = await first.stop(signal.SIGTERM)
        assert code == 0, first.log()
        assert "Traceback" not in first.log()

    slack.latency.clear()
    start_worker(worker_concurrency=BURST)
    async with front_end("slack", base, tmp_path / "second.log") as second:
        await slack.wait_until(
            lambda: all(
                len(replies) == 1 and is_final_answer(replies[0])
                for replies in answers_in(slack, asked).values()
            ),
            timeout=180,
            what="every question answered once",
        )
        await asyncio.sleep(0.5)  # a duplicate, were there one, shows up by now
        assert all(len(replies) == 1 for replies in answers_in(slack, asked).values())
        assert await second.stop(signal.SIGINT) == 0  # Ctrl-C
        assert "Traceback" not in second.log()
    assert inflight_records(redis_client, "slack") == 0


@pytest.mark.timeout(300)
async def test_a_slack_front_end_killed_mid_intake_leaves_no_question_thinking_forever(
    slack_emulator: SlackEmulator,
    settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """A crash between "seen" and "queued": each question ends in its answer or in one clear error."""
    slack = slack_emulator
    base = front_end_settings(slack, settings(worker_wait_seconds=120.0))
    short_answers(base.prompts_dir)
    slack.latency["conversations.replies"] = 3.0  # the kill lands while the thread is being read
    asked: list[str] = []  # each question in a thread of its own, whose answer goes there
    async with front_end("slack", base, tmp_path / "first.log") as first:
        await slack.wait_for_client(timeout=30)
        for number in range(4):
            thread = slack.add_user_message(channel="C1", user="U0", text=f"release {number} is out")
            _message, envelope = await slack.send_user_message(
                channel="C1",
                user=f"U{number}",
                text=f"<@{slack.bot_user_id}> hi {number}",
                thread_ts=thread.ts,
                event_type="app_mention",
            )
            await slack.wait_for_ack(envelope)
            asked.append(thread.ts)
        # Placeholders shown and recorded; the thread is still being read (a kill between a post and its
        # record is a window no process can close: the restarted one would post a second placeholder).
        await slack.wait_until(
            lambda: [bool(sink["head_ts"]) for sink in recorded_sinks(redis_client, "slack")] == [True] * 4,
            timeout=30,
            what="the placeholders, recorded",
        )
        await first.stop(signal.SIGKILL)

    slack.latency.clear()
    start_worker()

    def ended(replies: list[Message]) -> bool:
        return len(replies) == 1 and (
            is_final_answer(replies[0]) or visible(replies[0]) == messages.GENERATION_FAILED
        )

    async with front_end("slack", base, tmp_path / "second.log") as second:  # resumes once the leases lapse
        await slack.wait_until(
            lambda: all(ended(replies) for replies in answers_in(slack, asked).values()),
            timeout=120,
            what="every question to end in an answer or an error",
        )
        assert await second.stop() == 0
    assert inflight_records(redis_client, "slack") == 0


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
async def test_the_discord_front_end_stops_cleanly_on_a_signal(
    discord_emulator: DiscordEmulator,
    settings: Callable[..., Settings],
    tmp_path: Path,
    stop_signal: signal.Signals,
) -> None:
    emulator = discord_emulator
    base = settings().model_copy(
        update={
            "discord_token": SecretStr(emulator.token),
            "discord_api_url": AnyHttpUrl(emulator.api_url),
            "discord_gateway_url": emulator.gateway_url,
        }
    )
    async with front_end("discord", base, tmp_path / "discord.log") as bot:
        await emulator.wait_for_identify(timeout=30)
        code = await bot.stop(stop_signal, timeout=20)
    assert code == 0, bot.log()
    assert "Traceback" not in bot.log()
    assert "stopped" in bot.log()


async def test_an_unreachable_platform_api_is_one_line_per_attempt_never_a_traceback(
    settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Slack's front-end keeps retrying (a line per attempt); Discord's stops with one line for the admin."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    slack_settings = settings(
        slack_bot_token=SecretStr("xoxb-1"),
        slack_app_token=SecretStr("xapp-1"),
        slack_api_url=AnyHttpUrl(f"{nowhere}/api/"),
    )
    discord_settings = settings(
        discord_token=SecretStr("t"), discord_api_url=AnyHttpUrl(f"{nowhere}/api/v10")
    )
    async with (
        front_end("slack", slack_settings, tmp_path / "slack.log") as slack,
        front_end("discord", discord_settings, tmp_path / "discord.log") as discord,
    ):
        discord_code = await asyncio.to_thread(discord.process.wait, 60)
        for _ in range(600):
            if "Failed to connect" in slack.log():
                break
            await asyncio.sleep(0.1)
        assert "Failed to connect" in slack.log() and slack.process.poll() is None
        assert await slack.stop() == 0

    assert "Traceback" not in slack.log()
    assert discord_code == 1
    assert "Traceback" not in discord.log()
    assert discord.log().strip().splitlines()[-1].startswith(f"brandbot: cannot reach Discord at {nowhere}")
