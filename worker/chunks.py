"""One chunk of a job: claim it with a lease, read its rows, score them through the service, and
write the predictions with the chunk's completion in one transaction fenced by the lease.

A chunk that runs twice writes the same rows once: a second claim finds it done, and a worker
whose lease expired (another took the chunk over) writes nothing. Leases are measured on the
database's clock. Every error ends in a decision (see :func:`run_chunk`): transient errors are
retried with backoff by the task, rows the service refuses are recorded as failed rows, and
anything else fails the job with a one-line reason, so no job is left running forever.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import (
    Engine,
    String,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from scorebox.db import Tables, insert_for, utcnow
from scorebox.errors import ScoreboxError
from worker.client import ServiceClient, ServiceRefused, ServiceUnavailable
from worker.jobs import ACTIVE, fail_job
from worker.reading import Rows, read_rows

log = logging.getLogger(__name__)

# Database faults worth retrying: a lost connection, a server restart, a lock or statement
# timeout, a deadlock or serialization failure (psycopg raises OperationalError for each).
TRANSIENT = (OperationalError, InterfaceError, ServiceUnavailable)


class Permanent(ScoreboxError):
    """An error retrying will not mend: the job fails with this one-line reason."""


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


def _now(conn: Connection) -> Any:
    """The database's clock (PostgreSQL), or this machine's where there is no server (SQLite)."""
    return func.clock_timestamp() if conn.dialect.name == "postgresql" else literal(utcnow())


def _lease_end(conn: Connection, seconds: float) -> Any:
    if conn.dialect.name == "postgresql":
        return func.clock_timestamp() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)
    return literal(utcnow() + timedelta(seconds=seconds))


def claim(engine: Engine, tables: Tables, job_id: int, chunk_no: int, lease: float) -> Claim | None:
    """Lease the chunk if it is pending (or its lease expired) and its job is active."""
    chunks, jobs = tables.chunks, tables.jobs
    token = str(uuid.uuid4())
    with engine.begin() as conn:
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
                lease_expires_at=_lease_end(conn, lease),
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


@dataclass(frozen=True)
class Scored:
    """What a chunk's write holds: prediction columns and failed rows (key, reason)."""

    columns: dict[str, list[Any]]
    failed: list[tuple[str, str]]

    @property
    def count(self) -> int:
        return len(self.columns["row_id"])


def predictions_of(keys: Sequence[str], result: pa.Table) -> Scored:
    """The service's answer (one row for each row sent) as prediction columns and failed rows."""
    if result.num_rows != len(keys):
        raise Permanent(f"the service answered {result.num_rows} rows for {len(keys)} sent")
    errors = result.column("error").to_pylist()
    good = np.array([e is None for e in errors], dtype=bool)
    ids = np.asarray(keys, dtype=object)
    failed = [(key, str(e)) for key, e in zip(keys, errors, strict=True) if e is not None]
    n = int(good.sum())
    columns: dict[str, list[Any]] = {"row_id": ids[good].tolist()}
    if "predicted_value" in result.column_names:
        values = result.column("predicted_value").to_numpy(zero_copy_only=False)
        columns |= {
            "predicted_value": values[good].tolist(),
            "predicted_label": [None] * n,
            "probability": [None] * n,
            "probabilities": [None] * n,
        }
        return Scored(columns, failed)
    classes = [c.removeprefix("p:") for c in result.column_names if c.startswith("p:")]
    proba = np.column_stack(
        [result.column(f"p:{c}").to_numpy(zero_copy_only=False) for c in classes]
    )[good]
    labels = np.asarray(result.column("predicted_label").to_pylist(), dtype=object)
    columns |= {
        "predicted_label": labels[good].tolist(),
        "predicted_value": [None] * n,
        "probability": result.column("probability").to_numpy(zero_copy_only=False)[good].tolist(),
        "probabilities": [
            json.dumps(dict(zip(classes, row, strict=True))) for row in proba.tolist()
        ],
    }
    return Scored(columns, failed)


def _bound_transaction(conn: Connection, tables: Tables, claim: Claim) -> bool:
    """Bound this transaction by what is left of the lease: no statement, lock wait or idle
    moment (a stalled worker) may outlive it. False when the lease is already gone."""
    if conn.dialect.name != "postgresql":
        return True
    left = conn.execute(
        text(
            "SELECT floor(extract(epoch FROM lease_expires_at - clock_timestamp()) * 1000) "
            f"FROM {_quoted(conn, tables.chunks)} "
            "WHERE job_id = :job AND chunk_no = :chunk AND lease_token = :token"
        ),
        {"job": claim.job_id, "chunk": claim.chunk_no, "token": claim.token},
    ).scalar()
    if left is None or left <= 0:
        return False
    for setting in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"):
        conn.execute(
            text("SELECT set_config(:name, :value, true)"),
            {"name": setting, "value": str(int(left))},
        )
    return True


def _quoted(conn: Connection, table: Any) -> str:
    return conn.dialect.identifier_preparer.format_table(table)


