"""Commands on the database and the model: `db upgrade`, `db check`, `seed`, `train`, `config`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text
from sqlalchemy import Engine

from scorebox.db import make_engine
from scorebox.errors import ScoreboxError
from scorebox.migrate import check_schema, create_database_if_missing, upgrade, wait_for_database
from scorebox.settings import Settings, described, get_settings, unknown_names
from scorebox_cli.app import (
    EPILOG,
    app,
    console,
    db_app,
    err,
    friendly,
    metrics_line,
    ready_engine,
)


@db_app.command("upgrade", epilog=EPILOG)
@friendly
def db_upgrade() -> None:
    """Create the database if missing, then create or update scorebox's tables (predictions,
    jobs, chunks) to the newest schema, and the predictions table the settings name."""
    settings = get_settings()
    engine = make_engine(settings.database_url)
    if create_database_if_missing(engine):
        console.print(f"created database {engine.url.database}")
    wait_for_database(engine, waiting=lambda message: err.print(message, highlight=False))
    if upgrade(engine, settings.predictions_table, settings.feature_table):
        console.print(f"created predictions table {settings.predictions_table}", highlight=False)
    console.print(f"schema is up to date ({engine.url.render_as_string(hide_password=True)})")


@db_app.command("check", epilog=EPILOG)
@friendly
def db_check(
    wait: Annotated[
        float, typer.Option(help="Seconds to keep trying while the schema is not there yet.")
    ] = 0.0,
) -> None:
    """Exit 0 once scorebox's tables are at this version's schema (what `db upgrade` makes), 1
    with the reason otherwise: a pod's init step waits with it for the migration Job."""
    settings = get_settings()
    engine = make_engine(settings.database_url)
    deadline = time.monotonic() + wait
    while True:
        try:
            wait_for_database(engine)
            check_schema(engine, settings.predictions_table)
            break
        except ScoreboxError as exc:
            if time.monotonic() >= deadline:
                raise
            err.print(f"waiting: {exc}", highlight=False)
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    console.print("schema is up to date")


