"""Jobs: submitting (checking the table, planning chunks by key order), cancelling, resuming and
reading them. Plain functions over an engine; Celery only enters through the ``enqueue`` callable.

Lock order, everywhere a transaction takes more than one kind of row lock (writing a chunk,
claiming, cancelling, resuming, failing): prediction rows (in key order), then chunk rows (in
chunk order), then the job row. Keeping to it is what makes cancel safe against live workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, Table, func, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

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
ACTIVE = ("queued", "running")
# A job that scored every row it could; "succeeded_with_errors" when some rows failed.
FINISHED_OK = ("succeeded", "succeeded_with_errors")
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
        job_id = conn.execute(
            tables.jobs.insert()
            .values(
                table_name=str(name),
                model_tag=served,
                model_ref=model_tag,
                reference=reference,
                mode=mode,
                status="queued" if chunks else "succeeded",
                rows_total=total,
                id_column=settings.id_column,
                features=features,
                chunk_size=settings.chunk_size,
                chunks_total=len(chunks),
                finished_at=None if chunks else utcnow(),
                key_kind=key_kind,
                key_type=_sql_type(conn, name, settings.id_column),
                queue=queue,
                max_failed_rows=max_failed(max_failed_rows, total),
            )
            .returning(tables.jobs.c.id)
        ).scalar_one()
        if chunks:
            conn.execute(
                tables.chunks.insert(),
                [
                    {"job_id": job_id, "chunk_no": n, "id_lo": str(lo), "id_hi": str(hi)}
                    for n, (lo, hi, _) in enumerate(chunks)
                ],
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


def fail_job(conn: Connection, tables: Tables, job_id: int, error: str) -> None:
    """Mark an active job failed with ``error`` (one line); what its chunks wrote stays."""
    conn.execute(
        update(tables.jobs)
        .where(tables.jobs.c.id == job_id, tables.jobs.c.status.in_(ACTIVE))
        .values(status="failed", error=" ".join(error.split()), finished_at=utcnow())
    )


def _lock_chunks(conn: Connection, tables: Tables, job_id: int) -> None:
    """Lock a job's unfinished chunks in chunk order (see the lock order above)."""
    chunks = tables.chunks
    conn.execute(
        select(chunks.c.chunk_no)
        .where(chunks.c.job_id == job_id, chunks.c.status != "done")
        .order_by(chunks.c.chunk_no)
        .with_for_update()
    ).all()


def cancel_job(engine: Engine, settings: Settings, job_id: int) -> bool:
    """Stop a queued or running job; chunks not yet written are not written. True if cancelled."""
    tables = Tables.build(settings.predictions_table)
    get_job(engine, settings, job_id)
    with engine.begin() as conn:
        _lock_chunks(conn, tables, job_id)
        conn.execute(
            update(tables.chunks)
            .where(tables.chunks.c.job_id == job_id, tables.chunks.c.status != "done")
            .values(status="cancelled", lease_token=None, updated_at=utcnow())
        )
        done = conn.execute(
            update(tables.jobs)
            .where(tables.jobs.c.id == job_id, tables.jobs.c.status.in_(ACTIVE))
            .values(status="cancelled", finished_at=utcnow(), error="cancelled by user")
        ).rowcount
    return bool(done)


def resume_job(engine: Engine, settings: Settings, enqueue: Enqueue, job_id: int) -> int:
    """Queue again every chunk of a failed, cancelled or stalled job that is not done, on its
    deployment's queue as it is named now; return how many. Chunks already written are kept, so
    nothing is scored twice."""
    tables = Tables.build(settings.predictions_table)
    job = get_job(engine, settings, job_id)
    if job["status"] in FINISHED_OK:
        return 0
    queue = deployment_queue(settings, str(job["model_tag"]).partition(":")[0], engine)
    with engine.begin() as conn:
        _lock_chunks(conn, tables, job_id)
        chunks = [
            row[0]
            for row in conn.execute(
                update(tables.chunks)
                .where(tables.chunks.c.job_id == job_id, tables.chunks.c.status != "done")
                .values(
                    status="pending", lease_token=None, error=None, attempt=0, updated_at=utcnow()
                )
                .returning(tables.chunks.c.chunk_no)
            )
        ]
        conn.execute(
            update(tables.jobs)
            .where(tables.jobs.c.id == job_id)
            .values(
                status="running" if chunks else "succeeded",
                error=None,
                finished_at=None,
                queue=queue,
            )
        )
    for n in chunks:
        enqueue(job_id, n, queue)
    return len(chunks)


def get_job(engine: Engine, settings: Settings, job_id: int) -> dict[str, Any]:
    """A job's row, or a ScoreboxError naming the missing id."""
    jobs = Tables.build(settings.predictions_table).jobs
    if not 0 < job_id < 2**31:
        raise ScoreboxError(f"no job with id {job_id}")
    with engine.connect() as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
    if row is None:
        raise ScoreboxError(f"no job with id {job_id}")
    return dict(row)


LISTED = (
    "id",
    "status",
    "rows_scored",
    "rows_failed",
    "rows_total",
    "created_at",
    "table_name",
    "model_tag",
    "model_ref",
    "mode",
    "error",
    "queue",
)


def list_jobs(
    engine: Engine, settings: Settings, limit: int | None = 20
) -> tuple[Sequence[dict[str, Any]], int]:
    """The newest ``limit`` jobs first (every one with None), and how many there are."""
    jobs = Tables.build(settings.predictions_table).jobs
    query = select(*(jobs.c[c] for c in LISTED)).order_by(jobs.c.id.desc())
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(jobs)).scalar_one()
        rows = conn.execute(query if limit is None else query.limit(limit)).mappings()
        return [dict(r) for r in rows], int(total)


def failed_rows(
    engine: Engine, settings: Settings, job_id: int, limit: int = 20
) -> list[dict[str, Any]]:
    """Rows of a job that could not be scored, with the reason."""
    failed = Tables.build(settings.predictions_table).failed
    with engine.connect() as conn:
        rows = conn.execute(
            select(failed.c.row_id, failed.c.reason)
            .where(failed.c.job_id == job_id)
            .order_by(failed.c.row_id)
            .limit(limit)
        ).mappings()
        return [dict(r) for r in rows]


def job_drift(engine: Engine, settings: Settings, job_id: int) -> list[Drift] | None:
    """Each feature's drift (and the score's) over the rows a job scored so far, against its
    model's training profile; None when the model has no profile."""
    from scorebox.profile import drift, merge

    tables = Tables.build(settings.predictions_table)
    job = get_job(engine, settings, job_id)
    reference = job.get("reference")
    if not reference or not reference.get("profile"):
        return None
    with engine.connect() as conn:
        profiles = conn.execute(
            select(tables.chunks.c.profile).where(
                tables.chunks.c.job_id == job_id, tables.chunks.c.status == "done"
            )
        ).scalars()
        merged = merge(profiles)
    return drift(reference["profile"], merged)


def latest_job_id(engine: Engine, settings: Settings) -> int:
    """The newest job's id (a ScoreboxError when there is none)."""
    jobs = Tables.build(settings.predictions_table).jobs
    with engine.connect() as conn:
        found = conn.execute(select(func.max(jobs.c.id))).scalar()
    if found is None:
        raise ScoreboxError("no job yet; `scorebox score` queues one")
    return int(found)
