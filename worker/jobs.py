"""Jobs: submitting (planning chunks by id range), cancelling, resuming and reading them.

Plain functions over a connection or engine; Celery only enters through the ``enqueue`` callable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, Table, and_, exists, func, select, true, update
from sqlalchemy.engine import Connection

from scorebox.db import (
    CHUNKS_TABLE,
    FAILED_ROWS_TABLE,
    JOBS_TABLE,
    build_metadata,
    predictions_table,
    reflect_table,
    utcnow,
)
from scorebox.errors import DataError, ScoreboxError
from scorebox.settings import Settings, check_identifier
from worker.client import ServiceClient

log = logging.getLogger(__name__)

MODES = ("all", "new")
ACTIVE = ("queued", "running")
Enqueue = Callable[[int, int], None]


class Tables:
    """scorebox's own tables for ``settings``."""

    def __init__(self, settings: Settings) -> None:
        metadata = build_metadata(settings.predictions_table)
        self.jobs = metadata.tables[JOBS_TABLE]
        self.chunks = metadata.tables[CHUNKS_TABLE]
        self.failed = metadata.tables[FAILED_ROWS_TABLE]
        self.predictions = predictions_table(metadata, settings.predictions_table)


def unscored(source: Table, id_column: str, predictions: Table, model_tag: str) -> Any:
    """SQL condition: the row has no prediction for ``model_tag`` yet."""
    return ~exists().where(
        and_(predictions.c.row_id == source.c[id_column], predictions.c.model_tag == model_tag)
    )


def _plan(
    conn: Connection, source: Table, id_column: str, size: int, where: Any
) -> list[tuple[int, int]]:
    """Chunk id ranges of ``size`` rows each (keyset boundaries, not OFFSET)."""
    ids = source.c[id_column]
    numbered = select(ids.label("id"), func.row_number().over(order_by=ids).label("n")).where(where)
    numbered_sub = numbered.subquery()
    starts = [
        row[0]
        for row in conn.execute(
            select(numbered_sub.c.id)
            .where((numbered_sub.c.n - 1) % size == 0)
            .order_by(numbered_sub.c.id)
        )
    ]
    if not starts:
        return []
    last = conn.execute(select(func.max(ids)).where(where)).scalar_one()
    return [
        (lo, (starts[i + 1] - 1) if i + 1 < len(starts) else last) for i, lo in enumerate(starts)
    ]


def submit_job(
    engine: Engine,
    settings: Settings,
    client: ServiceClient,
    enqueue: Enqueue,
    *,
    table: str | None = None,
    model_tag: str | None = None,
    mode: str = "all",
) -> int:
    """Record a job and its chunks, queue the chunks, and return the job id."""
    if mode not in MODES:
        raise ScoreboxError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    table_name = check_identifier(table or settings.feature_table, "table name")
    described = client.describe()
    served = str(described["tag"])
    if model_tag is not None and model_tag != served:
        raise ScoreboxError(
            f"the service at {client.base_url} serves {served}, not {model_tag}; "
            "serve that model (SCOREBOX_MODEL_TAG) or score with the served one"
        )
    features: list[str] = list(described["features"])
    tables = Tables(settings)
    with engine.begin() as conn:
        source = reflect_table(conn, table_name)
        missing = [c for c in [settings.id_column, *features] if c not in source.c]
        if missing:
            raise DataError(
                f"table {table_name!r} lacks column(s) that model {served} needs: "
                + ", ".join(missing)
            )
        where = (
            unscored(source, settings.id_column, tables.predictions, served)
            if mode == "new"
            else true()
        )
        total = conn.execute(select(func.count()).select_from(source).where(where)).scalar_one()
        ranges = _plan(conn, source, settings.id_column, settings.chunk_size, where)
        job_id = conn.execute(
            tables.jobs.insert()
            .values(
                table_name=table_name,
                model_tag=served,
                mode=mode,
                status="queued" if ranges else "succeeded",
                rows_total=total,
                id_column=settings.id_column,
                features=features,
                chunk_size=settings.chunk_size,
                chunks_total=len(ranges),
                finished_at=None if ranges else utcnow(),
            )
            .returning(tables.jobs.c.id)
        ).scalar_one()
        if ranges:
            conn.execute(
                tables.chunks.insert(),
                [
                    {"job_id": job_id, "chunk_no": n, "id_lo": lo, "id_hi": hi}
                    for n, (lo, hi) in enumerate(ranges)
                ],
            )
    for n in range(len(ranges)):
        enqueue(job_id, n)
    log.info("job %s: %s rows of %s in %s chunks", job_id, total, table_name, len(ranges))
    return int(job_id)


