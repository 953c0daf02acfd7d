"""Loading the prompt folder into one immutable snapshot that a request uses from start to finish."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from brandbot.errors import PromptFileError
from brandbot.promptfiles.models import Persona, Routing


@dataclass(frozen=True)
class PromptLibrary:
    personas: dict[str, Persona]
    routing: Routing

    def persona(self, name: str) -> Persona | None:
        return self.personas.get(name)

    def default_persona(self) -> Persona:
        return self.personas[self.routing.default_persona]


def _read_yaml(path: Path) -> Any:
    try:
        return YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise PromptFileError([f"{path}:1: file is not UTF-8 text ({error.reason})"]) from None
    except YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise PromptFileError(
            [f"{path}:{line}: YAML syntax error: {getattr(error, 'problem', error)}"]
        ) from None


def load_prompt_library(folder: Path) -> PromptLibrary:
    problems: list[str] = []
    personas: dict[str, Persona] = {}
    for path in sorted((folder / "personas").glob("*.yaml")):
        try:
            data = _read_yaml(path) or {}
            personas[path.stem] = Persona.model_validate({"name": path.stem, **data})
        except PromptFileError as error:
            problems.extend(error.problems)
        except ValidationError as error:
            problems.extend(f"{path}:1: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    routing_path = folder / "routing.yaml"
    routing = Routing()
    if routing_path.exists():
        try:
            routing = Routing.model_validate(_read_yaml(routing_path) or {})
        except PromptFileError as error:
            problems.extend(error.problems)
        except ValidationError as error:
            problems.extend(
                f"{routing_path}:1: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
            )
    if not problems and routing.default_persona not in personas:
        problems.append(f"{routing_path}:1: default_persona: no persona named {routing.default_persona!r}")
    if problems:
        raise PromptFileError(problems)
    return PromptLibrary(personas=personas, routing=routing)
