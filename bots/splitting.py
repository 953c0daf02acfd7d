"""Split long answers for chat limits on paragraph or line boundaries, never leaving a code fence broken.

A split inside a fenced block closes the fence at the end of one part and reopens it (same language) at
the start of the next, so each message renders on its own.
"""

from __future__ import annotations

import re

FENCE = re.compile(r"^\s*(```+|~~~+)(.*)$")


def split_message(text: str, limit: int) -> list[str]:
    """Parts of at most `limit` characters whose concatenation, minus added fences, is `text`."""
    if limit < 40:
        raise ValueError("limit too small to split sensibly")
    parts: list[str] = []
    rest = text
    reopen = ""
    while rest:
        rest = reopen + rest
        if len(rest) <= limit:
            parts.append(rest)
            break
        room = limit - 4  # space for a closing fence
        cut = _best_cut(rest, room)
        head, rest = rest[:cut], rest[cut:]
        fence = _open_fence(head)
        if fence is not None:
            head = head.rstrip("\n") + "\n" + fence[0]
            reopen = fence[0] + fence[1] + "\n"
        else:
            reopen = ""
        parts.append(head.rstrip() if fence is None else head)
        rest = rest.lstrip("\n")
    return [part for part in parts if part.strip()]


def _best_cut(text: str, room: int) -> int:
    """Prefer a paragraph break, then a line break, then a space; otherwise cut hard."""
    window = text[:room]
    for separator in ("\n\n", "\n", " "):
        index = window.rfind(separator)
        if index > room // 3:
            return index + len(separator)
    return room


def _open_fence(text: str) -> tuple[str, str] | None:
    """The fence (marker, info string) still open at the end of `text`, if any."""
    open_fence: tuple[str, str] | None = None
    for line in text.splitlines():
        match = FENCE.match(line)
        if not match:
            continue
        marker, info = match.group(1), match.group(2).strip()
        if open_fence is None:
            open_fence = (marker, info)
        elif marker.startswith(open_fence[0][0]) and len(marker) >= len(open_fence[0]) and not info:
            open_fence = None
    return open_fence
