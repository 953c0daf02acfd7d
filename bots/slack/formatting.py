"""Standard Markdown (what models write) to Slack mrkdwn, for the paths that cannot take `markdown_text`.

Slack renders Markdown natively through `markdown_text` and `markdown` blocks; this converter serves the
`text` fallback every block message carries (notifications, old clients) and workspaces configured
without native Markdown (`BRANDBOT_SLACK_NATIVE_MARKDOWN=false`). mrkdwn has no headings, nested
emphasis rules or fence languages, so those are mapped to the nearest thing it has.

`&`, `<` and `>` are escaped everywhere (Slack parses them before formatting), which also means nothing
the model writes can become a link, a user mention or a `<!channel>` ping: only links this module builds
from Markdown `[text](url)` are real links.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Every pattern here runs on each line of an answer at every edit, so none may backtrack more than a
# constant per character: anchored block patterns with possessive quantifiers, and emphasis paired by a
# single left-to-right scan (`Emphasis`) instead of lazy `(.+?)` searches, which rescan the rest of the
# line from every unclosed opener (quadratic: 12k characters of `**a ` took half a second).
FENCE = re.compile(r"^\s{0,3}(`{3,}+|~{3,}+)\s*+([\w+#.-]*+)\s*+$")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*)$")
QUOTES = re.compile(r"(?:\s{0,3}>\s?)+")
BULLET = re.compile(r"^(\s*)[-*+]\s+(?:\[([ xX])\]\s+)?(.*)$")
ORDERED = re.compile(r"^(\s*)(\d{1,9})[.)]\s+(.*)$")
RULE = re.compile(r"^\s{0,3}([-*_])(?:\s*+\1){2,}+\s*+$")

BACKTICKS = re.compile(r"`+")
LINK = re.compile(
    r"!?\[([^\[\]\n]*+)\]\(\s*+<?([^\s()<>]++(?:\([^\s()<>]*+\))?+[^\s()<>]*+)>?(?:\s++\"[^\"]*+\")?\s*+\)"
)

SAFE_URL = re.compile(r"^(https?://|mailto:)", re.IGNORECASE)

# Private-use characters stand in for finished pieces while the rest of a line is converted.
_SLOT = "\ue000{}\ue001"
_SLOT_PATTERN = re.compile("\ue000(\\d+)\ue001")
_BOLD_OPEN, _BOLD_CLOSE = "\ue002", "\ue003"
_RESERVED = dict.fromkeys(range(0xE000, 0xE004))  # removed from input: they must mean only the above


@dataclass(frozen=True)
class Delimiter:
    """One way to mark emphasis: zero-width patterns for where a span may open and close."""

    opens: re.Pattern[str]
    closes: re.Pattern[str]
    width: int


@dataclass(frozen=True)
class Emphasis:
    """Spans of one kind of emphasis (`**` or `__` for bold), rendered by `render`.

    A span runs from an opener to the first closer of the same delimiter at least one character later;
    the scan then goes on after it, as a regex `open(.+?)close` would, but each closer list is walked
    once, so a line costs time in proportion to its length."""

    delimiters: tuple[Delimiter, ...]
    render: Callable[[str], str]

    def apply(self, text: str) -> str:
        closers = [[m.start() for m in delimiter.closes.finditer(text)] for delimiter in self.delimiters]
        next_closer = [0] * len(self.delimiters)
        openers = sorted(
            (m.start(), kind)
            for kind, delimiter in enumerate(self.delimiters)
            for m in delimiter.opens.finditer(text)
        )
        pieces: list[str] = []
        done = 0
        for start, kind in openers:
            if start < done:
                continue
            width = self.delimiters[kind].width
            candidates, index = closers[kind], next_closer[kind]
            while index < len(candidates) and candidates[index] < start + width + 1:
                index += 1
            next_closer[kind] = index
            if index == len(candidates):
                continue
            end = candidates[index]
            pieces += [text[done:start], self.render(text[start + width : end])]
            done = end + width
        pieces.append(text[done:])
        return "".join(pieces)


def _delimiter(opens: str, closes: str, width: int) -> Delimiter:
    return Delimiter(re.compile(opens), re.compile(closes), width)


EMPHASES = (
    Emphasis(
        (_delimiter(r"(?=\*\*\*\S)", r"(?<=\S)(?=\*\*\*)", 3),),
        lambda inner: f"{_BOLD_OPEN}_{inner}_{_BOLD_CLOSE}",
    ),
    Emphasis(
        (
            _delimiter(r"(?=\*\*\S)", r"(?<=\S)(?=\*\*)", 2),
            _delimiter(r"(?<!\w)(?=__\S)", r"(?<=\S)(?=__(?!\w))", 2),
        ),
        lambda inner: f"{_BOLD_OPEN}{inner}{_BOLD_CLOSE}",
    ),
    Emphasis(
        (
            _delimiter(r"(?<![*\w])(?=\*[^\s*])", r"(?<=[^\s*])(?=\*(?![*\w]))", 1),
            _delimiter(r"(?<!\w)(?=_\S)", r"(?<=\S)(?=_(?!\w))", 1),
        ),
        lambda inner: f"_{inner}_",
    ),
    Emphasis((_delimiter(r"(?=~~\S)", r"(?<=\S)(?=~~)", 2),), lambda inner: f"~{inner}~"),
)
"""Applied in this order, each on the result of the one before: bold-italic, bold, italic, strike."""


def escape(text: str) -> str:
    """Slack's three control characters, as Slack asks them to be written in message text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(markdown: str) -> str:
    """Convert Markdown to mrkdwn line by line; fenced code is kept verbatim (escaped, language dropped)."""
    lines: list[str] = []
    fence: str | None = None
    for line in markdown.translate(_RESERVED).split("\n"):
        match = FENCE.match(line)
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) and not match[2]:
                lines.append("```")
                fence = None
            else:
                lines.append(escape(line))
        elif match:
            fence = match.group(1)
            lines.append("```")
        else:
            lines.append(_block_line(line))
    if fence is not None:
        lines.append("```")  # a streamed answer may stop mid-block: close it so the rest is not code
    return "\n".join(lines)


