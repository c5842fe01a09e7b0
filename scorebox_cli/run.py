"""`scorebox demo`: the whole flow on this machine."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy import Engine

from scorebox.settings import Settings, get_settings
from scorebox_cli.app import (
    EPILOG,
    app,
    console,
    enqueuer,
    friendly,
    metrics_line,
    service_client,
)
from scorebox_cli.jobs import EXIT_CODES, watch


@app.command(epilog=EPILOG)
@friendly
def demo(
    keep_serving: Annotated[
        bool, typer.Option(help="Leave the service running after the job, until Ctrl-C.")
    ] = False,
) -> None:
    """Run the whole flow locally: migrate, seed, train, serve, batch-score, summarise.

    Uses a SQLite file and a filesystem broker under .scorebox-demo/ unless
    SCOREBOX_DATABASE_URL and SCOREBOX_REDIS_URL are set. Every process it starts is stopped
    on exit or Ctrl-C.
    """
    from scorebox_cli import demo as flow
    from worker.jobs import submit_job

    flow.DEMO_DIR.mkdir(exist_ok=True)
    settings = flow.embedded(get_settings())
    step = console.log
    engine, trained = flow.prepare(settings, step)
    console.print(f"registered [bold]{trained.tag}[/]; report: {trained.report}")
    job: dict[str, Any] | None = None
    try:
        with flow.stack(settings, flow.DEMO_DIR, step):
            client = service_client(settings)
            job_id = submit_job(engine, settings, client, enqueuer(settings))
            step(f"job {job_id} queued")
            job = watch(engine, settings, job_id)
            record = flow.first_record(engine, settings, trained.info.feature_names)
            sample = flow.sample_predictions(engine, settings, trained.tag)
            _summary(engine, settings, trained, job, sample)
            client.close()
            if keep_serving:
                curl = flow.curl_command(settings, trained.info.feature_names, record)
                console.print(f"try it: {curl}", highlight=False, markup=False, soft_wrap=True)
                console.print("service still running; press Ctrl-C to stop")
                while True:
                    time.sleep(3600)
            console.print(
                "the demo stopped its service and worker; `scorebox demo --keep-serving` leaves "
                "the service up and prints a curl command that calls it",
                highlight=False,
            )
    except KeyboardInterrupt:
        console.print("stopped; every process the demo started is gone")
    engine.dispose()
    if job is None or job["status"] not in EXIT_CODES:
        raise typer.Exit(1)


def _summary(
    engine: Engine, settings: Settings, trained: Any, job: dict[str, Any], sample: list[Any]
) -> None:
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
    console.print(f"metrics      {metrics_line(trained.info.metrics)}")
    scored, total, failed = job["rows_scored"], job["rows_total"], job["rows_failed"]
    console.print(f"rows scored  {scored:,} of {total:,} (failed {failed:,})")
    console.print(f"report       {trained.report}")
    console.print(f"database     {engine.url.render_as_string(hide_password=True)}")
    console.print(f"predictions  table {settings.predictions_table}, job {job['id']}")
    console.print(f"service      {settings.service_url} (how to call it: {settings.service_url}/)")
