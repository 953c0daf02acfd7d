"""One sandboxed Jinja setup for every template brandbot renders: models' chat templates and persona text.

Set up as transformers does for chat templates, so a model's own template renders the same here.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from brandbot.errors import TemplateError


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def sandbox(*, strict: bool = False) -> ImmutableSandboxedEnvironment:
    """A sandbox that cannot touch Python internals; `strict` makes unknown variables errors."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols"],
        undefined=jinja2.StrictUndefined if strict else jinja2.Undefined,
        autoescape=False,
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    return env


class ChatTemplate:
    """A model's own chat template, from `chat_template.jinja` or `tokenizer_config.json`."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        try:
            self._template = sandbox().from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise TemplateError(f"chat template line {error.lineno}: {error.message}") from None
        self.bos_token = bos_token
        self.eos_token = eos_token

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> ChatTemplate:
        config_path = model_dir / "tokenizer_config.json"
        config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.exists() else {}
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: use the default one
            source = next((t["template"] for t in source if t.get("name") == "default"), None)
        jinja_path = model_dir / "chat_template.jinja"
        if jinja_path.exists():
            source = jinja_path.read_text(encoding="utf-8")
        if not source:
            raise TemplateError(
                f"{model_dir} has no chat template (chat_template.jinja or tokenizer_config.json)"
            )
        return cls(
            source,
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
        )

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError:
            raise
        except jinja2.TemplateError as error:
            raise TemplateError(f"chat template failed: {error}") from None


def _token_text(token: object) -> str:
    if isinstance(token, dict):  # older tokenizer configs store AddedToken dicts
        return str(token.get("content", ""))
    return str(token) if token else ""


def render_text(source: str, variables: dict[str, Any]) -> str:
    """Render admin-written prompt text; an unknown variable is an error, never an empty string."""
    try:
        return sandbox(strict=True).from_string(source).render(**variables)
    except jinja2.TemplateError as error:
        raise TemplateError(str(error)) from None