def write(engine: Engine, tables: Tables, claim: Claim, scored: Scored) -> bool:
    """Upsert predictions, record failed rows and complete the chunk in one transaction, only if
    this worker still holds an unexpired lease at the end. Returns False (writing nothing) when
    fenced off."""
    chunks, jobs = tables.chunks, tables.jobs
    failed = [{"job_id": claim.job_id, "row_id": k, "reason": r} for k, r in scored.failed]
    with engine.begin() as conn:
        if not _bound_transaction(conn, tables, claim):
            log.warning("chunk %s/%s: lease lost, nothing written", claim.job_id, claim.chunk_no)
            return False
        if scored.count:
            upsert = _upsert if conn.dialect.name == "postgresql" else _upsert_rows
            upsert(conn, tables, claim, scored.columns)
        if failed:
            insert = insert_for(conn, tables.failed)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["job_id", "row_id"], set_={"reason": insert.excluded.reason}
                ),
                failed,
            )
        # The fence, last: the lease must still be this worker's and unexpired now.
        fenced = conn.execute(
            update(chunks)
            .where(
                chunks.c.job_id == claim.job_id,
                chunks.c.chunk_no == claim.chunk_no,
                chunks.c.lease_token == claim.token,
                chunks.c.status == "running",
                chunks.c.lease_expires_at > _now(conn),
            )
            .values(
                status="done",
                lease_token=None,
                rows_scored=scored.count,
                rows_failed=len(failed),
                updated_at=utcnow(),
            )
        ).rowcount
        if fenced == 0:
            conn.rollback()
            log.warning("chunk %s/%s: lease lost, nothing written", claim.job_id, claim.chunk_no)
            return False
        conn.execute(
            update(jobs)
            .where(jobs.c.id == claim.job_id)
            .values(
                rows_scored=jobs.c.rows_scored + scored.count,
                rows_failed=jobs.c.rows_failed + len(failed),
            )
        )
        if failed:
            conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == claim.job_id,
                    jobs.c.status.in_(ACTIVE),
                    jobs.c.rows_failed > jobs.c.max_failed_rows,
                )
                .values(
                    status="failed",
                    finished_at=utcnow(),
                    error=cast(jobs.c.rows_failed, String)
                    + literal(" rows failed, more than --max-failed-rows ", String)
                    + cast(jobs.c.max_failed_rows, String)
                    + literal(f"; see `scorebox jobs show {claim.job_id}`", String),
                )
            )
        # A new statement sees every chunk committed before this one took the job row's lock.
        conn.execute(
            update(jobs)
            .where(
                jobs.c.id == claim.job_id,
                jobs.c.status == "running",
                ~exists().where(and_(chunks.c.job_id == claim.job_id, chunks.c.status != "done")),
            )
            .values(
                status=case((jobs.c.rows_failed > 0, "succeeded_with_errors"), else_="succeeded"),
                finished_at=utcnow(),
            )
        )
    return True


def _upsert(conn: Connection, tables: Tables, claim: Claim, columns: dict[str, Any]) -> None:
    """INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO UPDATE, in key order so concurrent
    writers lock rows in the same order and cannot deadlock."""
    target = _quoted(conn, tables.predictions)
    conn.execute(
        text(
            f"INSERT INTO {target} (source_table, model_tag, row_id, predicted_label, "
            "predicted_value, probability, probabilities, job_id) "
            "SELECT :source, :tag, u.row_id, u.label, u.value, u.probability, "
            "CAST(u.probabilities AS json), :job FROM unnest("
            "CAST(:ids AS text[]), CAST(:labels AS text[]), CAST(:vals AS float8[]), "
            "CAST(:probability AS float8[]), CAST(:probabilities AS text[])) "
            "AS u(row_id, label, value, probability, probabilities) ORDER BY u.row_id "
            "ON CONFLICT (source_table, model_tag, row_id) DO UPDATE SET "
            "predicted_label = excluded.predicted_label, "
            "predicted_value = excluded.predicted_value, probability = excluded.probability, "
            "probabilities = excluded.probabilities, job_id = excluded.job_id, "
            "scored_at = now()"
        ),
        {
            "source": claim.job["table_name"],
            "tag": claim.job["model_tag"],
            "job": claim.job_id,
            "ids": columns["row_id"],
            "labels": columns["predicted_label"],
            "vals": columns["predicted_value"],
            "probability": columns["probability"],
            "probabilities": columns["probabilities"],
        },
    )


def _upsert_rows(conn: Connection, tables: Tables, claim: Claim, columns: dict[str, Any]) -> None:
    """The portable upsert (SQLite): one parameter set a row."""
    names = ["row_id", "predicted_label", "predicted_value", "probability", "probabilities"]
    fixed = {
        "source_table": claim.job["table_name"],
        "model_tag": claim.job["model_tag"],
        "job_id": claim.job_id,
    }
    rows = [
        dict(zip(names, values, strict=True)) | fixed
        for values in zip(*(columns[n] for n in names), strict=True)
    ]
    for row in rows:
        if row["probabilities"] is not None:
            row["probabilities"] = json.loads(row["probabilities"])
    insert = insert_for(conn, tables.predictions)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["source_table", "model_tag", "row_id"],
            set_={n: insert.excluded[n] for n in [*names[1:], "job_id"]} | {"scored_at": utcnow()},
        ),
        rows,
    )


