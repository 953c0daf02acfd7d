"""Banned phrases, enforced while decoding: what an engine without its own support (the CPU one) uses.

The same behaviour as ExLlamaV2's `banned_strings`: when the text would complete a banned phrase
(case-insensitive, across token boundaries), generation rolls back to the token where the phrase began,
that token is forbidden at that position, and the model samples again. Text that may still become a
banned phrase is held back, a whole token at a time, so no delta ever carries one.

```python
guard = BannedPhraseGuard(("as an ai",))
keep = guard.roll_back_to(text, offsets, tokens)  # None, or how many tokens to keep
shown = guard.shown_end(text, offsets)            # how much of `text` may be streamed now
forbidden = guard.forbidden(len(tokens))          # token ids the sampler must not pick next
```
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


def fold(text: str) -> str:
    """Lower case, one character for one (so indices in the folded text are indices in `text`)."""
    return "".join(low if len(low := char.lower()) == 1 else char for char in text)


@dataclass
class BannedPhraseGuard:
    """One sequence's banned phrases and the tokens it has ruled out at each position.

    `offsets[i]` is the length of the text decoded from the first `i` tokens (`offsets[0] == 0`).
    """

    phrases: tuple[str, ...]
    _forbidden: dict[int, set[int]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.phrases = tuple(folded for folded in (fold(p) for p in self.phrases) if folded)

    def __bool__(self) -> bool:
        return bool(self.phrases)

    def first_match(self, text: str) -> int | None:
        """Where the earliest complete banned phrase in `text` starts, or None."""
        folded = fold(text)
        starts = [index for phrase in self.phrases if (index := folded.find(phrase)) != -1]
        return min(starts, default=None)

    def roll_back_to(self, text: str, offsets: Sequence[int], tokens: Sequence[int]) -> int | None:
        """None if `text` completes no banned phrase; else how many of `tokens` to keep.

        The token that began the phrase is forbidden at its position from now on; positions after it
        forget what they had ruled out (what precedes them is different now).
        """
        start = self.first_match(text)
        if start is None:
            return None
        keep = max(i for i in range(len(tokens)) if offsets[i] <= start)
        self._forbidden = {position: ids for position, ids in self._forbidden.items() if position <= keep}
        self._forbidden.setdefault(keep, set()).add(tokens[keep])
        return keep

    def shown_end(self, text: str, offsets: Sequence[int]) -> int:
        """How much of `text` is safe to stream: up to the last token boundary before a possible phrase."""
        folded = fold(text)
        safe = len(text)
        for phrase in self.phrases:
            for keep in range(min(len(phrase) - 1, len(folded)), 0, -1):
                if folded.endswith(phrase[:keep]):
                    safe = min(safe, len(text) - keep)
                    break
        if safe == len(text):
            return safe
        return max((offset for offset in offsets if offset <= safe), default=0)

    def forbidden(self, position: int) -> frozenset[int]:
        """Token ids the sampler must not pick for the token at `position` (0 = the first new one)."""
        return frozenset(self._forbidden.get(position, ()))
