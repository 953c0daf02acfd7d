"""Voice regression tests: `prompts/evals/<persona>.yaml`, read and checked like every prompt file.

Each case is a question (after an optional short conversation) and the checks its answer must pass.
Problems are reported as `file:line: field: message`, all at once (`brandbot prompts check` lists them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationError

from brandbot.contract import Platform
from brandbot.errors import PromptFileError
from brandbot.promptfiles.library import PromptLibrary
from brandbot.promptfiles.models import Example, Persona, _Strict
from brandbot.promptfiles.problems import validation_problems
from brandbot.promptfiles.source import Problem, SourceFile, UnreadableFile, read_source

EVALS_FOLDER = "evals"
EVAL_SUFFIX = ".yaml"

DEFAULT_SEED = 1234
"""The sampling seed of every case unless a file sets its own: reruns draw the same tokens."""


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(f"not a valid regular expression ({error})") from None
    return pattern


Phrase = Annotated[str, Field(min_length=1)]
Regex = Annotated[str, Field(min_length=1), AfterValidator(_compiles)]


class Checks(_Strict):
    """What the answer must (not) do. Phrases are matched case-insensitively; the persona's
    `banned_phrases` are always checked as well."""

    include: list[Phrase] = Field(default_factory=list, description="Phrases the answer must contain.")
    include_regex: list[Regex] = Field(
        default_factory=list, description="Regular expressions the answer must match (Python syntax)."
    )
    exclude: list[Phrase] = Field(default_factory=list, description="Phrases the answer must not contain.")
    exclude_regex: list[Regex] = Field(
        default_factory=list, description="Regular expressions the answer must not match (Python syntax)."
    )
    refuses: bool = Field(False, description="The answer must contain the persona's `refusal` text.")
    max_words: int | None = Field(None, ge=1, description="The answer has at most this many words.")
    starts_with: Phrase | None = Field(None, description="The answer begins with this (ignoring spaces).")
    ends_with: Phrase | None = Field(None, description="The answer ends with this (ignoring spaces).")


class EvalCase(_Strict):
    """One question and the checks its answer must pass."""

    name: str = Field(
        min_length=1, max_length=80, description="Unique in the file; names the case in reports."
    )
    question: str = Field(min_length=1, description="What the user asks.")
    history: list[Example] = Field(
        default_factory=list, description="Earlier exchanges of the conversation, oldest first."
    )
    platform: Platform = Field(Platform.SLACK, description="Where the question is asked ({{ platform }}).")
    channel: str = Field("", description="Channel name ({{ channel }}); empty = a direct message.")
    user: str = Field("Alex", description="Display name of the asker ({{ user }}).")
    checks: Checks = Field(description="What the answer must (not) do.")


class EvalFile(_Strict):
    """`prompts/evals/<persona>.yaml`: voice regression tests of one persona (`brandbot prompts eval`)."""

    seed: int = Field(DEFAULT_SEED, ge=0, lt=2**31, description="Sampling seed of every case.")
    cases: list[EvalCase] = Field(min_length=1, description="The questions, each with its checks.")


@dataclass(frozen=True)
class EvalSuite:
    persona: Persona
    file: EvalFile
    label: str


def eval_path(folder: Path, persona: str) -> Path:
    return folder / EVALS_FOLDER / f"{persona}{EVAL_SUFFIX}"


def load_evals(library: PromptLibrary, names: Iterable[str] = ()) -> list[EvalSuite]:
    """The eval files of `names` (default: every persona that has one); `PromptFileError` lists problems."""
    folder = library.folder
    wanted = list(names)
    problems: list[Problem] = []
    if not wanted:
        evals = folder / EVALS_FOLDER
        found = sorted(evals.glob(f"*{EVAL_SUFFIX}")) if evals.is_dir() else []
        wanted = [path.stem for path in found if not path.name.startswith(".")]
        if not wanted:
            problems.append(
                Problem(str(evals), 1, "", "no eval files (<persona>.yaml); see prompts/README.md")
            )
    suites: list[EvalSuite] = []
    for name in wanted:
        path = eval_path(folder, name)
        persona = library.persona(name)
        if persona is None:
            known = ", ".join(library.personas)
            problems.append(Problem(str(path), 1, "", f"no persona named {name!r} (personas: {known})"))
            continue
        if not path.is_file():
            problems.append(Problem(str(path), 1, "", f"persona {name!r} has no eval file"))
            continue
        suite = _load_suite(path, persona, problems)
        if suite is not None:
            suites.append(suite)
    if problems:
        raise PromptFileError([str(problem) for problem in sorted(problems)])
    return suites


def _load_suite(path: Path, persona: Persona, problems: list[Problem]) -> EvalSuite | None:
    try:
        source = read_source(path, label=str(path))
    except UnreadableFile as unreadable:
        problems.append(unreadable.problem)
        return None
    if not isinstance(source.data, dict):
        problems.append(Problem(source.label, 1, "", "must be a mapping with a `cases:` list"))
        return None
    try:
        file = EvalFile.model_validate(source.data)
    except ValidationError as error:
        problems.extend(validation_problems(source, error, EvalFile))
        return None
    found = _case_problems(file, persona, source)
    problems.extend(found)
    return None if found else EvalSuite(persona, file, source.label)


def _case_problems(file: EvalFile, persona: Persona, source: SourceFile) -> list[Problem]:
    found: list[Problem] = []
    seen: set[str] = set()
    for index, case in enumerate(file.cases):
        if case.name in seen:
            found.append(
                source.problem(("cases", index, "name"), f"{case.name!r} is used by an earlier case")
            )
        seen.add(case.name)
        if case.checks.refuses and not persona.refusal:
            message = f"persona {persona.name!r} has no `refusal` text to check for"
            found.append(source.problem(("cases", index, "checks", "refuses"), message))
    return found
