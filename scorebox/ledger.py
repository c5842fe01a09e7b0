"""The job ledger: every statement on scorebox_jobs, scorebox_chunks and scorebox_failed_rows, as
data functions that take the caller's connection (the caller owns the transaction). The worker,
the CLI and the dashboard read and write jobs only through here.

Lock order, everywhere a transaction takes more than one kind of row lock (writing a chunk,
claiming, cancelling, resuming, failing): prediction rows (in key order), then chunk rows (in
chunk order), then the job row. Keeping to it is what makes cancel safe against live workers.

The dashboard reads the ledger with asyncpg on a read-only connection; its statements
(``DASHBOARD_*``) live here too, and tests compare what they read with :func:`get`,
:func:`failed_rows` and :func:`done_profiles`.

A chunk's write is fenced: its predictions and its completion commit only if its lease is still
the writer's and unexpired (:func:`finish_chunk`). The worker's fast path on PostgreSQL writes
through ADBC, not SQLAlchemy; its statements are :data:`ADBC_FINISH` here, beside the portable
ones, and tests run both on the same ledgers and compare what they leave.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    Text,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection

from scorebox.db import CHUNKS_TABLE, FAILED_ROWS_TABLE, JOBS_TABLE, Tables, insert_for, utcnow
from scorebox.errors import ScoreboxError

ACTIVE = ("queued", "running")
# A job that scored every row it could; "succeeded_with_errors" when some rows failed.
FINISHED_OK = ("succeeded", "succeeded_with_errors")


@dataclass(frozen=True)
class Lease:
    """The chunk a write belongs to and the token that must still hold it."""

    job_id: int
    chunk_no: int
    token: str
    table_name: str
    model_tag: str


@dataclass(frozen=True)
class Claim:
    """A chunk leased to this worker."""

    job_id: int
    chunk_no: int
    id_lo: str
    id_hi: str
    token: str
    attempt: int
    job: dict[str, Any]

    @property
    def lease(self) -> Lease:
        """What the write must still hold."""
        return Lease(
            self.job_id, self.chunk_no, self.token, self.job["table_name"], self.job["model_tag"]
        )


def _now(conn: Connection) -> Any:
    """The database's clock (PostgreSQL), or this machine's where there is no server (SQLite)."""
    return func.clock_timestamp() if conn.dialect.name == "postgresql" else literal(utcnow())


def _in(conn: Connection, seconds: float) -> Any:
    """The database's clock ``seconds`` from now (negative: ago)."""
    if conn.dialect.name == "postgresql":
        return func.clock_timestamp() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)
    return literal(utcnow() + timedelta(seconds=seconds))


# --- recording and reading jobs ----------------------------------------------------------


def record(
    conn: Connection, tables: Tables, job: dict[str, Any], ranges: Sequence[tuple[Any, Any]]
) -> int:
    """Record a job (its column values) and its chunks (first and last key of each); its id."""
    job_id = int(
        conn.execute(tables.jobs.insert().values(**job).returning(tables.jobs.c.id)).one()[0]
    )
    if ranges:
        conn.execute(
            tables.chunks.insert(),
            [
                {"job_id": job_id, "chunk_no": n, "id_lo": str(lo), "id_hi": str(hi)}
                for n, (lo, hi) in enumerate(ranges)
            ],
        )
    return job_id


def get(conn: Connection, tables: Tables, job_id: int) -> dict[str, Any]:
    """A job's row, or a ScoreboxError naming the missing id."""
    if not 0 < job_id < 2**31:
        raise ScoreboxError(f"no job with id {job_id}")
    row = conn.execute(select(tables.jobs).where(tables.jobs.c.id == job_id)).mappings().first()
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
    "started_at",
    "finished_at",
    "table_name",
    "model_tag",
    "model_ref",
    "mode",
    "error",
    "queue",
)


def listing(
    conn: Connection, tables: Tables, limit: int | None = 20
) -> tuple[list[dict[str, Any]], int]:
    """The newest ``limit`` jobs first (every one with None), and how many there are."""
    jobs = tables.jobs
    query = select(*(jobs.c[c] for c in LISTED)).order_by(jobs.c.id.desc())
    total = conn.execute(select(func.count()).select_from(jobs)).scalar_one()
    rows = conn.execute(query if limit is None else query.limit(limit)).mappings()
    return [dict(r) for r in rows], int(total)


