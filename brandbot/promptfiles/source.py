"""Reading one YAML prompt file: plain Python data for validation, plus the line of every key for errors."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString

MAX_FILE_BYTES = 1_000_000
"""A prompt file is text an admin writes; anything bigger is a mistake (or an attack on the loader)."""

MAX_NODES = 100_000
"""Values after expanding YAML aliases; stops an alias bomb from stalling a running process's reload."""

MAX_DEPTH = 32
"""Prompt files nest a few levels; deeper is a mistake (and would exhaust the parser's recursion)."""

_TOO_DEEP = f"values are nested more than {MAX_DEPTH} levels deep"

Location = Sequence[str | int]


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong in a prompt file; prints as `file:line: field: message`."""

    label: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.label}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class UnreadableFile(Exception):
    """The file cannot be parsed at all; `problem` says where and why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass(frozen=True)
class SourceFile:
    """A parsed YAML file: `data` is plain dicts/lists/scalars; `line_of(loc)` finds where a field is."""

    label: str  # how errors name the file, e.g. `prompts/personas/support.yaml`
    data: Any
    tree: Any  # ruamel's round-trip tree, which remembers lines
    digest: str  # sha256 of the bytes parsed: tells a real edit from a touch

    def line_of(self, loc: Location) -> int:
        """1-based line of the deepest key or item of `loc` present in the file (1 if none is)."""
        node, line = self.tree, 1
        for step in loc:
            if isinstance(node, CommentedMap):
                key = _matching_key(node, step)
                if key is None:
                    return line if line > 1 else node.lc.line + 1
                line = node.lc.key(key)[0] + 1
                node = node[key]
            elif isinstance(node, CommentedSeq) and isinstance(step, int) and 0 <= step < len(node):
                line = node.lc.item(step)[0] + 1
                node = node[step]
            else:
                break
        return line

    def has(self, loc: Location) -> bool:
        """Whether the file itself writes the field at `loc` (rather than leaving it to its default)."""
        return self._node_at(loc) is not _ABSENT

    def problem(self, loc: Location, message: str, *, line_offset: int = 0) -> Problem:
        """A problem with the field at `loc`, placed at the line that writes it."""
        field = ".".join(str(step) for step in loc)
        return Problem(self.label, self.line_of(loc) + line_offset, field, message)

    def value_starts_below_key(self, loc: Location) -> bool:
        """True for a block scalar (`key: |` or `- >`), whose first text line is the line below."""
        return isinstance(self._node_at(loc), LiteralScalarString | FoldedScalarString)

    def _node_at(self, loc: Location) -> Any:
        node = self.tree
        for step in loc:
            if isinstance(node, CommentedMap) and (key := _matching_key(node, step)) is not None:
                node = node[key]
            elif isinstance(node, CommentedSeq) and isinstance(step, int) and 0 <= step < len(node):
                node = node[step]
            else:
                return _ABSENT
        return node


_ABSENT = object()


def _matching_key(node: CommentedMap, step: str | int) -> Any:
    if step in node:
        return step
    # Unquoted numeric ids are integer keys in YAML but text in the validated data.
    return next((key for key in node if str(key) == str(step)), None)


def read_source(path: Path, *, label: str) -> SourceFile:
    """Parse `path`; raise `UnreadableFile` with one precise problem if it is not readable YAML."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UnreadableFile(Problem(label, 1, "", f"cannot read the file ({error.strerror})")) from None
    if len(raw) > MAX_FILE_BYTES:
        raise UnreadableFile(Problem(label, 1, "", f"file is larger than {MAX_FILE_BYTES:,} bytes"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        message = f"file is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start})"
        raise UnreadableFile(Problem(label, line, "", message)) from None
    try:
        tree = YAML(typ="rt").load(text)
    except YAMLError as error:
        raise UnreadableFile(_syntax_problem(label, error, text)) from None
    except RecursionError:
        raise UnreadableFile(Problem(label, 1, "", _TOO_DEEP)) from None
    data = _plain(tree, label, budget=[MAX_NODES], depth=0)
    return SourceFile(label=label, data=data, tree=tree, digest=hashlib.sha256(raw).hexdigest())


def _syntax_problem(label: str, error: YAMLError, text: str) -> Problem:
    if isinstance(error, MarkedYAMLError) and error.problem_mark is not None:
        what = error.problem or "invalid YAML"
        if error.context and error.context_mark is not None:
            what += f" ({error.context} started on line {error.context_mark.line + 1})"
        elif error.context:
            what += f" ({error.context})"
        return Problem(label, error.problem_mark.line + 1, "", f"YAML syntax error: {what}")
    position = getattr(error, "position", None)  # a reader error: a character YAML does not allow
    line = text[:position].count("\n") + 1 if isinstance(position, int) else 1
    return Problem(label, line, "", f"YAML syntax error: {str(error).splitlines()[0]}")


def _plain(node: Any, label: str, *, budget: list[int], depth: int) -> Any:
    """ruamel's round-trip types as plain Python, counting values so aliases cannot blow up."""
    budget[0] -= 1
    if budget[0] < 0:
        message = f"file has more than {MAX_NODES:,} values (after expanding aliases)"
        raise UnreadableFile(Problem(label, 1, "", message))
    if depth > MAX_DEPTH:
        raise UnreadableFile(Problem(label, 1, "", _TOO_DEEP))
    if isinstance(node, TaggedScalar):
        line = node.lc.line + 1 if getattr(node, "lc", None) and node.lc.line is not None else 1
        raise UnreadableFile(Problem(label, line, "", f"YAML tags such as {node.tag.value} are not allowed"))
    if isinstance(node, dict):
        return {
            _plain(key, label, budget=budget, depth=depth + 1): _plain(
                value, label, budget=budget, depth=depth + 1
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_plain(item, label, budget=budget, depth=depth + 1) for item in node]
    if isinstance(node, bool) or node is None:
        return node
    for kind in (str, int, float):  # ScalarString, ScalarInt, ScalarFloat: plain values for pydantic
        if isinstance(node, kind):
            return kind(node)
    return node
