"""The decode-time guard of the CPU engine: hold back what may become a banned phrase, roll back what does."""

from __future__ import annotations

from typing import ClassVar

from worker.engines.banned import BannedPhraseGuard


class Decoding:
    """Tokens as text pieces (token id = index in `vocabulary`), decoded the way the engine does it."""

    vocabulary: ClassVar[list[str]] = ["I", " am", " so", "rry", " glad", " AM", " Sorry", "!"]

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.offsets = [0]
        self.text = ""

    def add(self, piece: str) -> None:
        self.tokens.append(self.vocabulary.index(piece))
        self.text += piece
        self.offsets.append(len(self.text))

    def keep(self, count: int) -> None:
        del self.tokens[count:]
        del self.offsets[count + 1 :]
        self.text = self.text[: self.offsets[-1]]


def test_text_that_may_begin_a_banned_phrase_is_held_back_by_whole_tokens() -> None:
    guard, seq = BannedPhraseGuard(("AM SORRY",)), Decoding()
    seq.add("I")
    assert guard.shown_end(seq.text, seq.offsets) == 1  # "I" cannot begin "am sorry"
    seq.add(" am")
    seq.add(" so")
    # " am so" may still become the phrase; " am" began it, so all of " am" waits too.
    assert guard.roll_back_to(seq.text, seq.offsets, seq.tokens) is None
    assert seq.text[: guard.shown_end(seq.text, seq.offsets)] == "I"


def test_a_completed_phrase_rolls_back_to_the_token_that_began_it_and_forbids_it_there() -> None:
    guard, seq = BannedPhraseGuard(("AM SORRY",)), Decoding()
    for piece in ["I", " am", " so", "rry"]:
        seq.add(piece)
    keep = guard.roll_back_to(seq.text, seq.offsets, seq.tokens)
    assert keep == 1  # back to "I"; the next token is drawn at position 1 again
    assert guard.forbidden(1) == {Decoding.vocabulary.index(" am")}
    assert guard.forbidden(2) == frozenset()
    seq.keep(keep)
    # Case-insensitive: the same phrase in other capitals is caught too, and both tokens add up.
    for piece in [" AM", " Sorry"]:
        seq.add(piece)
    assert guard.roll_back_to(seq.text, seq.offsets, seq.tokens) == 1
    assert guard.forbidden(1) == {Decoding.vocabulary.index(" am"), Decoding.vocabulary.index(" AM")}
    seq.keep(1)
    seq.add(" glad")
    seq.add("!")
    assert guard.roll_back_to(seq.text, seq.offsets, seq.tokens) is None
    assert guard.shown_end(seq.text, seq.offsets) == len("I glad!")


def test_rolling_back_to_an_earlier_position_forgets_what_later_positions_ruled_out() -> None:
    guard, seq = BannedPhraseGuard(("sorry", "i am")), Decoding()
    for piece in ["I", " am", " so", "rry"]:
        seq.add(piece)
    assert guard.roll_back_to(seq.text, seq.offsets, seq.tokens) == 0  # "i am" starts first
    assert guard.forbidden(0) == {Decoding.vocabulary.index("I")}
    seq.keep(0)
    for piece in [" glad", " so", "rry"]:
        seq.add(piece)
    assert guard.roll_back_to(seq.text, seq.offsets, seq.tokens) == 1
    seq.keep(1)
    seq.add(" Sorry")
    assert guard.roll_back_to(seq.text, seq.offsets, seq.tokens) == 1
    assert guard.forbidden(1) == {Decoding.vocabulary.index(" so"), Decoding.vocabulary.index(" Sorry")}
    assert guard.roll_back_to("I am", [0, 1, 4], [0, 1]) == 0
    assert guard.forbidden(1) == frozenset()  # what follows position 0 is new text now


def test_no_phrases_means_no_guard() -> None:
    assert not BannedPhraseGuard(())
    assert not BannedPhraseGuard(("",))
