"""`brandbot settings example`: the settings as a commented `.env` file."""

from __future__ import annotations

import typer

from brandbot.env_example import env_example

settings_app = typer.Typer(help="brandbot's settings (BRANDBOT_* variables).", no_args_is_help=True)


@settings_app.command("example")
def example() -> None:
    """Print `.env.example`: every setting with its description and default, and compose's variables."""
    typer.echo(env_example(), nl=False)
