"""One sandboxed Jinja setup for every template brandbot renders: models' chat templates and persona text.

Set up as transformers does for chat templates, so a model's own template renders the same here.
A chat template also knows its tokenizer's special-token strings, so text from users can be kept from
ever becoming one of them (`ChatTemplate.neutralise`), whichever engine tokenises the prompt.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from brandbot.errors import TemplateError

TOKEN_BREAKER = "\u200d"
"""Put inside a special-token string typed by a user (zero-width joiner): it then reads the same but is
plain text to every tokenizer, which match special tokens as exact strings."""

COMPILED_TEXTS = 512
"""Prompt texts (system prompts, voice rules, refusals) kept compiled; an edited text is a new entry."""

SYSTEM_PROBE = "brandbot-system-probe"
"""System text rendered once to learn whether a chat template has a system role."""


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
    """A model's own chat template, from `chat_template.jinja` or `tokenizer_config.json`.

    `special_tokens` are the strings a tokenizer turns into control tokens (see `special_token_strings`).
    """

    def __init__(
        self, source: str, *, bos_token: str = "", eos_token: str = "", special_tokens: Iterable[str] = ()
    ) -> None:
        try:
            self._template = sandbox().from_string(source)
        except jinja2.TemplateSyntaxError as error:
            raise TemplateError(f"chat template line {error.lineno}: {error.message}") from None
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.special_tokens = tuple(
            sorted({t for t in (*special_tokens, bos_token, eos_token) if len(t) > 1}, key=len, reverse=True)
        )
        self._special_pattern = (
            re.compile("|".join(map(re.escape, self.special_tokens))) if self.special_tokens else None
        )

    def neutralise(self, text: str) -> str:
        """`text` with every special-token string broken by a zero-width joiner: it can only be text.

        Repeated until none is left, because occurrences may overlap (`aXaXa` holds `aXa` twice).
        """
        if self._special_pattern is None:
            return text
        while self._special_pattern.search(text):
            text = self._special_pattern.sub(lambda m: m[0][0] + TOKEN_BREAKER + m[0][1:], text)
        return text

    @cached_property
    def has_system_role(self) -> bool:
        """Whether the template renders a system message (strict ones raise; some drop it silently)."""
        probe = [{"role": "system", "content": SYSTEM_PROBE}, {"role": "user", "content": "?"}]
        try:
            return SYSTEM_PROBE in self.render(probe)
        except TemplateError:
            return False

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
            special_tokens=special_token_strings(model_dir, config, source),
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


SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
)
"""The named special tokens of tokenizer_config.json and special_tokens_map.json."""


def special_token_strings(model_dir: Path, config: dict[str, Any], template_source: str) -> set[str]:
    """Every string a tokenizer of this folder may read as a control token.

    Special added tokens (tokenizer.json, tokenizer_config.json, added_tokens.json, special_tokens_map.json),
    plus any other added token the chat template itself writes (e.g. `<tool_call>`): those carry structure.
    Plain added tokens (words, runs of spaces) stay as they are: they are ordinary text to the model.
    """
    special: set[str] = set()
    added: set[str] = set()

    def read(name: str) -> Any:
        path = model_dir / name
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        except (OSError, ValueError):
            return {}

    for token in read("tokenizer.json").get("added_tokens") or []:
        (special if token.get("special") else added).add(str(token.get("content", "")))
    for token in (config.get("added_tokens_decoder") or {}).values():
        (special if token.get("special") else added).add(str(token.get("content", "")))
    special.update(str(name) for name in read("added_tokens.json"))
    for mapping in (config, read("special_tokens_map.json")):
        special.update(_token_text(mapping.get(key)) for key in SPECIAL_TOKEN_KEYS)
        special.update(_token_text(t) for t in mapping.get("additional_special_tokens") or [])
    special.update(token for token in added if token.strip() and token in template_source)
    return {token for token in special if len(token) > 1}


def _token_text(token: object) -> str:
    if isinstance(token, dict):  # older tokenizer configs store AddedToken dicts
        return str(token.get("content", ""))
    return str(token) if token else ""


def render_text(source: str, variables: dict[str, Any]) -> str:
    """Render admin-written prompt text; an unknown variable is an error, never an empty string."""
    try:
        return _compiled(source).render(**variables)
    except jinja2.TemplateError as error:
        raise TemplateError(str(error)) from None


@functools.lru_cache(maxsize=COMPILED_TEXTS)
def _compiled(source: str) -> jinja2.Template:
    """Compiling costs a millisecond, far more than rendering: each prompt text is compiled once, not per
    request (a compiled template is read-only, so the worker's slots share it)."""
    return sandbox(strict=True).from_string(source)
