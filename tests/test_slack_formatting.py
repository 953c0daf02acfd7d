"""Markdown from the model as Slack mrkdwn, for `text` and for workspaces without native Markdown."""

from __future__ import annotations

import pytest

from bots.slack.blocks import SECTION_LIMIT, block_payload, feedback_buttons, stop_button, text_payload
from bots.slack.formatting import to_mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("***both***", "*_both_*"),
        ("~~gone~~", "~gone~"),
        ("**bold with _italic_ inside**", "*bold with _italic_ inside*"),
        ("[the guide](https://example.com/a_b?x=1&y=2)", "<https://example.com/a_b?x=1&amp;y=2|the guide>"),
        ("![diagram](https://example.com/d.png)", "<https://example.com/d.png|diagram>"),
        ("mail [us](mailto:help@example.com)", "mail <mailto:help@example.com|us>"),
        ("# Title\n## Sub **title**", "*Title*\n*Sub title*"),
        ("- one\n* two\n+ three", "• one\n• two\n• three"),
        ("- top\n  - nested", "• top\n    • nested"),
        ("1. first\n2) second", "1. first\n2. second"),
        ("- [ ] todo\n- [x] done", "• ☐ todo\n• ☑ done"),
        ("> quoted **words**", "> quoted *words*"),
        ("---", "──────────"),
        ("use `a*b*c` here", "use `a*b*c` here"),
        ("2 * 3 * 4 and snake_case_name", "2 * 3 * 4 and snake_case_name"),
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
    ],
)
def test_markdown_becomes_mrkdwn(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


def test_fenced_code_keeps_its_content_and_drops_the_language() -> None:
    markdown = "Run this:\n\n```python\nif a < b and **kwargs:\n    print('# not a heading')\n```\nDone."
    assert to_mrkdwn(markdown) == (
        "Run this:\n\n```\nif a &lt; b and **kwargs:\n    print('# not a heading')\n```\nDone."
    )


def test_a_fence_left_open_by_a_cut_answer_is_closed() -> None:
    assert to_mrkdwn("```js\nlet x = 1;") == "```\nlet x = 1;\n```"


def test_model_markup_cannot_become_pings_or_unsafe_links() -> None:
    model_wrote = (
        "<!channel> <!here> <@U123> <!subteam^S1> [click](javascript:alert(1)) <https://evil.example|x>"
    )
    converted = to_mrkdwn(model_wrote)
    assert "<!" not in converted and "<@" not in converted and "<https" not in converted
    assert "javascript:" in converted and "<javascript" not in converted  # shown as text, not a link
    assert to_mrkdwn("\ue0005\ue001 survives") == "5 survives"  # the converter's own markers are not input


def test_native_markdown_goes_in_markdown_text_or_a_markdown_block() -> None:
    assert text_payload("**hi**", native=True) == {"markdown_text": "**hi**"}
    payload = block_payload("**hi**", native=True, actions=feedback_buttons("r1"))
    assert payload["blocks"][0] == {"type": "markdown", "text": "**hi**"}
    assert payload["text"] == "*hi*"  # notifications show mrkdwn
    assert [e["value"] for e in payload["blocks"][1]["elements"]] == ["r1", "r1"]


def test_without_native_markdown_long_text_spreads_over_sections() -> None:
    text = "\n\n".join(f"**Paragraph {i}** " + "word " * 100 for i in range(20))
    payload = block_payload(text, native=False, actions=stop_button("r1", "U1"))
    sections = [b for b in payload["blocks"] if b["type"] == "section"]
    assert len(sections) > 1 and all(len(s["text"]["text"]) <= SECTION_LIMIT for s in sections)
    words = "\n".join(s["text"]["text"] for s in sections).split()
    assert words == to_mrkdwn(text).split()  # split on paragraph boundaries, nothing lost
    assert payload["blocks"][-1]["elements"][0]["value"] == "r1:U1"
    assert text_payload("**hi**", native=False) == {"text": "*hi*"}
