"""Short messages that are not answers: a hint in the thread, or a refusal only the asker sees.

Both are best effort: if Slack refuses them there is no one else to tell, so they are logged (by error
code, never by text) and the front-end carries on.
"""

from __future__ import annotations

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.blocks import text_payload
from bots.slack.formatting import to_mrkdwn
from bots.slack.sink import SLACK_UNREACHABLE
from brandbot.logs import get_logger

log = get_logger(__name__)


async def say_in_thread(
    client: AsyncWebClient, *, channel: str, thread_ts: str, text: str, native_markdown: bool
) -> None:
    """A message everyone in the thread sees (e.g. "I can't reach my workers")."""
    try:
        await client.chat_postMessage(
            channel=channel, thread_ts=thread_ts, **text_payload(text, native=native_markdown)
        )
    except SlackApiError as error:
        log.warning("notice not posted", channel=channel, error=error.response.get("error"))
    except SLACK_UNREACHABLE:
        log.warning("notice not posted", channel=channel, error="unreachable")


async def whisper(
    client: AsyncWebClient, *, channel: str, user: str, text: str, thread_ts: str | None = None
) -> None:
    """An ephemeral message: a refusal or a confirmation is nobody else's business."""
    try:
        await client.chat_postEphemeral(channel=channel, user=user, text=to_mrkdwn(text), thread_ts=thread_ts)
    except SlackApiError as error:
        log.warning("ephemeral notice not posted", channel=channel, error=error.response.get("error"))
    except SLACK_UNREACHABLE:
        log.warning("ephemeral notice not posted", channel=channel, error="unreachable")