def latest_id(conn: Connection, tables: Tables) -> int:
    """The newest job's id (a ScoreboxError when there is none)."""
    found = conn.execute(select(func.max(tables.jobs.c.id))).scalar()
    if found is None:
        raise ScoreboxError("no job yet; `scorebox score` queues one")
    return int(found)


def failed_rows(
    conn: Connection, tables: Tables, job_id: int, limit: int = 20
) -> list[dict[str, Any]]:
    """Rows of a job that could not be scored, with the reason."""
    failed = tables.failed
    rows = conn.execute(
        select(failed.c.row_id, failed.c.reason)
        .where(failed.c.job_id == job_id)
        .order_by(failed.c.row_id)
        .limit(limit)
    ).mappings()
    return [dict(r) for r in rows]


def done_profiles(conn: Connection, tables: Tables, job_id: int) -> Iterable[Any]:
    """The drift counts of a job's done chunks (scorebox/profile.py merges them)."""
    chunks = tables.chunks
    return conn.execute(
        select(chunks.c.profile).where(chunks.c.job_id == job_id, chunks.c.status == "done")
    ).scalars()


def written(conn: Connection, tables: Tables, table_name: str, model_tag: str) -> tuple[int, int]:
    """How many predictions of ``table_name`` by ``model_tag`` there are, and for how many
    distinct rows: the two are equal when no row was written twice (the exactly-once check of
    the tests and benchmarks)."""
    predictions = tables.predictions
    count, distinct = conn.execute(
        select(func.count(), func.count(predictions.c.row_id.distinct())).where(
            predictions.c.source_table == table_name, predictions.c.model_tag == model_tag
        )
    ).one()
    return int(count), int(distinct)


# --- a chunk's life ----------------------------------------------------------------------


def claim(
    conn: Connection, tables: Tables, job_id: int, chunk_no: int, lease: float
) -> Claim | None:
    """Lease the chunk if it is pending (or its lease expired) and its job is active."""
    chunks, jobs = tables.chunks, tables.jobs
    token = str(uuid.uuid4())
    now = _now(conn)
    claimable = (
        select(chunks.c.job_id, chunks.c.chunk_no)
        .where(
            chunks.c.job_id == job_id,
            chunks.c.chunk_no == chunk_no,
            (chunks.c.status == "pending")
            | ((chunks.c.status == "running") & (chunks.c.lease_expires_at < now)),
            exists().where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE)),
        )
        .with_for_update(skip_locked=True)
    )
    row = conn.execute(
        update(chunks)
        .where(tuple_(chunks.c.job_id, chunks.c.chunk_no).in_(claimable))
        .values(
            status="running",
            lease_token=token,
            lease_expires_at=_in(conn, lease),
            attempt=chunks.c.attempt + 1,
            updated_at=now,
        )
        .returning(chunks.c.id_lo, chunks.c.id_hi, chunks.c.attempt)
    ).first()
    if row is None:
        return None
    conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == "queued")
        .values(status="running", started_at=utcnow())
    )
    job = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one()
    return Claim(job_id, chunk_no, row.id_lo, row.id_hi, token, row.attempt, dict(job))


def release(conn: Connection, tables: Tables, leased: Claim) -> None:
    """Give the chunk back (pending) so a retry can claim it at once, if this worker still
    holds it; a released attempt ended cleanly, so it does not count against the chunk."""
    chunks = tables.chunks
    conn.execute(
        update(chunks)
        .where(
            chunks.c.job_id == leased.job_id,
            chunks.c.chunk_no == leased.chunk_no,
            chunks.c.lease_token == leased.token,
        )
        .values(
            status="pending", lease_token=None, updated_at=utcnow(), attempt=chunks.c.attempt - 1
        )
    )