def _block_line(line: str) -> str:
    """One line outside code: quotes, rules, headings and list items, then inline formatting."""
    if quotes := QUOTES.match(line):  # `>` stays a quote marker, unescaped, one per level
        return "> " * quotes.group().count(">") + _unquoted_line(line[quotes.end() :])
    return _unquoted_line(line)


def _unquoted_line(line: str) -> str:
    if RULE.match(line):
        return "──────────"
    if heading := HEADING.match(line):
        text = heading.group(1).rstrip().rstrip("#").rstrip()  # closing hashes are decoration
        title = _inline(text).replace(_BOLD_OPEN, "").replace(_BOLD_CLOSE, "")
        return f"*{title}*" if title.strip() else ""
    if bullet := BULLET.match(line):
        indent, task, rest = bullet.groups()
        box = "" if task is None else ("☑ " if task in "xX" else "☐ ")
        return f"{_indent(indent)}• {box}{_finish(_inline(rest))}"
    if ordered := ORDERED.match(line):
        indent, number, rest = ordered.groups()
        return f"{_indent(indent)}{number}. {_finish(_inline(rest))}"
    return _finish(_inline(line))


def _indent(spaces: str) -> str:
    """Nested list items: mrkdwn keeps leading spaces, so four per level reads as nesting."""
    return "    " * (len(spaces.expandtabs(4)) // 2)


def _inline(text: str, slots: list[str] | None = None) -> str:
    """Emphasis, strike, links and code spans of one line; bold is left as markers for `_finish`."""
    slots = [] if slots is None else slots

    def keep(piece: str) -> str:
        slots.append(piece)
        return _SLOT.format(len(slots) - 1)

    text = _code_spans(text, keep)
    text = LINK.sub(lambda m: keep(_link(m.group(1), m.group(2), slots)), text)
    text = escape(text)
    for emphasis in EMPHASES:
        text = emphasis.apply(text)
    while _SLOT_PATTERN.search(text):  # a link's label may itself hold a code span
        text = _SLOT_PATTERN.sub(lambda m: slots[int(m.group(1))], text)
    return text


def _code_spans(text: str, keep: Callable[[str], str]) -> str:
    """Code spans as CommonMark pairs them: a run of backticks closes at the next run of the same length;
    a run with no partner is literal. One pass over the runs, whatever the line."""
    runs = [(m.start(), m.end()) for m in BACKTICKS.finditer(text)]
    partner: list[int | None] = [None] * len(runs)
    later_run_of_length: dict[int, int] = {}
    for index in range(len(runs) - 1, -1, -1):
        length = runs[index][1] - runs[index][0]
        partner[index] = later_run_of_length.get(length)
        later_run_of_length[length] = index
    pieces: list[str] = []
    done = index = 0
    while index < len(runs):
        closing = partner[index]
        if closing is None:
            index += 1
            continue
        code = text[runs[index][1] : runs[closing][0]]
        pieces += [text[done : runs[index][0]], keep(f"`{escape(code.strip())}`")]
        done, index = runs[closing][1], closing + 1
    pieces.append(text[done:])
    return "".join(pieces)


def _finish(text: str) -> str:
    return text.replace(_BOLD_OPEN, "*").replace(_BOLD_CLOSE, "*")


def _link(label: str, url: str, slots: list[str]) -> str:
    """`<url|label>` for web and mail links only; anything else (javascript:, slack://…) stays text."""
    shown = _finish(_inline(label, slots)).replace("|", "¦") if label.strip() else ""
    if not SAFE_URL.match(url):
        return escape(f"[{label}]({url})")
    target = url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E").replace("&", "&amp;")
    return f"<{target}|{shown}>" if shown else f"<{target}>"
