"""The `scorebox` command line."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

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
jobs_app = typer.Typer(help="Batch-scoring jobs: list, show, cancel, resume.")
app.add_typer(jobs_app, name="jobs")

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# `scorebox score --wait` exits with how the job ended (README, "Score whole tables").
EXIT_CODES = {"succeeded": 0, "succeeded_with_errors": 3}

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
    wait_for_database(engine, waiting=lambda message: err.print(message, highlight=False))
    return engine


@db_app.command("upgrade")
@_friendly
def db_upgrade() -> None:
    """Create or update scorebox's tables (predictions, jobs) to the newest schema."""
    settings = get_settings()
    engine = make_engine(settings.database_url)
    if create_database_if_missing(engine):
        console.print(f"created database {engine.url.database}")
    wait_for_database(engine, waiting=lambda message: err.print(message, highlight=False))
    if upgrade(engine, settings.predictions_table, settings.feature_table):
        console.print(f"created predictions table {settings.predictions_table}")
    console.print(f"schema is up to date ({engine.url.render_as_string(hide_password=True)})")


def _metrics(metrics: dict[str, float], undefined: dict[str, str] | None = None) -> str:
    """Holdout metrics on one line; an undefined one says so."""
    shown = [f"{name} {value:.4f}" for name, value in metrics.items()]
    return ", ".join(shown + [f"{name} undefined" for name in undefined or {}])


def _seed(
    settings: Settings, engine: Engine, rows: int | None, example: str = "breast_cancer"
) -> None:
    from scorebox.seed import seed as seed_table

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
                example=example,
                on_batch=lambda n: progress.advance(task, n),
            )
    console.print(f"{inserted:,} rows inserted into {settings.feature_table}")


@app.command()
@_friendly
def seed(
    rows: Annotated[
        int | None,
        typer.Option(help="Generate this many rows like the example's instead of the example."),
    ] = None,
    example: Annotated[
        str,
        typer.Option(
            help="breast_cancer (30 numbers, a 0/1 target) or penguins (text ids, categories, "
            "booleans, dates, NULLs; target species)"
        ),
    ] = "breast_cancer",
) -> None:
    """Load example data into SCOREBOX_FEATURE_TABLE."""
    settings = get_settings()
    _seed(settings, _ready_engine(settings), rows, example)


@app.command()
@_friendly
def train(
    seed_example: Annotated[
        bool, typer.Option("--seed", help="Load the example data into the table first.")
    ] = False,
    bento: Annotated[
        bool, typer.Option("--bento", help="Build the Bento (bentofile.yaml here) afterwards.")
    ] = False,
) -> None:
    """Fit, evaluate and register a model on SCOREBOX_FEATURE_TABLE."""
    from training.train import train as run_training

    settings = get_settings()
    engine = _ready_engine(settings)
    if seed_example:
        _seed(settings, engine, rows=None)
    with console.status("training") as status:
        result = run_training(settings, engine, step=lambda text: status.update(text))
    info = result.info
    console.print(f"registered [bold]{result.tag}[/] ({info.task}, {info.estimator})")
    used = ", ".join(f"{f.name} ({f.kind})" for f in info.features)
    console.print(f"features: {used}", highlight=False)
    for name, why in info.left_out.items():
        console.print(f"left out: {name}: {why}", highlight=False)
    console.print(f"holdout: {_metrics(info.metrics, info.metrics_undefined)}")
    for name, why in info.metrics_undefined.items():
        console.print(f"note: {name} is undefined: {why}", highlight=False)
    for note, count in info.data_notes.items():
        if count:
            console.print(f"note: {note.replace('_', ' ')}: {count}")
    console.print(f"report: {result.report}")
    if bento:
        _build_bento()


def _build_bento() -> None:
    import bentoml

    if not Path("bentofile.yaml").exists():
        raise ScoreboxError("--bento needs bentofile.yaml in the current directory")
    with console.status("building the Bento"):
        built = bentoml.bentos.build_bentofile("bentofile.yaml", build_ctx=".")
    console.print(f"bento: {built.tag}")


def _client(settings: Settings) -> Any:
    from worker.client import ServiceClient

    return ServiceClient.from_settings(settings)


def _enqueuer(settings: Settings) -> Callable[[int, int, str], None]:
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


