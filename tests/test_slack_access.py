"""Slack access rules hold everywhere: in DMs, for other workspaces, for outsiders in Slack Connect."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from bots.access import AccessRules
from brandbot import messages
from brandbot.emulators.slack import Message, SlackEmulator
from brandbot.settings import Settings
from tests.slack_fixtures import MODEL_QUEUE, answer_with, scripted_worker, slack_running

ANSWER = "Allowed, so answered."
PARTNER_TEAM = "T0PARTNER"
OUTSIDER = "U0OUTSIDER"


async def send_as_outsider(
    slack: SlackEmulator,
    *,
    channel: str,
    text: str,
    channel_type: str = "channel",
    event_type: str = "message",
) -> Message:
    """A person of another workspace writes in a Slack Connect conversation shared with ours: the event
    carries their own team as `user_team`, and the payload says the conversation is shared."""
    slack.add_user(OUTSIDER, "pat", team_id=PARTNER_TEAM)
    message = slack.add_user_message(channel=channel, user=OUTSIDER, text=text)
    event: dict[str, Any] = {"type": event_type, "user": OUTSIDER, "text": text, "channel": channel}
    event |= {"ts": message.ts, "team": PARTNER_TEAM, "user_team": PARTNER_TEAM, "source_team": PARTNER_TEAM}
    if event_type == "message":
        event["channel_type"] = channel_type
    payload = slack.build_event_payload(event) | {"is_ext_shared_channel": True}
    await slack.wait_for_ack(await slack.send_envelope("events_api", payload))
    return message


async def send_dm(slack: SlackEmulator, user: str, text: str) -> Message:
    message, envelope = await slack.send_user_message(channel="D1", user=user, text=text, channel_type="im")
    await slack.wait_for_ack(envelope)
    return message


async def test_a_dm_is_refused_while_channels_are_allow_listed_unless_dms_are_switched_on(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    base = settings()
    async with (
        slack_running(slack, base, rules=AccessRules(allow_channels=["C1"])) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER)) as taken,
    ):
        await send_dm(slack, "U1", "a DM is in no allowed channel")
        await slack.wait_until(lambda: len(slack.ephemerals) == 1)
        assert redis_client.llen(MODEL_QUEUE) == 0 and not taken

        bot.rules[0] = AccessRules(allow_channels=["C1"], direct_messages=True)  # the admin's explicit choice
        answered = await send_dm(slack, "U1", "and now?")
        assert ANSWER in str((await bot.wait_for_answer("D1", answered.ts)).snapshot())

    [refusal] = slack.ephemerals
    assert (refusal.recipient, refusal.text) == ("U1", messages.SLACK_DIRECT_MESSAGES_OFF)
    assert [request.user.id for request in taken] == ["U1"]


async def test_a_dm_from_a_workspace_not_allowed_is_refused(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    base = settings()
    rules = AccessRules(allow_teams=[slack.team_id], allow_external_users=True)
    async with (
        slack_running(slack, base, rules=rules) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER)) as taken,
    ):
        await send_as_outsider(slack, channel="D2", text="hello from the partner", channel_type="im")
        await slack.wait_until(lambda: len(slack.ephemerals) == 1)
        insider = await send_dm(slack, "U1", "hello from home")
        await bot.wait_for_answer("D1", insider.ts)

    [refusal] = slack.ephemerals
    assert (refusal.recipient, refusal.text) == (OUTSIDER, messages.NOT_ALLOWED)
    assert [request.user.id for request in taken] == ["U1"]


async def test_outsiders_in_a_slack_connect_channel_are_refused_unless_allowed(
    slack_emulator: SlackEmulator, settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    slack = slack_emulator
    base = settings()
    mention = f"<@{slack.bot_user_id}> what is on the roadmap?"
    async with (
        slack_running(slack, base) as bot,
        scripted_worker(base.redis_url, answer_with(ANSWER)) as taken,
    ):
        await send_as_outsider(slack, channel="C1", text=mention, event_type="app_mention")
        await slack.wait_until(lambda: len(slack.ephemerals) == 1)
        assert redis_client.llen(MODEL_QUEUE) == 0 and not taken

        bot.rules[0] = AccessRules(allow_external_users=True)
        question = await send_as_outsider(slack, channel="C1", text=mention, event_type="app_mention")
        assert ANSWER in str((await bot.wait_for_answer("C1", question.ts)).snapshot())

    [refusal] = slack.ephemerals
    assert (refusal.recipient, refusal.channel, refusal.text) == (OUTSIDER, "C1", messages.NOT_ALLOWED)
    assert [request.user.id for request in taken] == [OUTSIDER]
