"""Split long answers for chat limits on paragraph or line boundaries, never leaving a code fence broken.

A split inside a fenced block closes the fence at the end of one part and reopens it (same marker and
language) at the start of the next, so each message renders on its own. The contract, checked by
property tests (`tests/test_splitting.py`):

- it always ends: every pass moves forward by at least one character of the text;
- every part is at most `limit` characters, added fences included;
- no text is lost: each part is `reopen + body + close` (see `Part`), every body is a slice of the text,
  in order, and only whitespace lies between consecutive bodies (or before the first, after the last).
  That whitespace is what a cut drops: the trailing whitespace of the part before it and the blank lines
  that follow it (the indentation of the next part's first line is kept, unless the cut fell inside a
  line). A text that fits in one part and leaves no fence open comes back unchanged;
- every part leaves no fence open: a fence still open where a part ends is closed there (also at the end
  of an answer still being written) and reopened in the next part.

Fence lines are read line by line as each part renders on its own (a cut inside a line starts a new
line). A fence marker longer than a quarter of the limit is read as plain text: closing and reopening it
would leave no room for the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

MIN_LIMIT = 40
"""Below this, an added closing and reopening fence could leave no room for text."""

FENCE = re.compile(r"^\s*(?:(`{3,})([^`]*)|(~{3,})(.*))$")
"""A fence line: three or more backticks or tildes, then an info string (a backtick fence's info string
has no backtick, as in CommonMark: "```x```" on one line is inline code, not a fence)."""

_WHITESPACE = re.compile(r"\s*")

_CUT_SEPARATORS = ("\n\n", "\n", " ")
"""Where a part may end, best first: a paragraph break, a line break, a space; otherwise a hard cut."""


class Fence(NamedTuple):
    marker: str
    info: str

    def is_closed_by(self, line: Fence) -> bool:
        return line.marker[0] == self.marker[0] and len(line.marker) >= len(self.marker) and not line.info


@dataclass(frozen=True)
class Part:
    """One message: a slice of the answer (`body`) between the fence lines the splitter added."""

    reopen: str
    """The fence line that reopens a block the previous part closed, with its newline, or ""."""
    body: str
    close: str
    """A newline and the fence that closes a block still open at the end of `body`, or ""."""

    @property
    def text(self) -> str:
        return self.reopen + self.body + self.close


def split_message(text: str, limit: int) -> list[str]:
    """Parts of at most `limit` characters whose concatenation, minus added fences, is `text` (minus the
    whitespace dropped at the cuts; see the module docstring)."""
    return [part.text for part in split_parts(text, limit)]


def split_parts(text: str, limit: int) -> list[Part]:
    """`split_message`, with each part's added fences kept apart from the text it carries."""
    if limit < MIN_LIMIT:
        raise ValueError(f"limit {limit} too small to split sensibly (at least {MIN_LIMIT})")
    longest_marker = limit // 4
    parts: list[Part] = []
    fence: Fence | None = None
    start = 0
    while True:
        if start > 0:
            start = _skip_blank_lines(text, start)
        if start >= len(text):
            return parts
        part, end, fence = _next_part(text, start, fence, limit, longest_marker)
        if part.body.strip():
            parts.append(part)
        start = end


def _next_part(
    text: str, start: int, fence: Fence | None, limit: int, longest_marker: int
) -> tuple[Part, int, Fence | None]:
    """The longest good part starting at `start`, where the text after it begins, and the fence open
    there.

    A first try leaves no room for a closing fence; when one is needed and does not fit, the window
    shrinks by at least one character per try, down to room for the longest closing fence possible."""
    reopen = _reopening(fence, limit) if fence is not None else ""
    room = limit - len(reopen)
    while True:
        rest_fits = len(text) - start <= room
        end = len(text) if rest_fits else start + _best_cut(text[start : start + room])
        body = text[start:end] if rest_fits else text[start:end].rstrip()
        still_open = _fence_after(body, fence, longest_marker)
        close = ""
        if still_open is not None:
            body = body.rstrip()
            close = "\n" + still_open.marker
        if len(reopen) + len(body) + len(close) <= limit:
            return Part(reopen, body, close), end, still_open
        room = min(room - 1, limit - len(reopen) - len(close))


def _reopening(fence: Fence, limit: int) -> str:
    """The line that reopens `fence`: the marker and the language (the info string's first word; the
    rest is metadata neither chat draws), dropped when the reopening and closing lines would take more
    than half the part."""
    language = fence.info.split(maxsplit=1)[0] if fence.info.strip() else ""
    budget = limit // 2 - 2 * len(fence.marker) - 2
    return f"{fence.marker}{language if len(language) <= budget else ''}\n"


def _skip_blank_lines(text: str, start: int) -> int:
    """Where the next part begins: past the whitespace at the cut, keeping the first line's indentation
    unless the cut fell inside a line."""
    stripped = _WHITESPACE.match(text, start).end()  # type: ignore[union-attr]  # \s* always matches
    if stripped == len(text):
        return stripped
    last_newline = text.rfind("\n", start, stripped)
    if last_newline >= 0:
        return last_newline + 1
    at_line_start = start == 0 or text[start - 1] == "\n"
    return start if at_line_start else stripped


def _best_cut(window: str) -> int:
    """Prefer a paragraph break, then a line break, then a space in the last two thirds of the window;
    otherwise cut hard at its end. Never 0, so every part moves forward."""
    for separator in _CUT_SEPARATORS:
        index = window.rfind(separator)
        if index > len(window) // 3:
            return index + len(separator)
    return len(window)


def _fence_line(line: str, longest_marker: int) -> Fence | None:
    match = FENCE.match(line)
    if match is None:
        return None
    marker = match.group(1) or match.group(3)
    if len(marker) > longest_marker:
        return None
    return Fence(marker, (match.group(2) or match.group(4) or "").strip())


def _fence_after(text: str, fence: Fence | None, longest_marker: int) -> Fence | None:
    """The fence still open at the end of `text`, read line by line from `fence` (open at its start)."""
    for line in text.split("\n"):
        found = _fence_line(line, longest_marker)
        if found is None:
            continue
        if fence is None:
            fence = found
        elif fence.is_closed_by(found):
            fence = None
    return fence
