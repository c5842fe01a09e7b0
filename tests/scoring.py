"""Helpers for tests that run batch-scoring jobs."""

from __future__ import annotations

import time
from typing import Any

import bentoml
import pandas as pd
import psycopg
from sqlalchemy import Engine, text

from scorebox import ledger
from scorebox.db import Tables
from scorebox.settings import Settings
from tests.conftest import TrainedModel, process_env
from worker.jobs import get_job


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return process_env(
        settings,
        SCOREBOX_REDIS_URL=settings.redis_url,
        SCOREBOX_SERVICE_URL=settings.service_url,
        SCOREBOX_CHUNK_SIZE=str(settings.chunk_size),
        **extra,
    )


def wait_for(
    engine: Engine, settings: Settings, job_id: int, timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = get_job(engine, settings, job_id)
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        time.sleep(0.3)


def predictions(engine: Engine) -> pd.DataFrame:
    """The predictions table, for tables keyed by integers (row_id back as int, in id order)."""
    frame = pd.read_sql(text("SELECT * FROM predictions"), engine)
    frame["row_id"] = frame["row_id"].astype("int64")
    return frame.sort_values("row_id", ignore_index=True)


def expected_from_model(settings: Settings, trained: TrainedModel) -> pd.DataFrame:
    """The model's own predict_proba on the table, read straight through psycopg."""
    dsn = settings.database_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM features ORDER BY id")
        frame = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description or []])
    proba = bentoml.sklearn.load_model(trained.tag).predict_proba(
        frame[trained.info.feature_names].astype(float)
    )
    return pd.DataFrame({"row_id": frame["id"], "p1": proba[:, 1]})


def assert_exactly_once(engine: Engine, settings: Settings, job_id: int, rows: int) -> None:
    job = get_job(engine, settings, job_id)
    with engine.connect() as conn:
        tables = Tables.build(settings.predictions_table)
        count, distinct = ledger.written(conn, tables, job["table_name"], job["model_tag"])
    assert count == distinct == rows
    assert job["rows_scored"] + job["rows_failed"] == job["rows_total"] == rows
