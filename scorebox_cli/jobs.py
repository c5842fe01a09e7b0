"""Batch scoring from the command line: `score`, and `jobs list | show | cancel | resume`."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.padding import Padding
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text
from sqlalchemy import Engine

from scorebox.errors import ScoreboxError
from scorebox.profile import SCORE
from scorebox.settings import Settings, get_settings
from scorebox_cli.app import (
    EPILOG,
    app,
    console,
    enqueuer,
    err,
    friendly,
    jobs_app,
    ready_engine,
    service_client,
)

# `scorebox score --wait` exits with how the job ended (README, "Score whole tables").
EXIT_CODES = {"succeeded": 0, "succeeded_with_errors": 3}


@app.command(epilog=EPILOG)
@friendly
def score(
    table: Annotated[
        str | None,
        typer.Option(help="The table to score.", show_default="SCOREBOX_FEATURE_TABLE"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="The version to score with: an alias (`challenger`), `latest` or a version "
            "(`name:version`) of the model the service serves; resolved once, so every chunk "
            "uses that exact version.",
            show_default="the one the service serves",
        ),
    ] = None,
    mode: Annotated[
        str, typer.Option(help="`all`: every row; `new`: rows without a prediction yet.")
    ] = "all",
    wait: Annotated[
        bool, typer.Option(help="Follow the job until it ends; the exit status tells how.")
    ] = False,
    max_failed_rows: Annotated[
        str | None,
        typer.Option(
            help="Fail the job once more rows than this failed: a count (100), a fraction "
            "(0.01) or a percentage (1%).",
            show_default="no limit",
        ),
    ] = None,
) -> None:
    """Queue a batch-scoring job and print its id (the workers do the scoring).

    With `--wait` the exit status tells how the job ended: **0** every row scored, **3** it
    finished but some rows failed (`scorebox jobs show ID` lists them), **1** the job failed or
    was cancelled (or this command failed).
    """
    from worker.jobs import submit_job

    settings = get_settings()
    engine = ready_engine(settings, tables=True)
    job_id = submit_job(
        engine,
        settings,
        service_client(settings),
        enqueuer(settings),
        table=table,
        model_tag=model,
        mode=mode,
        max_failed_rows=max_failed_rows,
    )
    console.print(f"job {job_id} queued")
    say_if_nobody_reads(engine, settings, job_id)
    if wait:
        raise typer.Exit(EXIT_CODES.get(watch(engine, settings, job_id)["status"], 1))


def say_if_nobody_reads(engine: Engine, settings: Settings, job_id: int) -> None:
    """Warn when no worker has announced that it reads the job's queue (workers announce
    themselves every few seconds; one that is starting is given a few seconds)."""
    import redis

    from worker.health import ANNOUNCED, consumers
    from worker.jobs import get_job

    if not settings.redis_url.startswith(("redis://", "rediss://")):
        return  # the embedded broker of `scorebox demo` starts its own worker
    queue = str(get_job(engine, settings, job_id)["queue"])
    try:
        with redis.Redis.from_url(settings.redis_url, socket_timeout=5) as broker:
            deadline = time.monotonic() + 6
            while not consumers(broker, queue):
                if time.monotonic() > deadline:
                    err.print(
                        Text.assemble(
                            ("warning: ", "bold yellow"),
                            f"no worker has read queue {queue} in the last {ANNOUNCED} s, so job "
                            f"{job_id} waits. Start one with `celery -A worker worker` and the "
                            "same SCOREBOX_DATABASE_URL, SCOREBOX_REDIS_URL and "
                            "SCOREBOX_MODEL_NAME (workers of another database or model read "
                            "another queue)",
                        )
                    )
                    return
                time.sleep(1)
    except redis.RedisError:
        return  # the broker itself is away: enqueuing said so already


def watch(engine: Engine, settings: Settings, job_id: int) -> dict[str, Any]:
    """Follow a job until it ends (a progress bar in a terminal, a line every 10 s in a pipe);
    return its final row."""
    from worker.jobs import get_job

    job = get_job(engine, settings, job_id)
    if job["rows_total"] == 0:
        console.print(f"job {job_id}: nothing to score ({_empty_reason(job)})", highlight=False)
        return job
    columns = (
        TextColumn(f"job {job_id}"),
        BarColumn(bar_width=20),
        TextColumn("{task.completed:,}/{task.total:,} rows"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    started = last_line = time.monotonic()
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("score", total=job["rows_total"], rate="")
        while True:
            job = get_job(engine, settings, job_id)
            done = job["rows_scored"] + job["rows_failed"]
            rate = done / max(time.monotonic() - started, 1e-6)
            progress.update(task, completed=done, rate=f"{rate:,.0f} rows/s")
            if not console.is_terminal and time.monotonic() - last_line > 10:
                console.print(f"job {job_id}: {done:,}/{job['rows_total']:,} rows, {rate:,.0f}/s")
                last_line = time.monotonic()
            if job["status"] not in ("queued", "running"):
                break
            time.sleep(0.5)
    print_job(job)
    return job


def _empty_reason(job: dict[str, Any]) -> str:
    if job["mode"] == "new":
        return f"every row of {job['table_name']} already has a prediction from {job['model_tag']}"
    return f"{job['table_name']} has no rows"


def print_job(job: dict[str, Any]) -> None:
    """A job's outcome in two lines: counts, then where (and its error, if any)."""
    console.print(
        Text.assemble(
            f"job {job['id']}: ",
            (job["status"], "bold"),
            f" - {job['rows_scored']:,} scored, {job['rows_failed']:,} failed of "
            f"{job['rows_total']:,} rows ({job['table_name']}, {job['model_tag']}"
            + (f" as {job['model_ref']}" if job.get("model_ref") else "")
            + f", mode {job['mode']})",
        )
    )
    if job["error"]:
        console.print(Text(f"error: {job['error']}"))


