"""Checking admin-written prompt text at load time, so a bad template never reaches a request.

Prompt text is a small template language on purpose: variables, a few text filters and if/else. No
loops, calls or arithmetic: those add nothing to a system prompt, and a runaway loop would stall a
worker's request (Jinja cannot time out).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import jinja2
from jinja2 import nodes

from brandbot.errors import TemplateError
from brandbot.templating import render_text, sandbox

TEMPLATE_VARIABLES: dict[str, str] = {
    "user": "display name of the person asking",
    "channel": 'channel name ("a direct message" in DMs)',
    "platform": "Slack, Discord or Terminal",
    "company": "BRANDBOT_COMPANY_NAME",
    "today": "today's date, e.g. 2025-06-30",
    "assistant_name": "the persona's display_name",
}
"""Every variable prompt text may use; the worker's `prompt_variables()` provides exactly these."""

SAMPLE_VALUES: dict[str, str] = {
    "user": "Dana",
    "channel": "general",
    "platform": "Slack",
    "company": "Acme",
    "today": "2025-06-30",
    "assistant_name": "Brandbot",
}

ALLOWED_FILTERS = frozenset({"upper", "lower", "title", "capitalize", "trim", "default", "d"})

_ALLOWED_NODES: tuple[type[nodes.Node], ...] = (
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Const,
    nodes.If,
    nodes.Filter,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.CondExpr,
    nodes.Concat,
    nodes.Keyword,
)

_NODE_WORDS: dict[type[nodes.Node], str] = {
    nodes.For: "loops ({% for %})",
    nodes.Macro: "macros",
    nodes.Call: "function calls",
    nodes.Assign: "{% set %}",
    nodes.AssignBlock: "{% set %}",
    nodes.Getattr: "attribute access (x.y)",
    nodes.Getitem: "item access (x[y])",
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% import %}",
    nodes.Extends: "{% extends %}",
    nodes.Test: "tests (x is …)",
    nodes.BinExpr: "arithmetic",
    nodes.UnaryExpr: "arithmetic",
    nodes.Literal: "list, tuple and dict literals",
}


@dataclass(frozen=True)
class TemplateProblem:
    line: int  # 1-based, within the template text
    message: str


def check_template(source: str) -> list[TemplateProblem]:
    """Problems in one piece of prompt text; empty if it renders with every allowed variable."""
    try:
        tree = sandbox(strict=True).parse(source)
    except jinja2.TemplateSyntaxError as error:
        return [TemplateProblem(error.lineno or 1, f"template syntax error: {error.message}")]
    problems = list(_walk(tree))
    if problems:
        return problems
    try:
        render_text(source, SAMPLE_VALUES)
    except TemplateError as error:
        return [TemplateProblem(1, f"template error: {error}")]
    return []


def _walk(parent: nodes.Node) -> Iterator[TemplateProblem]:
    """Problems of each node; a node that is not allowed at all is reported alone, not its insides too."""
    for node in parent.iter_child_nodes():
        problem = _node_problem(node)
        if problem is not None:
            yield problem
        if isinstance(node, _ALLOWED_NODES):
            yield from _walk(node)


def _node_problem(node: nodes.Node) -> TemplateProblem | None:
    line = node.lineno or 1
    if not isinstance(node, _ALLOWED_NODES):
        words = next((w for kind, w in _NODE_WORDS.items() if isinstance(node, kind)), type(node).__name__)
        return TemplateProblem(
            line, f"{words} not allowed in prompt text (variables, filters and if/else only)"
        )
    if isinstance(node, nodes.Name) and node.ctx == "load" and node.name not in TEMPLATE_VARIABLES:
        known = ", ".join(sorted(TEMPLATE_VARIABLES))
        return TemplateProblem(line, f"unknown template variable {node.name!r} (known: {known})")
    if isinstance(node, nodes.Filter) and node.name not in ALLOWED_FILTERS:
        allowed = ", ".join(sorted(ALLOWED_FILTERS - {"d"}))
        return TemplateProblem(line, f"filter {node.name!r} not allowed in prompt text (allowed: {allowed})")
    return None