def fail_chunk(conn: Connection, tables: Tables, job_id: int, chunk_no: int, error: str) -> None:
    """Mark the chunk and its job failed with ``error``; what other chunks wrote stays."""
    conn.execute(
        update(tables.chunks)
        .where(tables.chunks.c.job_id == job_id, tables.chunks.c.chunk_no == chunk_no)
        .values(status="failed", lease_token=None, error=error, updated_at=utcnow())
    )
    fail_job(conn, tables, job_id, error)


def fail_job(conn: Connection, tables: Tables, job_id: int, error: str) -> None:
    """Mark an active job failed with ``error`` (one line); what its chunks wrote stays."""
    conn.execute(
        update(tables.jobs)
        .where(tables.jobs.c.id == job_id, tables.jobs.c.status.in_(ACTIVE))
        .values(status="failed", error=" ".join(error.split()), finished_at=utcnow())
    )


def record_failed(
    conn: Connection, tables: Tables, job_id: int, failed: Sequence[tuple[str, str]]
) -> None:
    """Record a chunk's failed rows (key, reason) in key order; a row failed again keeps the
    newer reason."""
    insert = insert_for(conn, tables.failed)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["job_id", "row_id"], set_={"reason": insert.excluded.reason}
        ),
        [{"job_id": job_id, "row_id": str(k), "reason": r} for k, r in failed],
    )


# record_failed on the ADBC fast path, from a staged table of (row_id, reason) ($1: the job;
# {failed}, {staged}: the tables, quoted), in the keys' byte order like every write.
ADBC_FAILED = (
    "INSERT INTO {failed} (job_id, row_id, reason) SELECT $1, row_id, reason FROM {staged} "
    'ORDER BY row_id COLLATE "C" ON CONFLICT (job_id, row_id) DO UPDATE SET reason = '
    "excluded.reason"
)


def _too_many_failed(jobs: Any) -> Any:
    """The error of a job failed for its failed rows, computed by the database from its row."""
    return (
        cast(jobs.c.rows_failed, Text)
        .concat(" rows failed, more than --max-failed-rows ")
        .concat(cast(jobs.c.max_failed_rows, Text))
        .concat("; see `scorebox jobs show ")
        .concat(cast(jobs.c.id, Text))
        .concat("`")
    )


def finish_chunk(
    conn: Connection,
    tables: Tables,
    lease: Lease,
    scored: int,
    failed: int,
    profile: dict[str, list[int]] | None,
) -> bool:
    """The fence, last in a chunk's write: mark it done with its counts only if its lease is
    still this writer's and unexpired; then count its rows on the job, fail the job past
    --max-failed-rows, and end the job when this was its last chunk. False: the lease was lost
    (the caller rolls back, so nothing of the chunk is written)."""
    chunks, jobs = tables.chunks, tables.jobs
    now = _now(conn)
    fenced = conn.execute(
        update(chunks)
        .where(
            chunks.c.job_id == lease.job_id,
            chunks.c.chunk_no == lease.chunk_no,
            chunks.c.lease_token == lease.token,
            chunks.c.status == "running",
            chunks.c.lease_expires_at > now,
        )
        .values(
            status="done",
            lease_token=None,
            rows_scored=scored,
            rows_failed=failed,
            updated_at=now,
            profile=profile,
        )
    ).rowcount
    if fenced == 0:
        return False
    conn.execute(
        update(jobs)
        .where(jobs.c.id == lease.job_id)
        .values(rows_scored=jobs.c.rows_scored + scored, rows_failed=jobs.c.rows_failed + failed)
    )
    if failed:
        conn.execute(
            update(jobs)
            .where(
                jobs.c.id == lease.job_id,
                jobs.c.status.in_(ACTIVE),
                jobs.c.rows_failed > jobs.c.max_failed_rows,
            )
            .values(status="failed", finished_at=now, error=_too_many_failed(jobs))
        )
    # A new statement sees every chunk committed before it took the job row. Rows inserted into
    # a chunk's id range after submission are scored too: rows_total grows to count them.
    conn.execute(
        update(jobs)
        .where(
            jobs.c.id == lease.job_id,
            jobs.c.status == "running",
            ~exists().where(and_(chunks.c.job_id == lease.job_id, chunks.c.status != "done")),
        )
        .values(
            status=case((jobs.c.rows_failed > 0, "succeeded_with_errors"), else_="succeeded"),
            finished_at=now,
            rows_total=case(
                (
                    jobs.c.rows_scored + jobs.c.rows_failed > jobs.c.rows_total,
                    jobs.c.rows_scored + jobs.c.rows_failed,
                ),
                else_=jobs.c.rows_total,
            ),
        )
    )
    return True


