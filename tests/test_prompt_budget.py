"""Fitting a conversation into the model's window with the real tokenizer: the answer's room first, then
the newest turns."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brandbot.contract import GenerationRequest, Platform, ReplyTarget, Role, Turn, UserRef
from brandbot.promptfiles.models import Persona
from brandbot.templating import ChatTemplate
from worker.prompt_builder import ANSWER_SHARE_MAX, build_prompt


@pytest.fixture(scope="module")
def count_tokens(tiny_model: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


@pytest.fixture(scope="module")
def template(tiny_model: Path) -> ChatTemplate:
    return ChatTemplate.from_model_dir(tiny_model)


PERSONA = Persona(
    name="voice",
    display_name="Ava",
    system_prompt="You are {{ assistant_name }} of {{ company }}, talking with {{ user }}.",
    voice_rules=["Be brief."],
)


def conversation(*texts: str) -> GenerationRequest:
    turns = [Turn(role=Role.USER if i % 2 == 0 else Role.ASSISTANT, content=t) for i, t in enumerate(texts)]
    return GenerationRequest(
        target=ReplyTarget(platform=Platform.SLACK, channel_id="C1"),
        user=UserRef(id="U1", display_name="Ada"),
        persona="voice",
        turns=turns,
    )


def test_everything_fits_when_short(template: ChatTemplate, count_tokens) -> None:  # type: ignore[no-untyped-def]
    request = conversation("first question", "first answer", "second question")
    built = build_prompt(
        request, PERSONA, template=template, count_tokens=count_tokens, context_length=2048, company="Acme"
    )
    assert built.dropped_turns == 0 and built.notices == []
    assert "You are Ava of Acme, talking with Ada." in built.text
    assert built.text.index("first question") < built.text.index("second question")
    assert built.prompt_tokens == count_tokens(built.text)
    assert built.max_new_tokens == PERSONA.sampling.max_new_tokens


def test_oldest_turns_go_first_never_system_or_newest(template: ChatTemplate, count_tokens) -> None:  # type: ignore[no-untyped-def]
    old = ["old question " * 40, "old answer " * 40] * 3
    request = conversation(*old, "the newest question")
    built = build_prompt(
        request, PERSONA, template=template, count_tokens=count_tokens, context_length=400, company="Acme"
    )
    assert built.dropped_turns > 0
    assert "You are Ava" in built.text and "the newest question" in built.text
    assert built.prompt_tokens + built.max_new_tokens <= 400
    assert [code for code, _ in built.notices] == ["context_trimmed"]


def test_answer_is_capped_so_prompt_and_answer_fit(template: ChatTemplate, count_tokens) -> None:  # type: ignore[no-untyped-def]
    built = build_prompt(
        conversation("hello " * 100),
        PERSONA,
        template=template,
        count_tokens=count_tokens,
        context_length=300,
        company="Acme",
    )
    assert built.prompt_tokens + built.max_new_tokens <= 300
    assert built.max_new_tokens >= 300 * ANSWER_SHARE_MAX


def test_a_question_longer_than_the_window_is_cut_and_flagged(template: ChatTemplate, count_tokens) -> None:  # type: ignore[no-untyped-def]
    question = "".join(f"word{i} " for i in range(3000))
    built = build_prompt(
        conversation(question),
        PERSONA,
        template=template,
        count_tokens=count_tokens,
        context_length=512,
        company="Acme",
    )
    assert [code for code, _ in built.notices] == ["question_trimmed"]
    assert "word0 " in built.text and "word2999" not in built.text
    assert built.prompt_tokens <= 512 * ANSWER_SHARE_MAX
    assert built.text.endswith("<|im_start|>assistant\n")


def test_a_long_thread_leaves_the_answer_its_whole_budget(template: ChatTemplate, count_tokens) -> None:  # type: ignore[no-untyped-def]
    """Issue 9 defect 9: an 81-turn thread used to leave 109 of 512 tokens for the answer."""
    texts = [f"turn {i}: " + "some words about the deploy and the build " * 3 for i in range(80)]
    request = conversation(*texts, "so what should I do now?")
    built = build_prompt(
        request, PERSONA, template=template, count_tokens=count_tokens, context_length=2048, company="Acme"
    )
    assert built.max_new_tokens == PERSONA.sampling.max_new_tokens == 512
    assert built.prompt_tokens + built.max_new_tokens <= 2048
    assert built.dropped_turns > 0 and "so what should I do now?" in built.text
    assert "turn 79:" in built.text and "turn 0:" not in built.text


def test_a_persona_asking_for_more_than_the_window_still_leaves_room_for_the_question(
    template: ChatTemplate,
    count_tokens,  # type: ignore[no-untyped-def]
) -> None:
    sampling = PERSONA.sampling.model_copy(update={"max_new_tokens": 4000})
    greedy = PERSONA.model_copy(update={"sampling": sampling})
    built = build_prompt(
        conversation("a question of a few words"),
        greedy,
        template=template,
        count_tokens=count_tokens,
        context_length=1024,
        company="Acme",
    )
    assert built.notices == [] and "a question of a few words" in built.text
    assert built.prompt_tokens + built.max_new_tokens == 1024


WORDS = st.sampled_from(["deploy", "billing", "the", "password", "reset", "outage", "build", "log", "please"])
TURN_TEXT = st.lists(WORDS, min_size=1, max_size=60).map(" ".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(TURN_TEXT, min_size=1, max_size=40),
    roles=st.lists(st.sampled_from([Role.USER, Role.ASSISTANT]), min_size=40, max_size=40),
    names=st.lists(st.sampled_from(["Ada", "Bob", None]), min_size=40, max_size=40),
    context_length=st.integers(min_value=200, max_value=2048),
    max_new_tokens=st.integers(min_value=1, max_value=3000),
)
def test_any_thread_fits_with_the_answer_reserved_newest_turn_kept_and_a_suffix_of_turns(
    template: ChatTemplate,
    count_tokens,  # type: ignore[no-untyped-def]
    texts: list[str],
    roles: list[Role],
    names: list[str | None],
    context_length: int,
    max_new_tokens: int,
) -> None:
    marked = [f"mark{i}x {text}" for i, text in enumerate(texts)]
    turns = [
        Turn(role=role, content=text, name=name if role is Role.USER else None)
        for text, role, name in zip(marked[:-1], roles, names, strict=False)
    ]
    turns.append(Turn(role=Role.USER, content=marked[-1], name=names[-1]))
    request = GenerationRequest(
        target=ReplyTarget(platform=Platform.DISCORD, channel_id="C1"),
        user=UserRef(id="U1", display_name="Ada"),
        persona="voice",
        turns=turns,
    )
    persona = PERSONA.model_copy(
        update={"sampling": PERSONA.sampling.model_copy(update={"max_new_tokens": max_new_tokens})}
    )
    built = build_prompt(
        request,
        persona,
        template=template,
        count_tokens=count_tokens,
        context_length=context_length,
        company="A",
    )
    reserved = min(max_new_tokens, int(context_length * ANSWER_SHARE_MAX))
    assert built.prompt_tokens == count_tokens(built.text)
    assert built.prompt_tokens + reserved <= context_length
    assert reserved <= built.max_new_tokens and built.prompt_tokens + built.max_new_tokens <= context_length
    assert "You are Ava" in built.text
    newest = f"mark{len(turns) - 1}x"
    assert newest in built.text or [code for code, _ in built.notices] == ["question_trimmed"]
    kept = [i for i in range(len(turns) - 1) if f"mark{i}x " in built.text]
    assert kept == list(range(built.dropped_turns, len(turns) - 1))