def fail_job(conn: Connection, tables: Tables, job_id: int, error: str) -> None:
    """Mark an active job failed with ``error``; what its chunks wrote stays."""
    conn.execute(
        update(tables.jobs)
        .where(tables.jobs.c.id == job_id, tables.jobs.c.status.in_(ACTIVE))
        .values(status="failed", error=error, finished_at=utcnow())
    )


def cancel_job(engine: Engine, settings: Settings, job_id: int) -> bool:
    """Stop a queued or running job; chunks not yet written are not written. True if cancelled."""
    tables = Tables(settings)
    get_job(engine, settings, job_id)
    with engine.begin() as conn:
        done = conn.execute(
            update(tables.jobs)
            .where(tables.jobs.c.id == job_id, tables.jobs.c.status.in_(ACTIVE))
            .values(status="cancelled", finished_at=utcnow(), error="cancelled by user")
        ).rowcount
        conn.execute(
            update(tables.chunks)
            .where(tables.chunks.c.job_id == job_id, tables.chunks.c.status != "done")
            .values(status="cancelled", lease_token=None, updated_at=utcnow())
        )
    return bool(done)


def resume_job(engine: Engine, settings: Settings, enqueue: Enqueue, job_id: int) -> int:
    """Queue again every chunk of a failed, cancelled or stalled job that is not done; return how
    many. Chunks already written are kept, so nothing is scored twice."""
    tables = Tables(settings)
    if get_job(engine, settings, job_id)["status"] == "succeeded":
        return 0
    with engine.begin() as conn:
        chunks = [
            row[0]
            for row in conn.execute(
                update(tables.chunks)
                .where(tables.chunks.c.job_id == job_id, tables.chunks.c.status != "done")
                .values(status="pending", lease_token=None, error=None, updated_at=utcnow())
                .returning(tables.chunks.c.chunk_no)
            )
        ]
        conn.execute(
            update(tables.jobs)
            .where(tables.jobs.c.id == job_id)
            .values(status="running" if chunks else "succeeded", error=None, finished_at=None)
        )
    for n in chunks:
        enqueue(job_id, n)
    return len(chunks)


def get_job(engine: Engine, settings: Settings, job_id: int) -> dict[str, Any]:
    """A job's row, or a ScoreboxError naming the missing id."""
    jobs = Tables(settings).jobs
    with engine.connect() as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
    if row is None:
        raise ScoreboxError(f"no job with id {job_id}")
    return dict(row)


def list_jobs(engine: Engine, settings: Settings, limit: int = 20) -> Sequence[dict[str, Any]]:
    """The newest jobs first."""
    jobs = Tables(settings).jobs
    with engine.connect() as conn:
        rows = conn.execute(select(jobs).order_by(jobs.c.id.desc()).limit(limit)).mappings()
        return [dict(r) for r in rows]


def failed_rows(
    engine: Engine, settings: Settings, job_id: int, limit: int = 20
) -> list[dict[str, Any]]:
    """Rows of a job the service refused, with the reason."""
    failed = Tables(settings).failed
    with engine.connect() as conn:
        rows = conn.execute(
            select(failed.c.row_id, failed.c.reason)
            .where(failed.c.job_id == job_id)
            .order_by(failed.c.row_id)
            .limit(limit)
        ).mappings()
        return [dict(r) for r in rows]
