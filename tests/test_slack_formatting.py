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


# Adversarial lines, each 240,000 characters: the regex converter took time growing with the square of
# the line (with the cube for the heading; the nested quote overflowed the stack), i.e. many minutes
# here, against a fraction of a second for a linear scan. The timeout is the assertion: generous enough
# for a loaded machine, far below what a quadratic converter needs at this size.
ADVERSARIAL_SIZE = 240_000
ADVERSARIAL_LINES = {
    "unclosed bold": ("**a " * (ADVERSARIAL_SIZE // 4), "**a " * (ADVERSARIAL_SIZE // 4)),
    # Inside `***`, `**` after a `*` may close bold: pairs of these become bold spans, as they always did.
    "unclosed bold-italic": ("***a " * (ADVERSARIAL_SIZE // 5), "**a **a " * (ADVERSARIAL_SIZE // 10)),
    "unclosed underscores": ("__a " * (ADVERSARIAL_SIZE // 4), "__a " * (ADVERSARIAL_SIZE // 4)),
    "unclosed italic": ("*a " * (ADVERSARIAL_SIZE // 3), "*a " * (ADVERSARIAL_SIZE // 3)),
    "unclosed underscore": ("_a " * (ADVERSARIAL_SIZE // 3), "_a " * (ADVERSARIAL_SIZE // 3)),
    "unclosed strike": ("~~a " * (ADVERSARIAL_SIZE // 4), "~~a " * (ADVERSARIAL_SIZE // 4)),
    "unclosed link labels": ("[a" * (ADVERSARIAL_SIZE // 2), "[a" * (ADVERSARIAL_SIZE // 2)),
    "unclosed link target": ("[a](" + "x" * ADVERSARIAL_SIZE, "[a](" + "x" * ADVERSARIAL_SIZE),
    "heading with a long gap": ("# a" + " " * ADVERSARIAL_SIZE + "b", "*a" + " " * ADVERSARIAL_SIZE + "b*"),
    "deeply nested quote": (">" * ADVERSARIAL_SIZE + "x", "> " * ADVERSARIAL_SIZE + "x"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(ADVERSARIAL_LINES))
def test_adversarial_markdown_converts_in_linear_time(name: str) -> None:
    markdown, mrkdwn = ADVERSARIAL_LINES[name]
    assert to_mrkdwn(markdown) == mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("``a ` b`` and `c`", "`a ` b` and `c`"),  # a run closes at the next run of its own length
        ("``not code`", "``not code`"),
        ("[outer [inner](https://e.com)", "[outer <https://e.com|inner>"),
        ("> > nested **quote**", "> > nested *quote*"),
        ("## Title ##", "*Title*"),
    ],
)
def test_code_spans_links_quotes_and_headings_pair_as_commonmark_does(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn
