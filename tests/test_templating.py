"""Prompt rendering: the model's own chat template, in a sandbox, exactly as transformers renders it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brandbot.errors import TemplateError
from brandbot.templating import ChatTemplate, _compiled, render_text


def test_chat_template_renders_like_transformers(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    ours = ChatTemplate.from_model_dir(tiny_model).render(conversation)
    theirs = AutoTokenizer.from_pretrained(tiny_model).apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=True
    )
    assert ours == theirs
    assert ours.endswith("<|im_start|>assistant\n")


def test_chat_template_from_tokenizer_config_when_no_jinja_file(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    config = json.dumps({"chat_template": template, "eos_token": "</s>"})
    (folder / "tokenizer_config.json").write_text(config)
    assert ChatTemplate.from_model_dir(folder).render([{"role": "user", "content": "x"}]) == "[user]x"


def test_model_without_chat_template_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="no chat template"):
        ChatTemplate.from_model_dir(tmp_path)


def test_sandbox_blocks_python_internals() -> None:
    with pytest.raises(Exception, match=r"unsafe|not safely|access"):
        render_text("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})


def test_unknown_variable_in_prompt_text_is_an_error_not_an_empty_string() -> None:
    assert render_text("Hi {{ user }}", {"user": "Ada"}) == "Hi Ada"
    with pytest.raises(TemplateError, match="usr"):
        render_text("Hi {{ usr }}", {"user": "Ada"})


def test_template_may_raise_its_own_error() -> None:
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TemplateError, match="roles must alternate"):
        template.render([])


def test_prompt_text_is_compiled_once_and_an_edited_text_renders_its_new_words() -> None:
    # It was compiled for every request: a millisecond a job, most of the worker's own time per job.
    source = "You speak for {{ company }} (compiled-once test)."
    before = _compiled.cache_info()
    assert render_text(source, {"company": "Acme"}) == "You speak for Acme (compiled-once test)."
    assert render_text(source, {"company": "Globex"}) == "You speak for Globex (compiled-once test)."
    assert _compiled.cache_info().misses == before.misses + 1
    edited = source.replace("speak for", "write as")
    assert render_text(edited, {"company": "Acme"}) == "You write as Acme (compiled-once test)."
    with pytest.raises(TemplateError):
        render_text("{{ not_a_variable }}", {"company": "Acme"})
