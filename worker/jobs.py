"""Jobs: submitting (checking the table, planning chunks by key order), cancelling, resuming and
reading them. Plain functions over an engine, each one transaction over the job ledger
(scorebox/ledger.py, which owns every statement on jobs and chunks and the lock order); Celery
only enters through the ``enqueue`` callable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, Table, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from scorebox import ledger
from scorebox.catalog import Catalog
from scorebox.db import Tables, reflect, utcnow
from scorebox.errors import ModelError, ScoreboxError
from scorebox.features import KeyKind, check_keys, resolve_key
from scorebox.names import TableName, require_column, resolve_table
from scorebox.profile import Drift
from scorebox.settings import Settings
from worker.celery_app import deployment_queue
from worker.client import ServiceClient
from worker.reading import read_as, unscored

log = logging.getLogger(__name__)

MODES = ("all", "new")
Enqueue = Callable[[int, int, str], None]


def plan(
    conn: Connection, source: Table, id_column: str, size: int, where: Any = None
) -> list[tuple[Any, Any, int]]:
    """Chunks of ``size`` rows in key order: (first key, last key, rows); keys of any orderable
    type. Every row: a keyset walk of the key's index, each step reading ``size`` entries past the
    previous chunk's start. Only the rows matching ``where`` (mode ``new``): one set-based pass
    (the database joins the table against the predictions once, not row by row) that returns
    just the keys opening and closing each chunk."""
    ids = source.c[id_column]
    if where is not None:
        return _plan_matching(conn, source, ids, size, where)
    lo = conn.execute(select(ids).order_by(ids).limit(1)).scalar()
    chunks: list[tuple[Any, Any, int]] = []
    while lo is not None:
        after = select(ids).where(ids >= lo).order_by(ids)
        ends = conn.execute(after.offset(size - 1).limit(2)).scalars().all()
        if ends:
            chunks.append((lo, ends[0], size))
            lo = ends[1] if len(ends) == 2 else None
            continue
        rest = select(func.count()).select_from(source).where(ids >= lo)
        last = conn.execute(select(ids).where(ids >= lo).order_by(ids.desc()).limit(1))
        chunks.append((lo, last.scalar_one(), conn.execute(rest).scalar_one()))
        lo = None
    return chunks


def _plan_matching(
    conn: Connection, source: Table, ids: Any, size: int, where: Any
) -> list[tuple[Any, Any, int]]:
    numbered = (
        select(
            ids.label("id"),
            (func.row_number().over(order_by=ids) - 1).label("n"),
            func.count().over().label("total"),
        )
        .where(where)
        .subquery()
    )
    n, total = numbered.c.n, numbered.c.total
    bounds = conn.execute(
        select(numbered.c.id, n, total)
        .where((n % size == 0) | (n % size == size - 1) | (n == total - 1))
        .order_by(n)
    ).all()
    chunks: list[tuple[Any, Any, int]] = []
    for key, position, count in bounds:
        if position % size == 0:
            chunks.append((key, key, min(size, count - position)))
        else:
            chunks[-1] = (chunks[-1][0], key, chunks[-1][2])
    return chunks


def max_failed(limit: str | None, rows: int) -> int | None:
    """``--max-failed-rows``: a count (``100``), a fraction (``0.01``) or a percentage (``1%``)
    of the job's rows, as a number of rows; ``None`` means no limit."""
    if limit is None:
        return None
    text_value = limit.strip()
    try:
        if text_value.endswith("%"):
            share = float(text_value[:-1]) / 100
        elif "." in text_value:
            share = float(text_value)
        else:
            count = int(text_value)
            if count < 0:
                raise ValueError
            return count
    except ValueError:
        raise ScoreboxError(
            f"--max-failed-rows {limit!r}: give a count (100), a fraction (0.01) or a "
            "percentage (1%)"
        ) from None
    if not 0 <= share <= 1:
        raise ScoreboxError(f"--max-failed-rows {limit!r}: a share must be between 0 and 1")
    return int(share * rows)


