"""Long answers split for chat limits: on paragraph or line boundaries, never breaking a code fence."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bots.splitting import MIN_LIMIT, Part, split_message, split_parts


def strip_added_fences(parts: list[str]) -> str:
    joined = "\n".join(parts)
    return re.sub(r"\n```\n```python\n", "\n", joined)


def test_short_text_is_one_part() -> None:
    assert split_message("hello", 2000) == ["hello"]


def test_split_prefers_paragraph_boundaries() -> None:
    text = "\n\n".join(f"Paragraph {i} " + "word " * 30 for i in range(10))
    parts = split_message(text, 400)
    assert all(len(p) <= 400 for p in parts)
    assert all(p.startswith("Paragraph") for p in parts)
    assert "".join(p.replace(" ", "").replace("\n", "") for p in parts) == text.replace(" ", "").replace(
        "\n", ""
    )


def test_code_fence_is_closed_and_reopened_across_parts() -> None:
    code = "\n".join(f"print({i})" for i in range(200))
    text = f"Here is the script:\n\n```python\n{code}\n```\n\nRun it twice."
    parts = split_message(text, 500)
    assert len(parts) > 2
    for part in parts:
        assert len(part) <= 500
        assert part.count("```") % 2 == 0, f"unbalanced fence in part: {part[:60]!r}"
    assert all(p.startswith("```python") for p in parts[1:-1])
    assert strip_added_fences(parts).replace("\n", "") == text.replace("\n", "")


def test_a_single_long_word_is_cut_hard() -> None:
    parts = split_message("x" * 1000, 300)
    assert all(len(p) <= 300 for p in parts) and "".join(parts) == "x" * 1000


def test_tiny_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        split_message("abc", 10)


# --- The contract, for every text (see bots/splitting.py) -------------------------------------------------

ISSUE_LONG_INFO = "```" + "word " * 140 + "\n" + "more text here " * 100
"""Issue 9: a fence whose info string is longer than a third of the window; the old splitter looped."""

REFERENCE_FENCE = re.compile(r"\s*(`{3,}|~{3,})(.*)")


def fence_left_open(message: str, longest_marker: int) -> str | None:
    """The marker of a fence still open at the end of `message`, read as a chat reads it (a reference
    written apart from the splitter's own reader)."""
    open_marker: str | None = None
    for line in message.split("\n"):
        match = REFERENCE_FENCE.fullmatch(line)
        if match is None or len(match.group(1)) > longest_marker:
            continue
        marker, info = match.group(1), match.group(2)
        if marker[0] == "`" and "`" in info:
            continue  # ```x``` on one line is inline code
        if open_marker is None:
            open_marker = marker
        elif marker[0] == open_marker[0] and len(marker) >= len(open_marker) and not info.strip():
            open_marker = None
    return open_marker


def assert_split_keeps_the_contract(text: str, limit: int) -> list[Part]:
    parts = split_parts(text, limit)
    assert [part.text for part in parts] == split_message(text, limit)
    position = 0
    for part in parts:
        assert len(part.text) <= limit
        assert part.body.strip(), "no part is blank"
        # No text lost: the bodies are the text's own slices, in order, with only whitespace between.
        index = text.find(part.body, position)
        assert index >= 0, f"body not found in order: {part.body[:40]!r}"
        assert not text[position:index].strip(), f"text dropped: {text[position:index][:40]!r}"
        position = index + len(part.body)
        # The splitter adds nothing but fence lines.
        assert part.reopen == "" or re.fullmatch(r"(`{3,}[^\s`]*|~{3,}\S*)\n", part.reopen)
        assert part.close == "" or re.fullmatch(r"\n(`{3,}|~{3,})", part.close)
        assert fence_left_open(part.text, limit // 4) is None, f"unbalanced fence in {part.text[:60]!r}"
    assert not text[position:].strip(), "the end of the text was dropped"
    return parts


@pytest.mark.timeout(10)
def test_issue_long_info_string_terminates_and_reopens_with_the_language_only() -> None:
    parts = assert_split_keeps_the_contract(ISSUE_LONG_INFO, 2000)
    assert len(parts) == 2
    assert parts[1].reopen == "```word\n"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("marker", ["````", "`````", "~~~~~~"])
def test_long_fence_markers_fit_the_limit(marker: str) -> None:
    text = f"Intro.\n\n{marker}python\n" + "value = compute(1)\n" * 400 + f"{marker}\n\nDone."
    parts = assert_split_keeps_the_contract(text, 2000)
    assert len(parts) > 2
    assert all(part.text.startswith(f"{marker}python\n") for part in parts[1:-1])
    assert all(part.text.endswith(f"\n{marker}") for part in parts[:-1])


@pytest.mark.timeout(10)
@pytest.mark.parametrize("marker", ["```", "````", "~~~~~"])
def test_a_code_block_of_one_endless_line_is_cut_hard_and_stays_fenced(marker: str) -> None:
    text = f"{marker}python\n" + "x" * 5000 + f"\n{marker}"
    parts = assert_split_keeps_the_contract(text, 2000)
    assert len(parts) == 3
    assert all(part.text.startswith(f"{marker}python\n") for part in parts)


@pytest.mark.timeout(10)
def test_a_fence_still_open_at_the_end_of_a_streaming_answer_is_closed() -> None:
    assert split_message("Look:\n```python\nprint(1)\n", 2000) == ["Look:\n```python\nprint(1)\n```"]


def test_a_text_that_fits_and_closes_its_fences_comes_back_unchanged() -> None:
    text = "\n  Look:\n```python\nprint(1)\n```\n\n"
    assert split_message(text, 2000) == [text]


def test_inline_triple_backticks_are_not_a_fence() -> None:
    text = "Use ```x``` inline. " * 30
    parts = assert_split_keeps_the_contract(text, 200)
    assert all(not part.reopen and not part.close for part in parts)


def test_an_absurdly_long_marker_is_read_as_text() -> None:
    text = "`" * 30 + "\n" + "word " * 100
    parts = assert_split_keeps_the_contract(text, 100)
    assert all(not part.reopen and not part.close for part in parts)


def test_whitespace_only_text_gives_no_part() -> None:
    assert split_message(" \n\n\t ", 100) == []


FENCE_LINES = st.builds(
    lambda indent, marker, info: f"\n{indent}{marker}{info}\n",
    st.sampled_from(["", " ", "   "]),
    st.sampled_from(["```", "````", "`````", "~~~", "~~~~", "``````````", "`" * 40]),
    st.one_of(
        st.just(""),
        st.sampled_from(["python", "js", " rust ", "py title=x", "a`b"]),
        st.text(alphabet="ab ", max_size=400),
    ),
)
TEXT_PIECES = st.one_of(
    st.sampled_from(["\n", "\n\n", " ", "  ", "\t", "    ", "\n    ", "`", "```x```", "\n```\n", "\r\n"]),
    st.text(alphabet="abcdefgh", min_size=1, max_size=12),
    st.text(alphabet="xy", min_size=30, max_size=600),
    st.text(max_size=20),
    FENCE_LINES,
)
ANSWERS = st.lists(TEXT_PIECES, max_size=120).map("".join)


@pytest.mark.timeout(300)
@settings(max_examples=400, deadline=timedelta(seconds=5), database=None)
@given(text=ANSWERS, limit=st.integers(min_value=MIN_LIMIT, max_value=400))
def test_every_split_ends_fits_loses_nothing_and_balances_fences(text: str, limit: int) -> None:
    assert_split_keeps_the_contract(text, limit)


@pytest.mark.timeout(300)
@settings(max_examples=60, deadline=timedelta(seconds=5), database=None)
@given(text=st.lists(TEXT_PIECES, min_size=50, max_size=400).map("".join))
def test_every_split_at_the_discord_limit_keeps_the_contract(text: str) -> None:
    assert_split_keeps_the_contract(text, 2000)
