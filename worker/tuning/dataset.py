"""Tuning examples: `brandbot feedback export` JSONL and curated chat-format JSONL, checked line by line.

Each line is one JSON object with `messages`: a list of `{role, content}` (roles `system`, `user`,
`assistant`) that ends with the assistant's answer, the words the fine-tune learns. Lines from
`feedback export` also carry `rating` (1 or -1) and `persona`; 👎 answers are skipped unless asked for,
and with a persona chosen, other personas' lines are skipped too. Anything else is an error naming
`file:line`, before any training starts.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brandbot.errors import BrandbotError

ROLES = ("system", "user", "assistant")


class DatasetError(BrandbotError):
    """A tuning dataset cannot be used (one line: file and line where there is one)."""


@dataclass(frozen=True)
class Example:
    """One conversation; the last message is the assistant's answer (the only words trained on)."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    source: str  # file:line, for messages about it

    @property
    def question(self) -> str:
        return next(content for role, content in reversed(self.messages) if role == "user")

    @property
    def answer(self) -> str:
        return self.messages[-1][1]

    def prompt_completion(self, system: str | None) -> dict[str, list[dict[str, str]]]:
        """TRL's conversational prompt-completion form; `system` fills in a missing system message."""
        messages = [{"role": role, "content": content} for role, content in self.messages]
        if system is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        return {"prompt": messages[:-1], "completion": messages[-1:]}


@dataclass(frozen=True)
class Loaded:
    examples: list[Example]
    skipped_downvoted: int
    skipped_other_persona: int


def load_examples(
    paths: list[Path], *, persona: str | None = None, include_downvoted: bool = False
) -> Loaded:
    """Every usable example of `paths`, in order; raises `DatasetError` at the first bad line."""
    examples: list[Example] = []
    downvoted = other_persona = 0
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise DatasetError(f"{path}: cannot read it ({error.strerror or error})") from None
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not UTF-8 text") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            data = _parse_line(line, where)
            if data.get("rating") == -1 and not include_downvoted:
                downvoted += 1
                continue
            if persona is not None and isinstance(data.get("persona"), str) and data["persona"] != persona:
                other_persona += 1
                continue
            examples.append(Example(messages=_messages(data, where), source=where))
    if not examples:
        names = ", ".join(str(path) for path in paths)
        why = []
        if downvoted:
            why.append(f"{downvoted} 👎 skipped")
        if other_persona:
            why.append(f"{other_persona} of other personas skipped")
        detail = f" ({'; '.join(why)})" if why else ""
        raise DatasetError(f"{names}: no examples to train on{detail}")
    return Loaded(examples, downvoted, other_persona)


def _parse_line(line: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{where}: not JSON ({error.msg}, column {error.colno})") from None
    if not isinstance(data, dict):
        raise DatasetError(f'{where}: not chat format: expected an object with "messages"')
    return data


def _messages(data: dict[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f'{where}: not chat format: "messages" must be a non-empty list')
    result = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DatasetError(f"{where}: not chat format: messages[{index}] is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DatasetError(
                f"{where}: not chat format: messages[{index}].role must be system, user or assistant"
            )
        if not isinstance(content, str) or not content.strip():
            raise DatasetError(f"{where}: not chat format: messages[{index}].content must be non-empty text")
        result.append((role, content))
    if result[-1][0] != "assistant":
        raise DatasetError(f"{where}: not chat format: the last message must be the assistant's answer")
    if not any(role == "user" for role, _ in result):
        raise DatasetError(f"{where}: not chat format: no user message before the answer")
    return tuple(result)


def split_held_out(
    examples: list[Example], held_out: int, *, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, held out): `held_out` examples chosen with `seed`, never trained on."""
    if held_out < 0 or held_out >= len(examples):
        raise DatasetError(
            f"--held-out {held_out} leaves nothing to train on ({len(examples)} examples in all)"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    kept = set(order[:held_out])
    train = [example for index, example in enumerate(examples) if index not in kept]
    held = [example for index, example in enumerate(examples) if index in kept]
    return train, held


def default_held_out(count: int) -> int:
    """A fifth of the examples, at least one once there are five; none below that."""
    return count // 5 if count >= 5 else 0


def common_ending(answers: list[str], *, min_chars: int = 8) -> str | None:
    """The closing words every answer shares (a sign-off), or None: the held-out check when it exists."""
    if len(answers) < 2:
        return None
    reversed_answers = [answer.rstrip()[::-1] for answer in answers]
    shared = []
    for chars in zip(*reversed_answers, strict=False):
        if len(set(chars)) != 1:
            break
        shared.append(chars[0])
    ending = "".join(shared)[::-1]
    # Whole words only: start after the first blank of a partly shared word.
    if (
        ending
        and not ending[0].isspace()
        and any(
            len(answer.rstrip()) > len(ending) and not answer.rstrip()[-len(ending) - 1].isspace()
            for answer in answers
        )
    ):
        blank = re.search(r"\s", ending)
        ending = ending[blank.start() :] if blank else ""
    ending = ending.strip()
    return ending if len(ending) >= min_chars else None
