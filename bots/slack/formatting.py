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

FENCE = re.compile(r"^\s{0,3}(```+|~~~+)\s*([\w+#.-]*)\s*$")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
QUOTE = re.compile(r"^\s{0,3}>\s?(.*)$")
BULLET = re.compile(r"^(\s*)[-*+]\s+(?:\[([ xX])\]\s+)?(.*)$")
ORDERED = re.compile(r"^(\s*)(\d{1,9})[.)]\s+(.*)$")
RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")

CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(
    r"!?\[([^\]\n]*)\]\(\s*<?([^\s()<>]+(?:\([^\s()<>]*\))?[^\s()<>]*)>?(?:\s+\"[^\"]*\")?\s*\)"
)
BOLD_ITALIC = re.compile(r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*")
BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)")
ITALIC = re.compile(r"(?<![*\w])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![*\w])|(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)")
STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")

SAFE_URL = re.compile(r"^(https?://|mailto:)", re.IGNORECASE)

# Private-use characters stand in for finished pieces while the rest of a line is converted.
_SLOT = "\ue000{}\ue001"
_SLOT_PATTERN = re.compile("\ue000(\\d+)\ue001")
_BOLD_OPEN, _BOLD_CLOSE = "\ue002", "\ue003"
_RESERVED = dict.fromkeys(range(0xE000, 0xE004))  # removed from input: they must mean only the above


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
    """One line outside code: headings, quotes, list items and rules, then inline formatting."""
    if RULE.match(line):
        return "──────────"
    if heading := HEADING.match(line):
        title = _inline(heading.group(1)).replace(_BOLD_OPEN, "").replace(_BOLD_CLOSE, "")
        return f"*{title}*" if title.strip() else ""
    if quote := QUOTE.match(line):
        return "> " + _block_line(quote.group(1))  # `>` stays a quote marker, unescaped
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

    text = CODE_SPAN.sub(lambda m: keep(f"`{escape(m.group(2).strip())}`"), text)
    text = LINK.sub(lambda m: keep(_link(m.group(1), m.group(2), slots)), text)
    text = escape(text)
    text = BOLD_ITALIC.sub(lambda m: f"{_BOLD_OPEN}_{m.group(1)}_{_BOLD_CLOSE}", text)
    text = BOLD.sub(lambda m: f"{_BOLD_OPEN}{m.group(1) or m.group(2)}{_BOLD_CLOSE}", text)
    text = ITALIC.sub(lambda m: f"_{m.group(1) or m.group(2)}_", text)
    text = STRIKE.sub(lambda m: f"~{m.group(1)}~", text)
    while _SLOT_PATTERN.search(text):  # a link's label may itself hold a code span
        text = _SLOT_PATTERN.sub(lambda m: slots[int(m.group(1))], text)
    return text


def _finish(text: str) -> str:
    return text.replace(_BOLD_OPEN, "*").replace(_BOLD_CLOSE, "*")


def _link(label: str, url: str, slots: list[str]) -> str:
    """`<url|label>` for web and mail links only; anything else (javascript:, slack://…) stays text."""
    shown = _finish(_inline(label, slots)).replace("|", "¦") if label.strip() else ""
    if not SAFE_URL.match(url):
        return escape(f"[{label}]({url})")
    target = url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E").replace("&", "&amp;")
    return f"<{target}|{shown}>" if shown else f"<{target}>"
