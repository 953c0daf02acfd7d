"""Stop an answer that quotes a confidential persona's instructions, before the quote reaches the user.

The guard sits between the engine's stream and the reply stream. It compares the answer, as it streams,
with the secret text (case and runs of whitespace ignored) and holds back the answer's tail while that
tail could still be the start of a quote. A quote of `LEAK_RUN_CHARS` is a leak: generation stops, the
held text is dropped and the answer ends with a refusal. A shorter overlap (a phrase, a link) is shown
once the answer moves on. Matching uses a suffix automaton of the secret: each streamed character costs
amortised constant time, whatever the lengths.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from brandbot import messages
from brandbot.contract import FinishReason
from worker.engines.base import GenerationResult

LEAK_RUN_CHARS = 60
"""This many consecutive characters of the secret (after normalising) in an answer count as a leak."""


@dataclass
class _State:
    length: int
    link: int
    next: dict[str, int] = field(default_factory=dict)


class _SubstringMatcher:
    """Tracks the longest suffix of a growing text that occurs in `secret` (a suffix automaton)."""

    def __init__(self, secret: str) -> None:
        self._states = [_State(length=0, link=-1)]
        last = 0
        for char in secret:
            last = self._extend(last, char)
        self._current = 0
        self.match = 0

    def _extend(self, last: int, char: str) -> int:
        states = self._states
        new = len(states)
        states.append(_State(length=states[last].length + 1, link=0))
        state = last
        while state != -1 and char not in states[state].next:
            states[state].next[char] = new
            state = states[state].link
        if state != -1:
            target = states[state].next[char]
            if states[state].length + 1 == states[target].length:
                states[new].link = target
            else:
                clone = len(states)
                states.append(
                    _State(
                        length=states[state].length + 1,
                        link=states[target].link,
                        next=dict(states[target].next),
                    )
                )
                while state != -1 and states[state].next.get(char) == target:
                    states[state].next[char] = clone
                    state = states[state].link
                states[target].link = states[new].link = clone
        return new

    def feed(self, char: str) -> int:
        """Add one character; returns how many of the text's last characters occur together in the secret."""
        states = self._states
        while self._current and char not in states[self._current].next:
            self._current = states[self._current].link
            self.match = states[self._current].length
        if char in states[self._current].next:
            self._current = states[self._current].next[char]
            self.match += 1
        else:
            self._current, self.match = 0, 0
        return self.match


def normalise(text: str) -> str:
    """Lower case, every run of whitespace one space: how quotes are compared."""
    return " ".join(text.lower().split())


class LeakGuard:
    """Screens one answer's deltas: `feed` returns what is safe to show now, `finish` what ends the answer.

    After a leak (`leaked`), `feed` returns nothing more: the caller stops generation and sends `finish()`.
    """

    def __init__(self, secret: str, *, run_chars: int = LEAK_RUN_CHARS) -> None:
        normalised = normalise(secret)
        self._matcher = _SubstringMatcher(normalised)
        self._threshold = max(1, min(run_chars, len(normalised)))
        self._raw = ""  # the answer so far, as the engine produced it
        self._starts: list[int] = []  # where each normalised character begins in `_raw`
        self._last_was_space = True  # leading whitespace is not compared, as in `normalise`
        self._released = 0
        self.shown = ""
        self.leaked = False

    def feed(self, delta: str) -> str:
        if self.leaked:
            return ""
        for char in delta:
            position = len(self._raw)
            self._raw += char
            if char.isspace():
                if self._last_was_space:
                    continue
                compared = " "
            else:
                compared = char.lower()
            self._last_was_space = char.isspace()
            for piece in compared:  # lower() of one character may be two (e.g. "İ")
                self._starts.append(position)
                if self._matcher.feed(piece) >= self._threshold:
                    self.leaked = True
                    return self._release(self._starts[-self._matcher.match])  # up to the quote
        match = self._matcher.match
        return self._release(self._starts[-match] if match else len(self._raw))

    def finish(self) -> str:
        """The rest of the answer: the held-back tail, or (after a leak) the refusal."""
        if self.leaked:
            ending = ("\n\n" if self.shown.strip() else "") + messages.CONFIDENTIAL_REFUSAL
            self.shown += ending
            return ending
        return self._release(len(self._raw))

    def screened(self, result: GenerationResult) -> GenerationResult:
        """The engine's final record with the text the user saw; a stopped leak is a normal end."""
        reason = FinishReason.STOP if self.leaked else result.finish_reason
        return dataclasses.replace(result, text=self.shown, finish_reason=reason)

    def _release(self, end: int) -> str:
        if end <= self._released:
            return ""
        text = self._raw[self._released : end]
        self._released = end
        self.shown += text
        return text
