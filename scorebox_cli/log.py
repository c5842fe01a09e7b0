"""`scorebox log prune`: delete the prediction log's rows past their retention, in small batches
(scorebox/retention.py), as the service does while it logs."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from scorebox.db import asyncpg_arguments
from scorebox.errors import ConfigError
from scorebox.retention import Pruned, prune
from scorebox.settings import get_settings
from scorebox_cli.app import EPILOG, app, console, friendly, ready_engine

log_app = typer.Typer(
    help="The prediction log (scorebox_prediction_log).",
    epilog=EPILOG,
    rich_markup_mode="markdown",
    no_args_is_help=True,
)
app.add_typer(log_app, name="log")


async def _prune(database_url: str, days: float) -> Pruned:
    import asyncpg

    connection = await asyncpg.connect(**asyncpg_arguments(database_url, "scorebox-log-prune"))
    try:
        return await prune(connection, days * 86_400)
    finally:
        await connection.close()


@log_app.command("prune", epilog=EPILOG)
@friendly
def log_prune(
    older_than: Annotated[
        float | None,
        typer.Option(
            "--older-than",
            help="Delete rows logged more than this many days ago (fractions allowed).",
            show_default="SCOREBOX_LOG_RETENTION_DAYS",
        ),
    ] = None,
) -> None:
    """Delete the prediction log's rows older than the retention, a few thousand at a time, each
    batch its own short statement: the service goes on logging meanwhile."""
    settings = get_settings()
    days = settings.log_retention_days if older_than is None else older_than
    if days <= 0:
        raise ConfigError(
            "SCOREBOX_LOG_RETENTION_DAYS is 0 (keep every row): give --older-than DAYS to prune"
        )
    if not settings.database_url.startswith("postgresql"):
        raise ConfigError("the prediction log is written to PostgreSQL only; nothing to prune")
    ready_engine(settings, tables=True).dispose()
    done = asyncio.run(_prune(settings.database_url, days))
    if done.busy:
        console.print("another process is pruning the prediction log right now; nothing done")
        return
    console.print(
        f"deleted {done.deleted:,} prediction log rows logged more than {days:g} days ago",
        highlight=False,
    )