def submit_job(
    engine: Engine,
    settings: Settings,
    client: ServiceClient,
    enqueue: Enqueue,
    *,
    table: str | None = None,
    model_tag: str | None = None,
    mode: str = "all",
    max_failed_rows: str | None = None,
) -> int:
    """Check the table against the served model, record a job and its chunks, queue the chunks
    and return the job id."""
    if mode not in MODES:
        raise ScoreboxError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    described = client.describe()
    served = str(described["tag"])
    model_name = served.partition(":")[0]
    # The deployment of the served model: its workers share the service's model name.
    queue = deployment_queue(settings, model_name, engine)
    features_of = described["features"]
    catalog = Catalog.from_settings(settings, engine)
    if model_tag is not None:
        # Pinned at submission: an alias or `latest` is resolved once, here.
        served = _pinned_version(catalog, model_name, model_tag, client.base_url)
        if served != described["tag"]:
            features_of = [f.to_dict() for f in catalog.info(served).features]
    reference = _reference(catalog, served)
    tables = Tables.build(settings.predictions_table)
    with engine.begin() as conn:
        name = resolve_table(conn, settings.feature_table if table is None else table, "--table")
        source = reflect(conn, name)
        columns = [str(c.name) for c in source.columns]
        key_kind: KeyKind = resolve_key(source, name, settings.id_column)
        for feature in features_of:
            require_column(feature["name"], columns, name, f"a feature of model {served}")
        features = [
            {
                "name": f["name"],
                "kind": f["kind"],
                "read": read_as(f["kind"], source.c[f["name"]].type),
            }
            for f in features_of
        ]
        check_keys(conn, source, name, settings.id_column)
        where = None
        if mode == "new":
            where = unscored(source, settings.id_column, tables.predictions, str(name), served)
            if conn.dialect.name == "postgresql":  # room to hash the table's predictions once
                conn.execute(text("SET LOCAL work_mem = '256MB'"))
        chunks = plan(conn, source, settings.id_column, settings.chunk_size, where)
        total = sum(rows for _, _, rows in chunks)
        job_id = ledger.record(
            conn,
            tables,
            {
                "table_name": str(name),
                "model_tag": served,
                "model_ref": model_tag,
                "reference": reference,
                "mode": mode,
                "status": "queued" if chunks else "succeeded",
                "rows_total": total,
                "id_column": settings.id_column,
                "features": features,
                "chunk_size": settings.chunk_size,
                "chunks_total": len(chunks),
                "finished_at": None if chunks else utcnow(),
                "key_kind": key_kind,
                "key_type": _sql_type(conn, name, settings.id_column),
                "queue": queue,
                "max_failed_rows": max_failed(max_failed_rows, total),
            },
            [(lo, hi) for lo, hi, _ in chunks],
        )
    for n in range(len(chunks)):
        enqueue(job_id, n, queue)
    log.info("job %s: %s rows of %s in %s chunks", job_id, total, name, len(chunks))
    return int(job_id)


def _sql_type(conn: Connection, name: TableName, column: str) -> str | None:
    """The column's type as PostgreSQL writes it (``bigint``, ``uuid``, ``"s".island``)."""
    if conn.dialect.name != "postgresql":
        return None
    quote = conn.dialect.identifier_preparer.quote_identifier
    table = ".".join(quote(part) for part in (name.schema, name.name) if part is not None)
    return conn.execute(
        text(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = CAST(:table AS regclass) AND attname = :column"
        ),
        {"table": table, "column": column},
    ).scalar_one()