def seed_table(
    settings: Settings, engine: Engine, rows: int | None, example: str = "breast_cancer"
) -> None:
    """Load an example into SCOREBOX_FEATURE_TABLE, with a progress bar for many rows."""
    from scorebox.seed import seed as seed_rows

    with Progress(
        TextColumn("seeding"),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("seed", total=rows)
        with engine.begin() as conn:
            inserted = seed_rows(
                conn,
                settings.feature_table,
                id_column=settings.id_column,
                target_column=settings.target_column,
                rows=rows,
                example=example,
                on_batch=lambda n: progress.advance(task, n),
            )
    console.print(f"{inserted:,} rows inserted into {settings.feature_table}", highlight=False)


@app.command(epilog=EPILOG)
@friendly
def seed(
    rows: Annotated[
        int | None,
        typer.Option(
            help="Generate this many rows like the example's instead of the example itself.",
            show_default="the example's own rows",
        ),
    ] = None,
    example: Annotated[
        str,
        typer.Option(
            help="`breast_cancer` (30 numbers, a 0/1 target) or `penguins` (text ids, "
            "categories, booleans, dates, NULLs; the target is the species)."
        ),
    ] = "breast_cancer",
) -> None:
    """Load an example table into SCOREBOX_FEATURE_TABLE (ids already there are kept)."""
    settings = get_settings()
    seed_table(settings, ready_engine(settings), rows, example)


@app.command(epilog=EPILOG)
@friendly
def train(
    seed_example: Annotated[
        bool, typer.Option("--seed", help="Load the example data into the table first.")
    ] = False,
    bento: Annotated[
        bool, typer.Option("--bento", help="Build the Bento (bentofile.yaml here) afterwards.")
    ] = False,
    if_missing: Annotated[
        bool,
        typer.Option(
            "--if-missing",
            help="Train only when no signed version of SCOREBOX_MODEL_NAME exists yet (what "
            "`docker compose up` does, so that starting the stack again trains nothing).",
        ),
    ] = False,
) -> None:
    """Fit, evaluate and register a model on SCOREBOX_FEATURE_TABLE; print which columns it
    used and which it left out, its holdout metrics, and where its report is."""
    settings = get_settings()
    engine = ready_engine(settings)  # before the heavy imports: a wrong URL says so at once
    if seed_example:
        seed_table(settings, engine, rows=None)
    if if_missing:
        from scorebox.catalog import Catalog
        from scorebox.errors import ModelError

        try:
            existing = Catalog.from_settings(settings, engine).resolve(
                settings.model_name, "latest"
            )
        except ModelError:
            existing = None
        if existing is not None:
            console.print(
                f"{existing.tag} is registered already; nothing trained (--if-missing). "
                "`scorebox train` trains a new version",
                highlight=False,
                markup=False,
            )
            return
    from training.train import train as run_training

    with console.status("training") as status:
        result = run_training(settings, engine, step=lambda text: status.update(text))
    info = result.info
    console.print(f"registered [bold]{result.tag}[/] ({info.task}, {info.estimator})")
    used = ", ".join(f"{f.name} ({f.kind})" for f in info.features)
    console.print(f"features: {used}", highlight=False, markup=False)
    for name, why in info.left_out.items():
        console.print(f"left out: {name}: {why}", highlight=False, markup=False)
    console.print(f"holdout: {metrics_line(info.metrics, info.metrics_undefined)}")
    for name, why in info.metrics_undefined.items():
        console.print(f"note: {name} is undefined: {why}", highlight=False, markup=False)
    for note, count in info.data_notes.items():
        if count:
            console.print(f"note: {note.replace('_', ' ')}: {count}")
    console.print(f"speed: {info.compiled_note}", highlight=False, markup=False)
    console.print(f"signed: {result.signed}", highlight=False, markup=False)
    console.print(f"report: {result.report}", highlight=False)
    console.print(f"registry: {result.registry}", highlight=False, markup=False)
    if bento:
        _build_bento()


def _build_bento() -> None:
    import subprocess

    import bentoml
    from bentoml.exceptions import BentoMLException

    if not Path("bentofile.yaml").exists():
        raise ScoreboxError("--bento needs bentofile.yaml in the current directory")
    try:
        with console.status("building the Bento"):
            built = bentoml.bentos.build_bentofile("bentofile.yaml", build_ctx=".")
    except subprocess.CalledProcessError as exc:
        # uv locks the Bento's packages from the package index; it said why above.
        program = exc.cmd[0] if isinstance(exc.cmd, list | tuple) else str(exc.cmd).split()[0]
        raise ScoreboxError(
            f"building the Bento failed: {Path(program).name} exited with {exc.returncode} "
            "while locking its packages; the model is registered. Check that this machine "
            "reaches the package index (behind a TLS-inspecting proxy, trust its certificate "
            "authority: SSL_CERT_FILE), then run `bentoml build`"
        ) from None
    except BentoMLException as exc:
        raise ScoreboxError(f"building the Bento failed: {exc}; the model is registered") from None
    console.print(f"bento: {built.tag}")


@app.command(epilog=EPILOG)
@friendly
def config() -> None:
    """Print the settings in effect (the API token and database password masked) and where each
    came from: the environment, the .env file, or the default; then every SCOREBOX_* name that
    is no setting (a typo is ignored otherwise), with the closest setting."""
    settings = get_settings()
    rows = described(settings)
    width = max(len(variable) for variable, _, _ in rows)
    for variable, value, source in rows:
        line = f"{variable:<{width}}  {value or '(unset)'}  "
        console.print(Text.assemble(line, (f"# {source}", "dim")))
    for name, where, close in unknown_names(settings):
        hint = f"; did you mean {close}?" if close else ""
        console.print(
            Text.assemble((f"{name}  not a setting, ignored ({where}){hint}", "bold red")),
            highlight=False,
        )
