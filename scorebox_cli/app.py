"""The Typer app, its consoles, and what every command shares: one-line errors, the database
engine, the service client and the broker."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from scorebox.db import make_engine
from scorebox.errors import ScoreboxError, database_reason, one_line
from scorebox.migrate import check_schema, wait_for_database
from scorebox.settings import Settings

# Every help screen ends with where settings come from.
EPILOG = (
    "Settings come from SCOREBOX_* environment variables or a .env file in the working "
    "directory; `scorebox config` prints the ones in effect and where each came from."
)

app = typer.Typer(
    help="Train, serve and batch-score a scikit-learn model on your own table.",
    epilog=EPILOG,
    rich_markup_mode="markdown",
    no_args_is_help=True,
)
db_app = typer.Typer(help="Database schema commands.", epilog=EPILOG, rich_markup_mode="markdown")
app.add_typer(db_app, name="db")
jobs_app = typer.Typer(
    help="Batch-scoring jobs: list, show, cancel, resume.",
    epilog=EPILOG,
    rich_markup_mode="markdown",
    no_args_is_help=True,
)
app.add_typer(jobs_app, name="jobs")

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

P = ParamSpec("P")
R = TypeVar("R")


def friendly(command: Callable[P, R]) -> Callable[P, R]:
    """Print scorebox errors (and a database that went away) as one line and exit 1, without a
    traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            return command(*args, **kwargs)
        except ScoreboxError as exc:
            message = one_line(exc, 4000)
        except DBAPIError as exc:
            message = f"database error: {database_reason(exc)}"
        err.print(Text.assemble(("error: ", "bold red"), message))
        raise typer.Exit(1)

    return wrapper


def ready_engine(settings: Settings, *, tables: bool = False) -> Engine:
    """An engine on a database that answers (one line if it is starting and waited for); with
    ``tables``, one whose scorebox tables are at this version's schema."""
    engine = make_engine(settings.database_url)
    wait_for_database(engine, waiting=lambda message: err.print(message, highlight=False))
    if tables:
        check_schema(engine, settings.predictions_table)
    return engine


def service_client(settings: Settings) -> Any:
    """The client of the prediction service (SCOREBOX_SERVICE_URL)."""
    from worker.client import ServiceClient

    return ServiceClient.from_settings(settings)


def enqueuer(settings: Settings) -> Callable[[int, int, str], None]:
    """Queue chunks on the broker of ``settings``; an unreachable broker is a clear error."""
    from kombu.exceptions import OperationalError

    from worker.celery_app import chunk_sender, make_app

    send = chunk_sender(make_app(settings))

    def enqueue(job_id: int, chunk_no: int, queue: str) -> None:
        try:
            send(job_id, chunk_no, queue)
        except OperationalError as exc:
            raise ScoreboxError(
                f"cannot reach the broker (SCOREBOX_REDIS_URL): {exc}; job {job_id} is recorded: "
                f"run `scorebox jobs resume {job_id}` once the broker is up"
            ) from None

    return enqueue


def metrics_line(metrics: dict[str, float], undefined: dict[str, str] | None = None) -> str:
    """Holdout metrics on one line; an undefined one says so."""
    shown = [f"{name} {value:.4f}" for name, value in metrics.items()]
    return ", ".join(shown + [f"{name} undefined" for name in undefined or {}])