def _end_lease(conn: Connection, tables: Tables, claim: Claim, **values: Any) -> None:
    """Set ``values`` on the chunk and drop its lease, if this worker still holds it."""
    chunks = tables.chunks
    conn.execute(
        update(chunks)
        .where(
            chunks.c.job_id == claim.job_id,
            chunks.c.chunk_no == claim.chunk_no,
            chunks.c.lease_token == claim.token,
        )
        .values(lease_token=None, updated_at=utcnow(), **values)
    )


def release(engine: Engine, tables: Tables, claim: Claim) -> None:
    """Give the chunk back (status pending) so a retry can claim it at once; if the database is
    still away, the lease expires and the sweeper queues the chunk again."""
    try:
        with engine.begin() as conn:
            # A released attempt ended cleanly: only attempts that died count against a chunk.
            _end_lease(conn, tables, claim, status="pending", attempt=tables.chunks.c.attempt - 1)
    except (OperationalError, InterfaceError):
        log.warning("chunk %s/%s: could not release, lease will expire", *claim_ids(claim))


def claim_ids(claim: Claim) -> tuple[int, int]:
    """(job id, chunk number) for log lines."""
    return claim.job_id, claim.chunk_no


def fail(engine: Engine, tables: Tables, job_id: int, chunk_no: int, error: str) -> None:
    """Mark the chunk and its job failed with ``error``; what other chunks wrote stays."""
    with engine.begin() as conn:
        conn.execute(
            update(tables.chunks)
            .where(tables.chunks.c.job_id == job_id, tables.chunks.c.chunk_no == chunk_no)
            .values(status="failed", lease_token=None, error=error, updated_at=utcnow())
        )
        fail_job(conn, tables, job_id, error)


def explain(exc: BaseException, tables: Tables) -> str:
    """One line saying why a chunk cannot be scored, for errors that retrying will not mend."""
    if isinstance(exc, ScoreboxError):
        return str(exc)
    if isinstance(exc, SoftTimeLimitExceeded):
        return "a chunk took longer than the task's time limit; lower SCOREBOX_CHUNK_SIZE"
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        if sqlstate == "21000":
            return (
                "the id column holds the same value twice within a chunk (rows added after "
                "the job was submitted?); make the id column unique and resume the job"
            )
        if sqlstate == "42P01":
            return (
                f"a table is missing ({first}); run `scorebox db upgrade` with the same "
                f"SCOREBOX_PREDICTIONS_TABLE ({tables.predictions.fullname})"
            )
        if sqlstate == "42501":
            return f"permission denied ({first}); grant the worker's role what README lists"
        return f"database error: {first}"
    return f"internal error: {type(exc).__name__}: {exc}"


def run_chunk(
    engine: Engine,
    tables: Tables,
    client: ServiceClient,
    job_id: int,
    chunk_no: int,
    lease: float,
    max_attempts: int = 5,
) -> str:
    """Claim, read, score and write one chunk. Returns what happened (for logs and tests).

    Raises a transient error (after releasing the chunk) so that the caller retries it; every
    other error fails the job with a one-line reason and returns ``"failed"``.
    """
    leased = claim(engine, tables, job_id, chunk_no, lease)
    if leased is None:
        return "skipped"
    try:
        if leased.attempt > max_attempts:
            raise Permanent(
                f"chunk {chunk_no} was started {leased.attempt - 1} times without finishing "
                "(its worker died or stalled each time); see the worker logs"
            )
        rows = read_rows(engine, tables, leased.job, leased.id_lo, leased.id_hi)
        scored = _score(client, leased, rows)
        return "done" if write(engine, tables, leased, scored) else "fenced"
    except TRANSIENT:
        release(engine, tables, leased)
        raise
    except Exception as exc:
        reason = explain(exc, tables)
        if not isinstance(exc, ScoreboxError | DBAPIError):
            log.exception("chunk %s/%s failed", job_id, chunk_no)
        fail(engine, tables, job_id, chunk_no, reason)
        return "failed"


def _score(client: ServiceClient, leased: Claim, rows: Rows) -> Scored:
    """The chunk's predictions; rows the service refuses (4xx about the rows) become failed rows
    with its reason, never a retry."""
    if not rows.keys:
        return Scored({"row_id": []}, [])
    try:
        tag, result = client.score(rows.table)
    except ServiceRefused as exc:
        if not exc.rows_at_fault:
            raise Permanent(str(exc)) from None
        return Scored({"row_id": []}, [(key, str(exc)) for key in rows.keys])
    if tag != leased.job["model_tag"]:
        raise Permanent(
            f"the service now serves {tag}, but job {leased.job_id} scores with "
            f"{leased.job['model_tag']}; not mixing models (resubmit the job)"
        )
    return predictions_of(rows.keys, result)
