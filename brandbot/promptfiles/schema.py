"""JSON Schemas of the prompt files, so editors autocomplete and check them while the admin types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from brandbot.promptfiles.evals import EvalFile
from brandbot.promptfiles.models import PersonaFile, Routing

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

SCHEMA_FILES: dict[str, type[BaseModel]] = {
    "persona.schema.json": PersonaFile,
    "routing.schema.json": Routing,
    "eval.schema.json": EvalFile,
}
"""File name → the model it describes; YAML files point at them with a `yaml-language-server` comment."""


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"$schema": SCHEMA_DIALECT, **model.model_json_schema()}


def schema_texts() -> dict[str, str]:
    """Each schema file's exact text (stable, so a committed copy can be checked for staleness)."""
    return {
        name: json.dumps(json_schema(model), indent=2, ensure_ascii=False) + "\n"
        for name, model in SCHEMA_FILES.items()
    }


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_texts().items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