def _pinned_version(catalog: Catalog, name: str, ref: str, service_url: str) -> str:
    """The exact version of model ``name`` that ``ref`` (an alias, ``latest`` or a version,
    with or without ``name:``) names now; it must be signed by a trusted key."""
    given = ref.partition(":")[0] if ":" in ref else name
    if given != name:
        raise ScoreboxError(
            f"--model {ref}: the service at {service_url} serves model {name}; score with one of "
            f"its versions or aliases (`scorebox models list`), or serve {given}"
        )
    tag = catalog.resolve(name, ref).tag
    if tag.partition(":")[0] != name:
        raise ScoreboxError(
            f"--model {ref}: it points at {tag[:200]}, a version of another model; the service "
            f"at {service_url} serves {name}"
        )
    try:
        catalog.info(tag)  # it must exist, verify and be readable
    except ModelError as exc:
        raise ModelError(f"--model: {exc}") from None
    return tag


def _reference(catalog: Catalog, tag: str) -> dict[str, Any] | None:
    """What the job's chunks need to count their rows for drift: the model's features and its
    training profile (None for a model without one)."""
    try:
        info = catalog.info(tag)
    except (ScoreboxError, DBAPIError) as exc:  # drift is worth a warning, not a failed job
        log.warning("job of %s: no training profile, so no drift: %s", tag, exc)
        return None
    if not info.profile:
        return None
    return {
        "task": info.task,
        "classes": info.classes,
        "features": [f.to_dict() for f in info.features],
        "profile": info.profile,
    }


def cancel_job(engine: Engine, settings: Settings, job_id: int) -> bool:
    """Stop a queued or running job; chunks not yet written are not written. True if cancelled."""
    tables = Tables.build(settings.predictions_table)
    with engine.begin() as conn:
        ledger.get(conn, tables, job_id)
        return ledger.cancel(conn, tables, job_id)


def resume_job(engine: Engine, settings: Settings, enqueue: Enqueue, job_id: int) -> int:
    """Queue again every chunk of a failed, cancelled or stalled job that is not done, on its
    deployment's queue as it is named now; return how many. Chunks already written are kept, so
    nothing is scored twice."""
    tables = Tables.build(settings.predictions_table)
    job = get_job(engine, settings, job_id)
    if job["status"] in ledger.FINISHED_OK:
        return 0
    queue = deployment_queue(settings, str(job["model_tag"]).partition(":")[0], engine)
    with engine.begin() as conn:
        chunks = ledger.reopen(conn, tables, job_id, queue)
    for n in chunks:
        enqueue(job_id, n, queue)
    return len(chunks)


def get_job(engine: Engine, settings: Settings, job_id: int) -> dict[str, Any]:
    """A job's row, or a ScoreboxError naming the missing id."""
    with engine.connect() as conn:
        return ledger.get(conn, Tables.build(settings.predictions_table), job_id)


def list_jobs(
    engine: Engine, settings: Settings, limit: int | None = 20
) -> tuple[list[dict[str, Any]], int]:
    """The newest ``limit`` jobs first (every one with None), and how many there are."""
    with engine.connect() as conn:
        return ledger.listing(conn, Tables.build(settings.predictions_table), limit)


def failed_rows(
    engine: Engine, settings: Settings, job_id: int, limit: int = 20
) -> list[dict[str, Any]]:
    """Rows of a job that could not be scored, with the reason."""
    with engine.connect() as conn:
        return ledger.failed_rows(conn, Tables.build(settings.predictions_table), job_id, limit)


def job_drift(engine: Engine, settings: Settings, job_id: int) -> list[Drift] | None:
    """Each feature's drift (and the score's) over the rows a job scored so far, against its
    model's training profile, judged at SCOREBOX_DRIFT_WARN; None when the model has no
    profile."""
    from scorebox.profile import drift, merge

    tables = Tables.build(settings.predictions_table)
    with engine.connect() as conn:
        job = ledger.get(conn, tables, job_id)
        reference = job.get("reference")
        if not reference or not reference.get("profile"):
            return None
        merged = merge(ledger.done_profiles(conn, tables, job_id))
    return drift(reference["profile"], merged, settings.drift_warn)


def latest_job_id(engine: Engine, settings: Settings) -> int:
    """The newest job's id (a ScoreboxError when there is none)."""
    with engine.connect() as conn:
        return ledger.latest_id(conn, Tables.build(settings.predictions_table))