def _utc(moment: datetime) -> datetime:
    """A stored time in UTC (SQLite gives it back without a zone: it was stored in UTC)."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


@jobs_app.command("list", epilog=EPILOG)
@friendly
def jobs_list(
    limit: Annotated[int, typer.Option(help="How many, newest first.", min=1)] = 20,
    every: Annotated[bool, typer.Option("--all", help="Every job, however many.")] = False,
) -> None:
    """List recent jobs: two lines each in a terminal (it fits 80 columns), tab-separated with
    every field whole when the output is not a terminal."""
    from worker import schedule
    from worker.celery_app import deployment_queue
    from worker.jobs import list_jobs

    settings = get_settings()
    engine = ready_engine(settings, tables=True)
    jobs, total = list_jobs(engine, settings, None if every else limit)
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
            where = Text(f"{job['table_name']} · {job['model_tag']} · {job['mode']}", style="dim")
            console.print(Padding(where, (0, 0, 0, 6)), soft_wrap=False)
    if len(jobs) < total:
        err.print(f"{len(jobs)} newest of {total:,} jobs; --all lists every one", highlight=False)
    last = None
    if settings.schedule_cron:
        last = schedule.last(settings, deployment_queue(settings, engine=engine))
    if last is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(last["at"]))
        if last["error"]:
            err.print(Text(f"last scheduled run ({when} UTC) failed: {last['error']}"))
        else:
            console.print(f"last scheduled run ({when} UTC): job {last['job_id']}")


@jobs_app.command("show", epilog=EPILOG)
@friendly
def jobs_show(job_id: int) -> None:
    """Show one job, with the first rows that could not be scored and why."""
    from worker.jobs import failed_rows, get_job, job_drift

    settings = get_settings()
    engine = ready_engine(settings, tables=True)
    print_job(get_job(engine, settings, job_id))
    for row in failed_rows(engine, settings, job_id):
        console.print(Text(f"  row {row['row_id']}: {row['reason']}"))
    found = job_drift(engine, settings, job_id)
    if found is None:
        return
    warn = settings.drift_warn
    drifted = [d for d in found if d.drifted(warn)]
    unjudged = [d for d in found if d.psi > warn and not d.drifted(warn)]
    if unjudged:
        console.print(
            f"drift: {len(unjudged)} past PSI {warn:g} from too few rows to judge yet "
            f"(`scorebox drift {job_id}`)"
        )
    if not drifted and not unjudged:
        console.print(
            f"drift: no feature past PSI {settings.drift_warn:g} (`scorebox drift {job_id}`)"
        )
    for d in drifted:
        what = "score" if d.name == SCORE else d.name
        console.print(
            Text.assemble(
                ("drift: ", "bold yellow"),
                f"{what}: PSI {d.psi:.3f} > {settings.drift_warn:g} (SCOREBOX_DRIFT_WARN)",
            )
        )


@app.command(epilog=EPILOG)
@friendly
def drift(
    job_id: Annotated[int | None, typer.Argument(help="The job; default: the newest.")] = None,
) -> None:
    """How far the rows a job scored drifted from the model's training data: per feature the
    population stability index (PSI) over training's bins, missing values then and now, and
    the share of categories never seen in training; then the model's score. Features past
    SCOREBOX_DRIFT_WARN are flagged."""
    from worker.jobs import job_drift, latest_job_id

    settings = get_settings()
    engine = ready_engine(settings, tables=True)
    job_id = job_id if job_id is not None else latest_job_id(engine, settings)
    found = job_drift(engine, settings, job_id)
    if found is None:
        raise ScoreboxError(
            f"job {job_id}'s model has no training profile (trained by an older scorebox); "
            "retrain it to see drift"
        )
    rows = max((d.rows for d in found), default=0)
    console.print(f"job {job_id}: drift of {rows:,} scored rows against training", highlight=False)
    width = max([len(d.name) for d in found] + [7])
    console.print(
        f"{'FEATURE':<{width}}  {'KIND':<8}  {'PSI':>7}  {'MISSING THEN/NOW':>17}  {'UNSEEN':>6}",
        style="bold",
        highlight=False,
    )
    for d in found:
        flag = ""
        if d.drifted(settings.drift_warn):
            flag = "  drifted"
        elif d.psi > settings.drift_warn:
            flag = f"  too few rows to judge (needs {d.needed:,})"
        name = "(score)" if d.name == SCORE else d.name
        missing = f"{d.missing_then:.1%}/{d.missing_now:.1%}"
        console.print(
            f"{name:<{width}}  {d.kind:<8}  {d.psi:>7.3f}  {missing:>17}  "
            f"{d.unseen_now:>6.1%}{flag}",
            highlight=False,
        )


@jobs_app.command("cancel", epilog=EPILOG)
@friendly
def jobs_cancel(job_id: int) -> None:
    """Stop a job: chunks not yet written are not written; what was written stays."""
    from worker.jobs import cancel_job

    settings = get_settings()
    if cancel_job(ready_engine(settings, tables=True), settings, job_id):
        console.print(f"job {job_id} cancelled")
    else:
        console.print(f"job {job_id} had already ended")


@jobs_app.command("resume", epilog=EPILOG)
@friendly
def jobs_resume(job_id: int) -> None:
    """Queue again the chunks of a failed, cancelled or stalled job that are not done."""
    from worker.jobs import resume_job

    settings = get_settings()
    engine = ready_engine(settings, tables=True)
    count = resume_job(engine, settings, enqueuer(settings), job_id)
    console.print(f"job {job_id}: {count} chunk(s) queued again")
    if count:
        say_if_nobody_reads(engine, settings, job_id)
