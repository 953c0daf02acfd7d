"""Keeping model output from doing harm in a chat: no crowd pings, ever."""

from __future__ import annotations

import re

ZERO_WIDTH_SPACE = "\u200b"

# Slack's special mentions (<!here>, <!channel|channel>, <!everyone>, <!subteam^S123|@team>) and the plain
# words that chat clients may also turn into pings.
SLACK_SPECIAL_MENTION = re.compile(r"<!(here|channel|everyone|subteam\^[A-Z0-9]+)(\|[^>]*)?>", re.IGNORECASE)
PLAIN_CROWD_MENTION = re.compile(r"@(here|channel|everyone)\b", re.IGNORECASE)


def neutralize_slack_mentions(text: str) -> str:
    """Rewrite crowd and user-group mentions so they show as text and notify no one."""
    text = SLACK_SPECIAL_MENTION.sub(lambda m: f"@{ZERO_WIDTH_SPACE}{m.group(1).split('^')[0]}", text)
    return PLAIN_CROWD_MENTION.sub(lambda m: f"@{ZERO_WIDTH_SPACE}{m.group(1)}", text)
