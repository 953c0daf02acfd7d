"""Loading the prompt folder into one immutable snapshot that a request uses from start to finish.

Every problem in every file is collected before giving up, so `brandbot prompts check` (and a rejected
hot reload) lists them all at once, each as `file:line: field: message`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from brandbot.contract import Platform
from brandbot.errors import PromptFileError
from brandbot.promptfiles.checks import (
    lora_path,
    persona_reference_problems,
    routing_reference_problems,
    template_problems,
)
from brandbot.promptfiles.models import NAME_PATTERN, Persona, PersonaFile, Routing
from brandbot.promptfiles.problems import salvage, validation_problems
from brandbot.promptfiles.routing import Place, RoutingTable
from brandbot.promptfiles.source import Location, Problem, SourceFile, UnreadableFile, read_source

PERSONAS_FOLDER = "personas"
ROUTING_FILE = "routing.yaml"
PERSONA_SUFFIX = ".yaml"


@dataclass(frozen=True)
class Resolution:
    """The persona that answers a message, and why (a sentence a user or admin can read)."""

    persona: Persona
    reason: str
    refused_request: str | None = None  # a persona the user asked for that may not be picked there


@dataclass(frozen=True)
class PromptLibrary:
    """One consistent, read-only view of every prompt file."""

    personas: Mapping[str, Persona]
    routing: Routing
    folder: Path = Path("prompts")
    routing_source: SourceFile | None = field(default=None, repr=False, compare=False)
    fingerprint: str = ""  # changes only when a file the library was built from changes

    def persona(self, name: str) -> Persona | None:
        return self.personas.get(name)

    def default_persona(self) -> Persona:
        return self.personas[self.routing.default_persona]

    def resolve(
        self,
        *,
        platform: Platform,
        workspace_id: str | None,
        channel_id: str | None,
        parent_channel_id: str | None = None,
        requested: str | None = None,
    ) -> Resolution:
        """The persona answering in this place; `requested` (a user's own pick) wins where it is allowed."""
        place = Place(platform, workspace_id, channel_id, parent_channel_id)
        table = self._table()
        terminal_pick = self.personas.get(requested) if platform is Platform.TERMINAL and requested else None
        if terminal_pick is not None:
            # `brandbot chat` is run by an admin trying a voice before routing it anywhere: any persona.
            return Resolution(terminal_pick, f"you picked {requested} in the terminal chat")
        if requested is not None:
            choice = table.choice(place)
            picked = self.personas.get(requested)
            if picked is not None and requested in choice.persona_names:
                return Resolution(picked, f"you picked {requested} (allowed here by {choice.origin})")
        route = table.route(place)
        refused = requested if requested not in (None, route.persona_name) else None
        return Resolution(self.personas[route.persona_name], route.reason, refused_request=refused)

    def choosable(
        self,
        *,
        platform: Platform,
        workspace_id: str | None,
        channel_id: str | None,
        parent_channel_id: str | None = None,
    ) -> list[Persona]:
        """Personas a user may pick themselves in this place (empty: they may not pick)."""
        place = Place(platform, workspace_id, channel_id, parent_channel_id)
        return [self.personas[name] for name in self._table().choice(place).persona_names]

    def choosable_anywhere(self, platform: Platform) -> list[Persona]:
        """Personas a user may pick somewhere on `platform` (e.g. a slash command's fixed choices)."""
        return [self.personas[name] for name in self._table().choosable_anywhere(platform)]

    def lora_path(self, persona: Persona) -> Path | None:
        """The persona's LoRA folder, relative paths taken from the prompts folder."""
        return lora_path(self.folder, persona.lora)

    def _table(self) -> RoutingTable:
        return RoutingTable(self.routing, self.routing_source)


def load_prompt_library(folder: Path) -> PromptLibrary:
    """Read and check every prompt file in `folder`; raise `PromptFileError` listing every problem."""
    folder_problem = _folder_problem(folder)
    if folder_problem is not None:
        raise PromptFileError([str(folder_problem)])
    problems: list[Problem] = []
    routing = _load_routing(folder, problems)
    persona_paths = list(_persona_files(folder, problems))
    if not persona_paths:
        label = str(folder / PERSONAS_FOLDER)
        problems.append(Problem(label, 1, "", "no persona files (*.yaml); see prompts/README.md"))
    personas: dict[str, Persona] = {}
    sources: list[SourceFile] = []
    for path in persona_paths:
        loaded = _load_persona(path, folder, routing.known_models(), problems)
        if loaded is not None:
            personas[loaded[0].name] = loaded[0]
            sources.append(loaded[1])
    problems += _shared_queue_problems(personas, dict(zip(personas, sources, strict=True)), folder)
    if routing.salvaged is not None and persona_paths:  # with no personas at all, that one problem says it
        existing = {path.stem for path in persona_paths}  # invalid ones report their own problems
        problems += routing_reference_problems(
            routing.salvaged, routing.source, folder, existing, dropped=routing.dropped
        )
    if problems or routing.valid is None:
        raise PromptFileError([str(problem) for problem in sorted(problems)])
    if routing.source is not None:
        sources.append(routing.source)
    digests = sorted((source.label, source.digest) for source in sources)
    return PromptLibrary(
        personas=MappingProxyType(personas),
        routing=routing.valid,
        folder=folder,
        routing_source=routing.source,
        fingerprint=hashlib.sha256(repr(digests).encode()).hexdigest(),
    )


def _shared_queue_problems(
    personas: dict[str, Persona], sources: dict[str, SourceFile], folder: Path
) -> list[Problem]:
    """One model queue serves one set of weights: personas on it may not name different LoRA adapters."""
    found = []
    first_by_model: dict[str, tuple[str, Path]] = {}
    for name in sorted(personas):
        persona = personas[name]
        path = lora_path(folder, persona.lora)
        if path is None:
            continue
        earlier = first_by_model.setdefault(persona.model, (name, path.resolve()))
        if earlier[1] != path.resolve():
            found.append(
                sources[name].problem(
                    ("lora",),
                    f"persona {earlier[0]!r} on model {persona.model!r} has another LoRA adapter; a model's"
                    " workers serve one adapter: give this persona a model name of its own",
                )
            )
    return found


@dataclass(frozen=True)
class _RoutingFile:
    """routing.yaml as far as it could be read: `valid` if it has no problems, else what was salvaged."""

    valid: Routing | None
    salvaged: Routing | None
    source: SourceFile | None
    dropped: list[Location] = field(default_factory=list)

    def known_models(self) -> list[str] | None:
        """Model names to check personas against; None when routing.yaml's `models` is unreadable."""
        if self.salvaged is None or any(loc[:1] == ("models",) for loc in self.dropped):
            return None
        return self.salvaged.models


def _load_routing(folder: Path, problems: list[Problem]) -> _RoutingFile:
    path = folder / ROUTING_FILE
    if not path.exists():
        return _RoutingFile(Routing(), Routing(), None)  # documented: then `default` answers everywhere
    source = _read(path, str(path), problems)
    data = _mapping_or_problem(source, problems, empty_ok=True) if source else None
    if source is None or data is None:
        return _RoutingFile(None, None, source)
    try:
        routing = Routing.model_validate(data)
        return _RoutingFile(routing, routing, source)
    except ValidationError as error:
        problems += validation_problems(source, error, Routing)
        salvaged, dropped = salvage(Routing, data, error)
        return _RoutingFile(None, salvaged, source, dropped)


def _load_persona(
    path: Path, folder: Path, known_models: list[str] | None, problems: list[Problem]
) -> tuple[Persona, SourceFile] | None:
    source = _read(path, str(path), problems)
    data = _mapping_or_problem(source, problems, empty_ok=False) if source else None
    if source is None or data is None:
        return None
    found: list[Problem] = []
    name_ok = _name_problem(path, source, data, found)
    content: PersonaFile | None = None
    try:
        content = PersonaFile.model_validate({key: value for key, value in data.items() if key != "name"})
    except ValidationError as error:
        found += validation_problems(source, error, PersonaFile)
    found += template_problems(data, source)
    found += persona_reference_problems(data, source, folder, known_models)
    problems += found
    if found or not name_ok or content is None:
        return None
    return Persona.model_validate({**dict(content), "name": path.stem}), source


def _folder_problem(folder: Path) -> Problem | None:
    if not folder.exists():
        return Problem(str(folder), 1, "", "prompts folder does not exist (set BRANDBOT_PROMPTS_DIR)")
    if not folder.is_dir():
        return Problem(
            str(folder), 1, "", "is not a folder (BRANDBOT_PROMPTS_DIR must name the prompts folder)"
        )
    if not (folder / PERSONAS_FOLDER).is_dir():
        label = str(folder / PERSONAS_FOLDER)
        return Problem(label, 1, "", "folder missing: add one YAML file per persona (see prompts/README.md)")
    return None


def _persona_files(folder: Path, problems: list[Problem]) -> Iterator[Path]:
    try:
        entries = sorted((folder / PERSONAS_FOLDER).iterdir())
    except OSError as error:
        label = str(folder / PERSONAS_FOLDER)
        problems.append(Problem(label, 1, "", f"cannot list the folder ({error.strerror})"))
        return
    for path in entries:
        if path.name.startswith(".") or not path.is_file():
            continue  # editors' swap and lock files, folders
        if path.suffix == ".yml":
            problems.append(Problem(str(path), 1, "", "persona files end in .yaml; rename it"))
        elif path.suffix == PERSONA_SUFFIX:
            yield path


def _read(path: Path, label: str, problems: list[Problem]) -> SourceFile | None:
    try:
        return read_source(path, label=label)
    except UnreadableFile as unreadable:
        problems.append(unreadable.problem)
        return None


def _mapping_or_problem(
    source: SourceFile, problems: list[Problem], *, empty_ok: bool
) -> dict[str, Any] | None:
    if source.data is None:
        if empty_ok:
            return {}
        problems.append(
            Problem(source.label, 1, "", "file is empty (a persona needs display_name and system_prompt)")
        )
        return None
    if not isinstance(source.data, dict):
        problems.append(Problem(source.label, 1, "", "must be a mapping of `key: value` lines"))
        return None
    return source.data


def _name_problem(path: Path, source: SourceFile, data: dict[str, Any], found: list[Problem]) -> bool:
    if "name" in data:
        found.append(
            source.problem(("name",), "unknown key: a persona's name is its file name; remove this line")
        )
    if re.fullmatch(NAME_PATTERN, path.stem) is None:
        message = f"file name {path.stem!r} is not a persona name: use lowercase letters, digits, - or _"
        found.append(Problem(source.label, 1, "", message))
        return False
    return "name" not in data
