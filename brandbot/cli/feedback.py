"""`brandbot feedback export`: rated conversations as chat-format JSONL, ready for LoRA fine-tuning."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import redis
import typer

from brandbot.connections import async_client
from brandbot.feedback import FeedbackStore, RatingFilter

feedback_app = typer.Typer(help="Users' 👍/👎 on answers, for fine-tuning.", no_args_is_help=True)


@feedback_app.command("export")
def export(
    output: Annotated[str, typer.Argument(help="JSONL file to write, or - for standard output.")],
    rating: Annotated[
        RatingFilter, typer.Option(help="good: more 👍 than 👎; bad: the reverse; all: both.")
    ] = RatingFilter.GOOD,
) -> None:
    """Write the rated conversations Redis still holds (within the retention period) as JSONL."""
    from brandbot.cli import fail, settings_or_exit

    settings = settings_or_exit()

    async def run() -> int:
        connection = async_client(settings, socket_connect_timeout=2)
        try:
            store = FeedbackStore(connection, retention_seconds=settings.retention_seconds)
            return await store.export(sys.stdout if output == "-" else Path(output), rating=rating)
        finally:
            await connection.aclose()

    try:
        count = asyncio.run(run())
    except (redis.ConnectionError, redis.TimeoutError):
        fail("cannot reach Redis at BRANDBOT_REDIS_URL; is it running?")
        return
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror}")
        return
    noun = "conversation" if count == 1 else "conversations"
    typer.echo(
        f"wrote {count} rated {noun} ({rating.value}) to {'standard output' if output == '-' else output}",
        err=True,
    )
