"""The `scorebox` command line."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import Engine

from scorebox.db import make_engine
from scorebox.errors import ScoreboxError
from scorebox.migrate import create_database_if_missing, upgrade, wait_for_database
from scorebox.settings import Settings, get_settings

app = typer.Typer(help="Train, serve and batch-score a scikit-learn model on your own table.")
db_app = typer.Typer(help="Database schema commands.")
app.add_typer(db_app, name="db")

console = Console()
err = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def _friendly(command: Callable[P, R]) -> Callable[P, R]:
    """Print scorebox errors as one red message and exit 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            return command(*args, **kwargs)
        except ScoreboxError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def _ready_engine(settings: Settings) -> Engine:
    engine = make_engine(settings.database_url)
    wait_for_database(engine)
    return engine


@db_app.command("upgrade")
@_friendly
def db_upgrade() -> None:
    """Create or update scorebox's tables (predictions, jobs) to the newest schema."""
    settings = get_settings()
    engine = make_engine(settings.database_url)
    if create_database_if_missing(engine):
        console.print(f"created database {engine.url.database}")
    wait_for_database(engine)
    upgrade(engine, settings.predictions_table)
    console.print(f"schema is up to date ({engine.url.render_as_string(hide_password=True)})")


@app.command()
@_friendly
def seed(
    rows: Annotated[
        int | None,
        typer.Option(help="Generate this many synthetic rows instead of the example data."),
    ] = None,
) -> None:
    """Load example data into SCOREBOX_FEATURE_TABLE (breast cancer data, or --rows synthetic)."""
    from scorebox.seed import seed as seed_table

    settings = get_settings()
    engine = _ready_engine(settings)
    with Progress(
        TextColumn("seeding"),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("seed", total=rows)
        with engine.begin() as conn:
            inserted = seed_table(
                conn,
                settings.feature_table,
                id_column=settings.id_column,
                target_column=settings.target_column,
                rows=rows,
                on_batch=lambda n: progress.advance(task, n),
            )
    console.print(f"{inserted:,} rows inserted into {settings.feature_table}")


@app.command()
@_friendly
def train() -> None:
    """Fit, evaluate and register a model on SCOREBOX_FEATURE_TABLE."""
    from training.train import train as run_training

    settings = get_settings()
    engine = _ready_engine(settings)
    with console.status("training") as status:
        result = run_training(settings, engine, step=lambda text: status.update(text))
    metrics = ", ".join(
        f"{name} {'n/a' if value is None else f'{value:.4f}'}"
        for name, value in result.info.metrics.items()
    )
    console.print(f"registered [bold]{result.tag}[/] ({result.info.task}, {result.info.estimator})")
    console.print(f"holdout: {metrics}")
    for note, count in result.info.data_notes.items():
        if count:
            console.print(f"note: {note.replace('_', ' ')}: {count}")
    console.print(f"report: {result.report}")
