"""Fitting a conversation into the model's window with the real tokenizer, oldest turns first."""

from __future__ import annotations

from pathlib import Path

import pytest

from brandbot.contract import GenerationRequest, Platform, ReplyTarget, Role, Turn, UserRef
from brandbot.promptfiles.models import Persona
from brandbot.templating import ChatTemplate
from worker.prompt_builder import MIN_ANSWER_TOKENS, build_prompt


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
    assert built.max_new_tokens >= MIN_ANSWER_TOKENS


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
    assert built.prompt_tokens <= 512 - MIN_ANSWER_TOKENS
    assert built.text.endswith("<|im_start|>assistant\n")
