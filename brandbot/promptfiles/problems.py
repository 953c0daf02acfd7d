"""pydantic's validation errors, reworded for an admin and placed at a file's line."""

from __future__ import annotations

import copy
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from brandbot.promptfiles.source import Location, Problem, SourceFile

M = TypeVar("M", bound=BaseModel)

SALVAGE_ROUNDS = 3
"""Dropping a field can reveal an error beneath it (rarely more than once)."""


def validation_problems(source: SourceFile, error: ValidationError, model: type[BaseModel]) -> list[Problem]:
    """One `file:line: field: message` problem per pydantic error."""
    return [source.problem(detail["loc"], _message(detail, model)) for detail in error.errors()]


def _message(detail: ErrorDetails, model: type[BaseModel]) -> str:
    kind, ctx = detail["type"], detail.get("ctx") or {}
    bounds = {
        "less_than_equal": ("≤", "le"),
        "less_than": ("<", "lt"),
        "greater_than_equal": ("≥", "ge"),
        "greater_than": (">", "gt"),
    }
    if kind in bounds:
        symbol, key = bounds[kind]
        return f"must be {symbol} {_number(ctx.get(key))}"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, detail["loc"][:-1])
        hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
        return f"unknown key{hint}"
    if kind == "missing":
        return "required, but missing"
    if kind == "string_pattern_mismatch" and "name" in str(detail["loc"][-1:]):
        return "must be lowercase letters, digits, - or _ (a persona's file name without .yaml)"
    if kind == "string_pattern_mismatch":
        return f"{_shown(detail['input'])} is not allowed here (must match {ctx.get('pattern')})"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"is too long (at most {ctx.get('max_length')} characters)"
    if kind == "value_error":
        return str(ctx.get("error", detail["msg"]))
    if kind == "enum":
        return f"{_shown(detail['input'])} is not one of: {ctx.get('expected')}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    messages = {
        "string_type": "must be text",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "list_type": "must be a list (lines starting with `- `)",
        "dict_type": "must be a mapping (`key: value` lines)",
        "model_type": "must be a mapping (`key: value` lines)",
        "model_attributes_type": "must be a mapping (`key: value` lines)",
    }
    return messages.get(kind, detail["msg"])


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def _allowed_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys a model accepts at `loc` (walking nested models through lists and dicts)."""
    current: Any = model
    for step in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(step))
        if field is None:
            continue  # a list index or a dict key: the model stays the item's model
        current = _inner_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    """The model inside `X`, `list[X]`, `dict[str, X]`, `X | None` or `Annotated[X, ...]` (else None)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _inner_model(argument)
        if found is not None:
            return found
    return None


def salvage(model: type[M], data: dict[str, Any], error: ValidationError) -> tuple[M | None, list[Location]]:
    """What of `data` is valid, for the cross-file checks of a file with errors (so all are reported at once).

    Each failing field is dropped (a list as a whole, so indices keep meaning its file's lines; a missing
    key's parent) and the rest validated again. Returns the salvaged model (None if nothing valid remains)
    and the dropped locations.
    """
    pruned = copy.deepcopy(data)
    dropped: list[Location] = []
    for _ in range(SALVAGE_ROUNDS):
        for detail in error.errors():
            loc = _before_first_index(detail["loc"])
            while loc and not _drop(pruned, loc):
                loc = loc[:-1]
            if loc:
                dropped.append(loc)
        try:
            return model.model_validate(pruned), dropped
        except ValidationError as again:
            error = again
    return None, dropped


def _before_first_index(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    keys: list[str] = []
    for step in loc:
        if isinstance(step, int):
            break
        keys.append(step)
    return tuple(keys)


def _drop(data: dict[Any, Any], loc: tuple[str, ...]) -> bool:
    node: Any = data
    for step in loc[:-1]:
        key = _key(node, step)
        if key is None:
            return False
        node = node[key]
    key = _key(node, loc[-1])
    if key is None:
        return False
    del node[key]
    return True


def _key(node: Any, step: str) -> Any:
    if not isinstance(node, dict):
        return None
    if step in node:
        return step
    return next((key for key in node if str(key) == step), None)  # unquoted numeric ids