@app.command()
@_friendly
def score(
    table: Annotated[
        str | None, typer.Option(help="Table to score [default: SCOREBOX_FEATURE_TABLE]")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model tag [default: the one the service serves]")
    ] = None,
    mode: Annotated[
        str, typer.Option(help="all: every row; new: rows without a prediction")
    ] = "all",
    wait: Annotated[bool, typer.Option(help="Follow the job with a progress bar")] = False,
    max_failed_rows: Annotated[
        str | None,
        typer.Option(
            help="Fail the job once more rows than this failed: a count (100), a fraction "
            "(0.01) or a percentage (1%) [default: no limit]"
        ),
    ] = None,
) -> None:
    """Queue a batch-scoring job and print its id (the worker does the scoring).

    With --wait the exit status tells how the job ended: 0 every row scored, 3 finished but some
    rows failed (see `scorebox jobs show ID`), 1 the job failed or was cancelled.
    """
    from worker.jobs import submit_job

    settings = get_settings()
    engine = _ready_engine(settings)
    job_id = submit_job(
        engine,
        settings,
        _client(settings),
        _enqueuer(settings),
        table=table,
        model_tag=model,
        mode=mode,
        max_failed_rows=max_failed_rows,
    )
    console.print(f"job {job_id} queued")
    if wait:
        raise typer.Exit(EXIT_CODES.get(_watch(engine, settings, job_id)["status"], 1))


