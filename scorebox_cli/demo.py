"""`scorebox demo`: the whole flow on one machine with nothing to install — seed, migrate, train,
serve, score with a real Celery worker, summarise, and stop every process it started.

Without SCOREBOX_DATABASE_URL / SCOREBOX_REDIS_URL it uses a SQLite file and Celery's filesystem
broker under ``.scorebox-demo/``; with them, PostgreSQL and Redis.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, select

from scorebox.db import Tables, make_engine, reflect
from scorebox.encoding import json_value
from scorebox.migrate import create_database_if_missing, upgrade, wait_for_database
from scorebox.names import resolve_table
from scorebox.seed import seed
from scorebox.settings import Settings, settings_env
from scorebox_cli.processes import child_env, free_port, serving, working

DEMO_DIR = Path(".scorebox-demo")


def embedded(settings: Settings, directory: Path = DEMO_DIR) -> Settings:
    """``settings`` with a SQLite database and a filesystem broker where none was configured."""
    directory = directory.resolve()
    changes: dict[str, Any] = {}
    if "database_url" not in settings.model_fields_set:
        changes["database_url"] = f"sqlite:///{directory / 'scorebox.db'}"
    if "redis_url" not in settings.model_fields_set:
        changes["redis_url"] = "filesystem://localhost/"
        changes["broker_folder"] = directory / "broker"
    if "service_url" not in settings.model_fields_set:
        changes["service_url"] = f"http://127.0.0.1:{free_port(3000)}"
    return settings.model_copy(update=changes)


def _env(settings: Settings) -> dict[str, str]:
    env = child_env()
    return env | settings_env(settings)


@contextlib.contextmanager
def stack(
    settings: Settings, directory: Path, step: Callable[[str], None]
) -> Iterator[dict[str, str]]:
    """The service and one worker as local processes; both are stopped when the block ends."""
    env = _env(settings)
    logs = directory.resolve()
    port = urlsplit(settings.service_url).port
    step(f"starting the service on {settings.service_url} (log: {logs / 'service.log'})")
    with serving(env, logs / "service.log", port=port):
        step(f"starting a Celery worker (log: {logs / 'worker.log'})")
        (logs / "worker.log").unlink(missing_ok=True)
        with working(env, logs / "worker.log", concurrency=1):
            yield env


def prepare(settings: Settings, step: Callable[[str], None]) -> tuple[Engine, Any]:
    """Migrate, seed the example data and train; return the engine and the training result."""
    from training.train import train

    engine = make_engine(settings.database_url)
    create_database_if_missing(engine)
    wait_for_database(engine)
    step("migrating the schema")
    upgrade(engine, settings.predictions_table, settings.feature_table)
    step(f"seeding {settings.feature_table} with the example data")
    with engine.begin() as conn:
        seed(
            conn,
            settings.feature_table,
            id_column=settings.id_column,
            target_column=settings.target_column,
        )
    step("training and registering the model")
    return engine, train(settings, engine, step=step)


def sample_predictions(
    engine: Engine, settings: Settings, tag: str, n: int = 5
) -> list[dict[str, Any]]:
    """A few of the predictions the job wrote."""
    table = Tables.build(settings.predictions_table).predictions
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                table.c.row_id,
                table.c.predicted_label,
                table.c.predicted_value,
                table.c.probability,
            )
            .where(table.c.model_tag == tag)
            .order_by(table.c.row_id)
            .limit(n)
        ).mappings()
        return [dict(r) for r in rows]


def first_record(engine: Engine, settings: Settings, features: list[str]) -> dict[str, Any]:
    """The table's first row's features, as JSON would carry them to /predict."""
    with engine.connect() as conn:
        table = reflect(conn, resolve_table(conn, settings.feature_table, "SCOREBOX_FEATURE_TABLE"))
        row = conn.execute(
            select(*(table.c[f] for f in features)).order_by(table.c[settings.id_column]).limit(1)
        ).one()
    return {f: json_value(v) for f, v in zip(features, row, strict=True)}


def curl_command(settings: Settings, features: list[str], record: dict[str, Any]) -> str:
    """A curl call of /predict with a real record that works against the demo's service."""
    body = json.dumps({"records": [{f: record[f] for f in features}]})
    auth = " -H 'Authorization: Bearer $SCOREBOX_API_TOKEN'" if settings.api_token else ""
    return (
        f"curl -s -X POST {settings.service_url}/predict -H 'content-type: application/json'"
        f"{auth} -d '{body}'"
    )
