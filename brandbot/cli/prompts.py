"""`brandbot prompts check | schema | show`: the admin's tools for the prompt files."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from brandbot.cli.evals import evaluate, print_problems
from brandbot.contract import GenerationRequest, Platform, ReplyTarget, Role, Turn, UserRef
from brandbot.errors import PromptFileError, TemplateError
from brandbot.promptfiles.evals import EVALS_FOLDER, load_evals
from brandbot.promptfiles.library import PromptLibrary, load_prompt_library
from brandbot.promptfiles.models import Persona
from brandbot.promptfiles.schema import write_schemas

prompts_app = typer.Typer(
    help="Admin prompt files: check them, export their schema, preview a prompt.", no_args_is_help=True
)

PREVIEW_QUESTION = "Hello! What can you help me with?"
RULE = "─" * 24

FolderOption = Annotated[
    Path | None, typer.Option("--prompts-dir", help="Prompt folder (default: BRANDBOT_PROMPTS_DIR).")
]


@prompts_app.command("check")
def check(folder: FolderOption = None) -> None:
    """Validate every prompt file; print all problems as file:line: field: message (exit 1 if any)."""
    library = _load_or_exit(_prompts_dir(folder))
    evals = 0
    if (library.folder / EVALS_FOLDER).is_dir():
        try:
            evals = len(load_evals(library))
        except PromptFileError as error:
            print_problems(error, library.folder)
            raise typer.Exit(1) from None
    names = ", ".join(library.personas)
    typer.echo(
        f"{library.folder}: OK — {len(library.personas)} persona(s) ({names}); "
        f"default persona: {library.routing.default_persona}; {evals} eval file(s)"
    )


prompts_app.command("eval")(evaluate)


@prompts_app.command("schema")
def schema(
    output: Annotated[
        Path | None, typer.Option(help="Folder to write the schemas to (default: <prompts dir>/schema).")
    ] = None,
    folder: FolderOption = None,
) -> None:
    """Write JSON Schemas of persona and routing files, for editors' autocomplete and checks."""
    target = output or _prompts_dir(folder) / "schema"
    for path in write_schemas(target):
        typer.echo(f"wrote {path}")


@prompts_app.command("show")
def show(
    persona: Annotated[
        str | None, typer.Argument(help="Persona name (default: the one routing picks).")
    ] = None,
    platform: Annotated[Platform, typer.Option(help="Platform the message comes from.")] = Platform.SLACK,
    workspace: Annotated[str | None, typer.Option(help="Slack team id or Discord server id.")] = None,
    channel: Annotated[str | None, typer.Option(help="Channel id (routing).")] = None,
    channel_name: Annotated[
        str | None, typer.Option(help="Channel name ({{ channel }}); default: the --channel id.")
    ] = None,
    user: Annotated[str, typer.Option(help="Display name of the asker ({{ user }}).")] = "",
    question: Annotated[str, typer.Option(help="The user's message.")] = PREVIEW_QUESTION,
    model_dir: Annotated[
        Path | None,
        typer.Option(help="Model folder whose chat template renders it (default: BRANDBOT_MODEL_DIR)."),
    ] = None,
    folder: FolderOption = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Print only the prompt text, nothing around it.")
    ] = False,
) -> None:
    """Print the exact prompt the model would see for a message, and its token count."""
    from brandbot.cli import fail, settings_or_exit

    settings = settings_or_exit()
    library = _load_or_exit(folder or settings.prompts_dir)
    chosen, reason = _pick_persona(library, persona, platform=platform, workspace=workspace, channel=channel)
    request = GenerationRequest(
        target=ReplyTarget(platform=platform, workspace_id=workspace, channel_id=channel or "preview"),
        user=UserRef(id="preview", display_name=user),
        channel_name=channel_name if channel_name is not None else (channel or ""),
        persona=chosen.name,
        turns=[Turn(role=Role.USER, content=question)],
    )
    model_dir = model_dir or settings.model_dir
    if model_dir is None:
        fail("a preview needs the model's chat template and tokenizer: set BRANDBOT_MODEL_DIR or --model-dir")
        return
    try:
        preview = render_preview(request, chosen, model_dir=model_dir, company=settings.company_name)
    except (OSError, TemplateError, ValueError) as error:
        fail(f"cannot render with the model in {model_dir}: {error}")
        return
    if raw:
        typer.echo(preview.text, nl=False)
        return
    typer.echo(f"persona:  {chosen.name} ({chosen.display_name}), model {chosen.model}")
    if reason:
        typer.echo(f"routing:  {reason}")
    typer.echo(f"template: {model_dir} (the model's own chat template)")
    typer.echo(f"{RULE} prompt {RULE}")
    typer.echo(preview.text, nl=not preview.text.endswith("\n"))
    typer.echo(
        f"{RULE} {preview.prompt_tokens} tokens · context {preview.context_length} · "
        f"answer up to {preview.max_new_tokens} tokens {RULE}"
    )
    for notice in preview.notices:
        typer.echo(f"note: {notice}")


@dataclass(frozen=True)
class Preview:
    text: str
    prompt_tokens: int
    context_length: int
    max_new_tokens: int
    notices: list[str]


def render_preview(request: GenerationRequest, persona: Persona, *, model_dir: Path, company: str) -> Preview:
    """The prompt exactly as a worker serving `model_dir` builds it (same builder, template and tokenizer)."""
    from brandbot.templating import ChatTemplate
    from worker.prompt_builder import build_prompt

    context_length = _context_length(model_dir)
    built = build_prompt(
        request,
        persona,
        template=ChatTemplate.from_model_dir(model_dir),
        count_tokens=token_counter(model_dir),
        context_length=context_length,
        company=company,
    )
    return Preview(
        text=built.text,
        prompt_tokens=built.prompt_tokens,
        context_length=context_length,
        max_new_tokens=built.max_new_tokens,
        notices=[text for _code, text in built.notices],
    )


def token_counter(model_dir: Path) -> Callable[[str], int]:
    """Counts tokens as the engines do (`add_special_tokens=False`), without loading the model."""
    tokenizer_json = model_dir / "tokenizer.json"
    if tokenizer_json.exists():
        try:
            from tokenizers import Tokenizer
        except ImportError:
            pass
        else:
            tokenizer = Tokenizer.from_file(str(tokenizer_json))
            return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ValueError("counting tokens needs the `tokenizers` package: pip install -e '.[cpu]'") from None
    slow = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return lambda text: len(slow.encode(text, add_special_tokens=False))


def _context_length(model_dir: Path) -> int:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return int(config.get("max_position_embeddings", 2048))  # what the CPU engine uses


def _pick_persona(
    library: PromptLibrary,
    name: str | None,
    *,
    platform: Platform,
    workspace: str | None,
    channel: str | None,
) -> tuple[Persona, str]:
    from brandbot.cli import fail

    if name is None:
        resolution = library.resolve(platform=platform, workspace_id=workspace, channel_id=channel)
        return resolution.persona, resolution.reason
    persona = library.persona(name)
    if persona is None:
        fail(f"no persona named {name!r} (personas: {', '.join(library.personas)})")
    assert persona is not None
    return persona, ""


def _prompts_dir(folder: Path | None) -> Path:
    if folder is not None:
        return folder
    from brandbot.cli import settings_or_exit

    return settings_or_exit().prompts_dir


def _load_or_exit(folder: Path) -> PromptLibrary:
    try:
        return load_prompt_library(folder)
    except PromptFileError as error:
        print_problems(error, folder)
        raise typer.Exit(1) from None