def _watch(engine: Engine, settings: Settings, job_id: int) -> dict[str, Any]:
    """Follow a job with a progress bar until it ends; return its final row."""
    from worker.jobs import get_job

    job = get_job(engine, settings, job_id)
    columns = (
        TextColumn(f"job {job_id}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} rows"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    started = time.monotonic()
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("score", total=job["rows_total"] or 1, rate="")
        while True:
            job = get_job(engine, settings, job_id)
            done = job["rows_scored"] + job["rows_failed"]
            rate = done / max(time.monotonic() - started, 1e-6)
            progress.update(task, completed=done, rate=f"{rate:,.0f} rows/s")
            if job["status"] not in ("queued", "running"):
                break
            time.sleep(0.5)
    _print_job(job)
    return job


def _print_job(job: dict[str, Any]) -> None:
    console.print(
        f"job {job['id']}: [bold]{job['status']}[/] - {job['rows_scored']:,} scored, "
        f"{job['rows_failed']:,} failed of {job['rows_total']:,} rows "
        f"({job['table_name']}, {job['model_tag']}, mode {job['mode']})"
    )
    if job["error"]:
        console.print(f"error: {job['error']}", highlight=False)


def _utc(moment: datetime) -> datetime:
    """A stored time in UTC (SQLite gives it back without a zone: it was stored in UTC)."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


@jobs_app.command("list")
@_friendly
def jobs_list(limit: Annotated[int, typer.Option(help="How many, newest first")] = 20) -> None:
    """List recent jobs (tab-separated, every field whole, when the output is not a terminal)."""
    from worker import schedule
    from worker.jobs import list_jobs

    settings = get_settings()
    jobs = list_jobs(_ready_engine(settings), settings, limit)
    if not console.is_terminal:
        fields = ["id", "status", "rows_scored", "rows_failed", "rows_total", "created_at"]
        fields += ["table_name", "model_tag", "mode", "error"]
        print("\t".join(fields))
        for job in jobs:
            print("\t".join("" if job[f] is None else str(job[f]) for f in fields))
    else:
        header = f"{'ID':>4}  {'STATUS':<21}  {'SCORED/TOTAL':<19}  {'FAILED':>6}  CREATED (UTC)"
        console.print(header, style="bold", highlight=False)
        for job in jobs:
            done = f"{job['rows_scored']:,}/{job['rows_total']:,}"
            created = f"{_utc(job['created_at']):%Y-%m-%d %H:%M}"
            console.print(
                f"{job['id']:>4}  {job['status']:<21}  {done:<19}  {job['rows_failed']:>6,}  "
                f"{created}",
                highlight=False,
            )
            console.print(
                f"      {job['table_name']} · {job['model_tag']} · {job['mode']}",
                style="dim",
                highlight=False,
            )
    last = schedule.last(settings) if settings.schedule_cron else None
    if last is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(last["at"]))
        if last["error"]:
            err.print(f"last scheduled run ({when} UTC) failed: {last['error']}", highlight=False)
        else:
            console.print(f"last scheduled run ({when} UTC): job {last['job_id']}")


@jobs_app.command("show")
@_friendly
def jobs_show(job_id: int) -> None:
    """Show one job, with a sample of the rows the service refused."""
    from worker.jobs import failed_rows, get_job

    settings = get_settings()
    engine = _ready_engine(settings)
    _print_job(get_job(engine, settings, job_id))
    for row in failed_rows(engine, settings, job_id):
        console.print(f"  row {row['row_id']}: {row['reason']}", highlight=False)


@jobs_app.command("cancel")
@_friendly
def jobs_cancel(job_id: int) -> None:
    """Stop a job: chunks not yet written are not written; what was written stays."""
    from worker.jobs import cancel_job

    settings = get_settings()
    if cancel_job(_ready_engine(settings), settings, job_id):
        console.print(f"job {job_id} cancelled")
    else:
        console.print(f"job {job_id} had already ended")


@jobs_app.command("resume")
@_friendly
def jobs_resume(job_id: int) -> None:
    """Queue again the chunks of a failed, cancelled or stalled job that are not done."""
    from worker.jobs import resume_job

    settings = get_settings()
    count = resume_job(_ready_engine(settings), settings, _enqueuer(settings), job_id)
    console.print(f"job {job_id}: {count} chunk(s) queued again")


@app.command()
@_friendly
def demo(
    keep_serving: Annotated[
        bool, typer.Option(help="Leave the service running after the job, until Ctrl-C.")
    ] = False,
) -> None:
    """Run the whole flow locally: seed, migrate, train, serve, batch-score, summarise.

    Uses a SQLite file and a filesystem broker under .scorebox-demo/ unless SCOREBOX_DATABASE_URL
    and SCOREBOX_REDIS_URL are set. Every process it starts is stopped on exit or Ctrl-C.
    """
    from scorebox import demo as flow
    from worker.jobs import submit_job

    flow.DEMO_DIR.mkdir(exist_ok=True)
    settings = flow.embedded(get_settings())
    step = console.log
    engine, trained = flow.prepare(settings, step)
    console.print(f"registered [bold]{trained.tag}[/]; report: {trained.report}")
    job: dict[str, Any] | None = None
    try:
        with flow.stack(settings, flow.DEMO_DIR, step):
            client = _client(settings)
            job_id = submit_job(engine, settings, client, _enqueuer(settings))
            step(f"job {job_id} queued")
            job = _watch(engine, settings, job_id)
            record = flow.first_record(engine, settings, trained.info.feature_names)
            sample = flow.sample_predictions(engine, settings, trained.tag)
            _summary(engine, settings, trained, job, sample)
            curl = flow.curl_command(settings, trained.info.feature_names, record)
            console.print(f"try it: {curl}", highlight=False, soft_wrap=True)
            client.close()
            if keep_serving:
                console.print("service still running; press Ctrl-C to stop")
                while True:
                    time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopped; every process the demo started is gone")
    engine.dispose()
    if job is None or job["status"] not in EXIT_CODES:
        raise typer.Exit(1)


def _summary(
    engine: Engine, settings: Settings, trained: Any, job: dict[str, Any], sample: list[Any]
) -> None:
    from rich.table import Table

    table = Table("row", "prediction", "probability", title="a few predictions")
    for row in sample:
        label = (
            row["predicted_label"] if row["predicted_label"] is not None else row["predicted_value"]
        )
        probability = "" if row["probability"] is None else f"{row['probability']:.3f}"
        table.add_row(str(row["row_id"]), str(label), probability)
    console.print(table)
    console.rule("scorebox demo")
    console.print(f"model        {trained.tag} ({trained.info.task}, {trained.info.estimator})")
    console.print(f"metrics      {_metrics(trained.info.metrics)}")
    scored, total, failed = job["rows_scored"], job["rows_total"], job["rows_failed"]
    console.print(f"rows scored  {scored:,} of {total:,} (failed {failed:,})")
    console.print(f"report       {trained.report}")
    console.print(f"database     {engine.url.render_as_string(hide_password=True)}")
    console.print(f"predictions  table {settings.predictions_table}, job {job['id']}")
    console.print(
        f"service      {settings.service_url} (OpenAPI at {settings.service_url}/docs.json)"
    )
