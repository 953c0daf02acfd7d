"""What a message of an answer carries: its text (native Markdown or mrkdwn) and its buttons.

Slack refuses `markdown_text` together with `blocks`, so a message with buttons carries its text in a
`markdown` block (the block form of `markdown_text`: same renderer, same 12,000-character limit), or in
mrkdwn `section` blocks where native Markdown is switched off. `text` is always the mrkdwn conversion:
Slack shows it in notifications and wherever blocks cannot be drawn.
"""

from __future__ import annotations

from typing import Any

from bots.slack.formatting import to_mrkdwn
from bots.splitting import split_message
from brandbot import messages

STOP_ACTION = "brandbot_stop"
FEEDBACK_GOOD_ACTION = "brandbot_feedback_good"
FEEDBACK_BAD_ACTION = "brandbot_feedback_bad"

SECTION_LIMIT = 3000
"""Slack's limit for one section block's text; longer mrkdwn is spread over several sections."""

Block = dict[str, Any]
Payload = dict[str, Any]


def text_payload(text: str, *, native: bool) -> Payload:
    """A message without buttons: `markdown_text`, or converted mrkdwn in `text`."""
    return {"markdown_text": text} if native else {"text": to_mrkdwn(text)}


def block_payload(text: str, *, native: bool, actions: Block | None = None) -> Payload:
    """A message whose text sits in blocks, so that buttons can follow it."""
    mrkdwn = to_mrkdwn(text)
    blocks: list[Block]
    if native:
        blocks = [{"type": "markdown", "text": text}]
    else:
        blocks = [
            {"type": "section", "text": {"type": "mrkdwn", "text": part}}
            for part in split_message(mrkdwn, SECTION_LIMIT)
        ]
    if actions is not None:
        blocks.append(actions)
    return {"blocks": blocks, "text": mrkdwn}


def stop_button(request_id: str, asker_id: str) -> Block:
    """Shown while an answer is written; the value says which request, and whose it is."""
    return {
        "type": "actions",
        "block_id": "brandbot_controls",
        "elements": [
            {
                "type": "button",
                "action_id": STOP_ACTION,
                "text": {"type": "plain_text", "text": messages.SLACK_STOP_BUTTON},
                "value": f"{request_id}:{asker_id}",
                "style": "danger",
            }
        ],
    }


def feedback_buttons(request_id: str) -> Block:
    """👍/👎 under a finished answer, rated against its request id."""
    return {
        "type": "actions",
        "block_id": "brandbot_feedback",
        "elements": [
            {
                "type": "button",
                "action_id": action_id,
                "text": {"type": "plain_text", "text": label, "emoji": True},
                "value": request_id,
                "accessibility_label": description,
            }
            for action_id, label, description in (
                (FEEDBACK_GOOD_ACTION, "👍", messages.FEEDBACK_GOOD_LABEL),
                (FEEDBACK_BAD_ACTION, "👎", messages.FEEDBACK_BAD_LABEL),
            )
        ],
    }


def parse_stop_value(value: str) -> tuple[str, str] | None:
    """(request id, asker id) from a Stop button's value, or None if it is not one of ours."""
    request_id, _, asker_id = value.partition(":")
    return (request_id, asker_id) if request_id and asker_id else None