# The same steps as finish_chunk, as the ADBC fast path runs them ($1 job, $2 chunk, $3 token,
# $4 rows scored, $5 rows failed, $6 the drift counts as JSON text; {chunks}, {jobs}: the
# tables, quoted). Tests run both on the same ledgers and compare what they leave.
ADBC_FENCE = (
    "UPDATE {chunks} SET status = 'done', lease_token = NULL, rows_scored = $4, "
    "rows_failed = $5, profile = CAST($6 AS json), updated_at = clock_timestamp() "
    "WHERE job_id = $1 AND chunk_no = $2 AND lease_token = $3 AND status = 'running' "
    "AND lease_expires_at > clock_timestamp() RETURNING 1"
)
ADBC_COUNT = (
    "UPDATE {jobs} SET rows_scored = rows_scored + $2, rows_failed = rows_failed + $3 WHERE id = $1"
)
ADBC_TOO_MANY_FAILED = (
    "UPDATE {jobs} SET status = 'failed', finished_at = clock_timestamp(), error = "
    "CAST(rows_failed AS text) || ' rows failed, more than --max-failed-rows ' || "
    "CAST(max_failed_rows AS text) || '; see `scorebox jobs show ' || CAST(id AS text) || '`' "
    "WHERE id = $1 AND status IN ('queued', 'running') AND rows_failed > max_failed_rows"
)
ADBC_END = (
    "UPDATE {jobs} SET status = CASE WHEN rows_failed > 0 THEN 'succeeded_with_errors' "
    "ELSE 'succeeded' END, finished_at = clock_timestamp(), "
    "rows_total = GREATEST(rows_total, rows_scored + rows_failed) "
    "WHERE id = $1 AND status = 'running' "
    "AND NOT EXISTS (SELECT 1 FROM {chunks} WHERE job_id = $1 AND status <> 'done')"
)


def finish_chunk_adbc(
    cursor: Any,
    names: dict[str, str],
    lease: Lease,
    scored: int,
    failed: int,
    profile_json: str,
) -> bool:
    """:func:`finish_chunk` on an ADBC cursor (``names``: the quoted ``chunks`` and ``jobs``)."""
    cursor.execute(
        ADBC_FENCE.format(**names),
        (lease.job_id, lease.chunk_no, lease.token, scored, failed, profile_json),
    )
    if not cursor.fetchall():
        return False
    cursor.execute(ADBC_COUNT.format(**names), (lease.job_id, scored, failed))
    if failed:
        cursor.execute(ADBC_TOO_MANY_FAILED.format(**names), (lease.job_id,))
    cursor.execute(ADBC_END.format(**names), (lease.job_id,))
    return True


def lease_left_adbc(cursor: Any, names: dict[str, str], lease: Lease) -> int | None:
    """Milliseconds left of ``lease`` on the database's clock (None: not this writer's)."""
    cursor.execute(
        "SELECT CAST(floor(extract(epoch FROM lease_expires_at - clock_timestamp()) * 1000) "
        "AS bigint) FROM {chunks} WHERE job_id = $1 AND chunk_no = $2 AND lease_token = $3".format(
            **names
        ),
        (lease.job_id, lease.chunk_no, lease.token),
    )
    found = cursor.fetchall()
    return None if not found or found[0][0] is None else int(found[0][0])


# --- steering jobs -------------------------------------------------------------------------


def _lock_chunks(conn: Connection, tables: Tables, job_id: int) -> None:
    """Lock a job's unfinished chunks in chunk order (see the lock order above)."""
    chunks = tables.chunks
    conn.execute(
        select(chunks.c.chunk_no)
        .where(chunks.c.job_id == job_id, chunks.c.status != "done")
        .order_by(chunks.c.chunk_no)
        .with_for_update()
    ).all()


def cancel(conn: Connection, tables: Tables, job_id: int) -> bool:
    """Stop a queued or running job; chunks not yet written are not written. True if it was
    active."""
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


