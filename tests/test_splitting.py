"""Long answers split for chat limits: on paragraph or line boundaries, never breaking a code fence."""

from __future__ import annotations

import re

import pytest

from bots.splitting import split_message


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
