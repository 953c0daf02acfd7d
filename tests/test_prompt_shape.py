"""One conversation shape for every chat template: alternating roles, system folded where there is none."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brandbot.contract import GenerationRequest, Platform, ReplyTarget, Role, Turn, UserRef
from brandbot.promptfiles.models import Example, Persona
from brandbot.templating import ChatTemplate
from tests.test_worker_prompts import MISTRAL_STYLE_TEMPLATE
from worker.prompt_builder import OPENING_TURN, alternate_roles, build_prompt

PERSONA = Persona(
    name="voice",
    display_name="Ava",
    system_prompt="You are {{ assistant_name }}, talking with {{ user }} in #{{ channel }}.",
    examples=[Example(user="What's up?", assistant="All systems normal.")],
)


@pytest.fixture(scope="module")
def count_tokens(tiny_model: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


@pytest.fixture(scope="module")
def strict_template(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> ChatTemplate:
    folder = Path(shutil.copytree(tiny_model, tmp_path_factory.mktemp("models") / "strict"))
    (folder / "chat_template.jinja").write_text(MISTRAL_STYLE_TEMPLATE, encoding="utf-8")
    return ChatTemplate.from_model_dir(folder)


def several_people() -> GenerationRequest:
    return GenerationRequest(
        target=ReplyTarget(platform=Platform.SLACK, channel_id="C1", thread_id="1.0"),
        user=UserRef(id="U1", display_name="Ada"),
        channel_name="ops",
        persona="voice",
        turns=[
            Turn(role=Role.ASSISTANT, content="Hi, I'm watching this thread."),
            Turn(role=Role.USER, content="the deploy failed", name="Bob"),
            Turn(role=Role.USER, content="same here", name="Cleo"),
            Turn(role=Role.ASSISTANT, content="Rerun it."),
            Turn(role=Role.USER, content="still red", name="Bob"),
            Turn(role=Role.USER, content="what now?", name="Ada"),
        ],
    )


def test_a_template_without_system_role_is_detected(tiny_model: Path, strict_template: ChatTemplate) -> None:
    assert ChatTemplate.from_model_dir(tiny_model).has_system_role
    assert not strict_template.has_system_role
    silent = ChatTemplate("{% for m in messages if m.role != 'system' %}{{ m.content }}{% endfor %}")
    assert not silent.has_system_role  # drops system text without a word: folding keeps it


def test_strict_template_renders_a_thread_of_several_people(
    strict_template: ChatTemplate,
    count_tokens,  # type: ignore[no-untyped-def]
) -> None:
    """Issue 9 defect 10: the thread used to raise "roles must alternate" (the user saw a config error)."""
    built = build_prompt(
        several_people(),
        PERSONA,
        template=strict_template,
        count_tokens=count_tokens,
        context_length=2048,
        company="Acme",
    )
    assert built.text.startswith(
        "<|begin_of_text|>[INST] You are Ava, talking with Ada in #ops.\n\nWhat's up?"
    )
    assert "Bob: the deploy failed\n\nCleo: same here [/INST]" in built.text
    assert "Bob: still red\n\nAda: what now? [/INST]" in built.text
    assert built.text.index(OPENING_TURN) < built.text.index("Hi, I'm watching this thread.")


def test_one_person_threads_are_not_labelled(tiny_model: Path, count_tokens) -> None:  # type: ignore[no-untyped-def]
    request = GenerationRequest(
        target=ReplyTarget(platform=Platform.DISCORD, channel_id="C1"),
        user=UserRef(id="U1", display_name="Ada"),
        persona="voice",
        turns=[Turn(role=Role.USER, content="hello", name="Ada")],
    )
    built = build_prompt(
        request,
        PERSONA,
        template=ChatTemplate.from_model_dir(tiny_model),
        count_tokens=count_tokens,
        context_length=2048,
        company="Acme",
    )
    assert "<|im_start|>user\nhello<|im_end|>" in built.text


MESSAGES = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.text(max_size=20)}),
    max_size=12,
)


@given(
    conversation=MESSAGES,
    system=st.one_of(st.none(), st.text(max_size=20)),
    system_role=st.booleans(),
)
def test_normalised_roles_alternate_and_keep_every_text_in_order(
    conversation: list[dict[str, str]], system: str | None, system_role: bool
) -> None:
    given_messages = ([{"role": "system", "content": system}] if system is not None else []) + conversation
    shaped = alternate_roles(given_messages, system_role=system_role)
    turns = shaped[1:] if shaped and shaped[0]["role"] == "system" else shaped
    assert turns and [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2) + ["user"] * (
        len(turns) % 2
    )
    assert (shaped[0]["role"] == "system") == (system_role and system is not None)
    joined = "\x00".join(m["content"] for m in shaped)
    position = 0
    for message in given_messages:  # every text, in the given order
        found = joined.find(message["content"], position)
        assert found >= 0
        position = found + len(message["content"])