def reopen(conn: Connection, tables: Tables, job_id: int, queue: str) -> list[int]:
    """Make every chunk of a job that is not done pending again, and the job active on
    ``queue``; the chunk numbers to queue again."""
    _lock_chunks(conn, tables, job_id)
    chunks = [
        row[0]
        for row in conn.execute(
            update(tables.chunks)
            .where(tables.chunks.c.job_id == job_id, tables.chunks.c.status != "done")
            .values(status="pending", lease_token=None, error=None, attempt=0, updated_at=utcnow())
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
    return chunks


def due_again(
    conn: Connection, tables: Tables, queue: str, lease: float, lock_key: int
) -> list[tuple[int, int]]:
    """The chunks of ``queue``'s active jobs to send again, made pending: running ones whose
    lease expired, pending ones nothing claimed for a whole lease. Locked chunks are skipped;
    on PostgreSQL one sweeper of a queue at a time (advisory lock ``lock_key``), else none."""
    chunks, jobs = tables.chunks, tables.jobs
    if conn.dialect.name == "postgresql":
        got = conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": lock_key}
        ).scalar()
        if not got:
            return []
    now = _now(conn)
    due = (
        select(chunks.c.job_id, chunks.c.chunk_no)
        .where(
            chunks.c.job_id.in_(
                select(jobs.c.id).where(jobs.c.status.in_(ACTIVE), jobs.c.queue == queue)
            ),
            or_(
                (chunks.c.status == "running") & (chunks.c.lease_expires_at < now),
                (chunks.c.status == "pending") & (chunks.c.updated_at < _in(conn, -lease)),
            ),
        )
        .with_for_update(skip_locked=True)
    )
    return [
        (int(job_id), int(chunk_no))
        for job_id, chunk_no in conn.execute(
            update(chunks)
            .where(tuple_(chunks.c.job_id, chunks.c.chunk_no).in_(due))
            .values(status="pending", lease_token=None, updated_at=now)
            .returning(chunks.c.job_id, chunks.c.chunk_no)
        ).all()
    ]


# --- the dashboard's reads (asyncpg, $n parameters; tables by their fixed names) -----------------

# Every job column the dashboard shows, and seconds since it started (until it finished).
_DASHBOARD_JOB = (
    "SELECT id, status, table_name, model_tag, model_ref, mode, rows_total, rows_scored, "
    "rows_failed, chunks_total, error, created_at, started_at, finished_at, "
    "extract(epoch FROM coalesce(finished_at, now()) - started_at) AS seconds "
    f"FROM {JOBS_TABLE}"
)
DASHBOARD_JOBS = f"{_DASHBOARD_JOB} ORDER BY id DESC LIMIT $1"  # the newest $1 jobs
DASHBOARD_JOB = f"{_DASHBOARD_JOB} WHERE id = $1"
# The first $2 failed rows of job $1, by key.
DASHBOARD_FAILED = (
    f"SELECT row_id, reason FROM {FAILED_ROWS_TABLE} WHERE job_id = $1 ORDER BY row_id LIMIT $2"
)
DASHBOARD_REFERENCE = f"SELECT reference::text FROM {JOBS_TABLE} WHERE id = $1"
# The numbers of job $1's done chunks that carry drift counts.
DASHBOARD_DONE_CHUNKS = (
    f"SELECT coalesce(array_agg(chunk_no), '{{}}') FROM {CHUNKS_TABLE} "
    "WHERE job_id = $1 AND status = 'done' AND profile IS NOT NULL"
)
# (chunk number, counts as JSON text) of job $1's chunks $2 to $3 that carry counts. A range of
# the primary key: PostgreSQL reads just those rows whatever its statistics say (with
# `chunk_no = ANY(...)`, or a condition on status, it was seen to read every done chunk of a
# 100,000-chunk job for each batch).
DASHBOARD_CHUNK_COUNTS = (
    f"SELECT chunk_no, profile::text FROM {CHUNKS_TABLE} WHERE job_id = $1 "
    "AND chunk_no BETWEEN $2 AND $3 AND profile IS NOT NULL"
)
