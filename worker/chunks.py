"""One chunk of a job: claim it with a lease, read its rows, score them through the service, and
write the predictions with the chunk's completion in one transaction fenced by the lease.

A chunk that runs twice writes the same rows once: a second claim finds it done, and a worker
whose lease expired (another took the chunk over) writes nothing. Leases are measured on the
database's clock. Every error ends in a decision (see :func:`run_chunk`): transient errors are
retried with backoff by the task, rows the service refuses are recorded as failed rows, and
anything else fails the job with a one-line reason, so no job is left running forever.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from scorebox import ledger
from scorebox.db import Tables
from scorebox.encoding import encode_columns, label_text
from scorebox.errors import (
    FeatureValueError,
    PermanentError,
    ScoreboxError,
    ServiceRefusedError,
    ServiceUnavailableError,
    database_reason,
)
from scorebox.features import Feature
from scorebox.ledger import Claim
from scorebox.profile import count_chunk, score_kind
from worker.client import ServiceClient
from worker.store import Rows, Scored, Store, predictions_of, transient_adbc

log = logging.getLogger(__name__)

# Database faults worth retrying: a lost connection, a server restart, a lock or statement
# timeout, a deadlock or serialization failure (psycopg raises OperationalError for each).
TRANSIENT = (OperationalError, InterfaceError, ServiceUnavailableError)


def claim(engine: Engine, tables: Tables, job_id: int, chunk_no: int, lease: float) -> Claim | None:
    """Lease the chunk if it is pending (or its lease expired) and its job is active."""
    with engine.begin() as conn:
        return ledger.claim(conn, tables, job_id, chunk_no, lease)


def release(engine: Engine, tables: Tables, leased: Claim) -> None:
    """Give the chunk back (status pending) so a retry can claim it at once; if the database is
    still away, the lease expires and the sweeper queues the chunk again."""
    try:
        with engine.begin() as conn:
            ledger.release(conn, tables, leased)
    except (OperationalError, InterfaceError):
        log.warning("chunk %s/%s: could not release, lease will expire", *claim_ids(leased))


def claim_ids(leased: Claim) -> tuple[int, int]:
    """(job id, chunk number) for log lines."""
    return leased.job_id, leased.chunk_no


def fail(engine: Engine, tables: Tables, job_id: int, chunk_no: int, error: str) -> None:
    """Mark the chunk and its job failed with ``error``; what other chunks wrote stays."""
    with engine.begin() as conn:
        ledger.fail_chunk(conn, tables, job_id, chunk_no, error)


def _database_reason(sqlstate: str | None, first: str, tables: Tables) -> str:
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


def explain(exc: BaseException, tables: Tables) -> str:
    """One line saying why a chunk cannot be scored, for errors that retrying will not mend."""
    import adbc_driver_manager

    if isinstance(exc, ScoreboxError):
        return str(exc)
    if isinstance(exc, adbc_driver_manager.Error):
        first = str(exc).split("ERROR:", 1)[-1].strip().splitlines()[0]
        return _database_reason(getattr(exc, "sqlstate", None), first, tables)
    if isinstance(exc, SoftTimeLimitExceeded):
        return "a chunk took longer than the task's time limit; lower SCOREBOX_CHUNK_SIZE"
    if isinstance(exc, DBAPIError):
        return _database_reason(getattr(exc.orig, "sqlstate", None), database_reason(exc), tables)
    return f"internal error: {type(exc).__name__}: {exc}"


def run_chunk(
    store: Store,
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
            raise PermanentError(
                f"chunk {chunk_no} was started {leased.attempt - 1} times without finishing "
                "(its worker died or stalled each time); see the worker logs"
            )
        rows = store.read(leased.job, leased.id_lo, leased.id_hi)
        scored = _score(client, leased, rows)
        return "done" if store.write(leased.lease, scored) else "fenced"
    except Exception as exc:
        if is_transient(exc):
            release(engine, tables, leased)
            raise
        reason = explain(exc, tables)
        if not isinstance(exc, ScoreboxError | DBAPIError) and not is_database_error(exc):
            log.exception("chunk %s/%s failed", job_id, chunk_no)
        fail(engine, tables, job_id, chunk_no, reason)
        return "failed"


def is_transient(exc: BaseException) -> bool:
    """A passing fault, worth retrying: the service away, a lost database connection, a lock or
    statement timeout, a deadlock."""
    return isinstance(exc, TRANSIENT) or transient_adbc(exc)


def is_database_error(exc: BaseException) -> bool:
    import adbc_driver_manager

    return isinstance(exc, adbc_driver_manager.Error)


def _score(client: ServiceClient, leased: Claim, rows: Rows) -> Scored:
    """The chunk's predictions; rows the service refuses (4xx about the rows) become failed rows
    with its reason, never a retry."""
    if not len(rows.keys):
        return predictions_of(rows.keys, _empty_result())
    try:
        tag, result = client.score(rows.table, leased.job["model_tag"])
    except ServiceRefusedError as exc:
        if not exc.rows_at_fault:
            raise PermanentError(str(exc)) from None
        empty = predictions_of(pa.array([], pa.string()), _empty_result())
        return Scored(empty.table, [(key, str(exc)) for key in rows.keys.to_pylist()])
    if tag != leased.job["model_tag"]:
        raise PermanentError(
            f"the service answered with {tag}, but job {leased.job_id} scores with "
            f"{leased.job['model_tag']}; not mixing models (resubmit the job)"
        )
    try:
        scored = predictions_of(rows.keys, result)
    except ValueError as exc:
        raise PermanentError(str(exc)) from None
    return replace(scored, profile=chunk_profile(leased.job.get("reference"), rows.table, result))


# Rows of a chunk counted for drift: at most this many, evenly spread over the chunk. The counts
# hold exactly the rows counted, so every share (and PSI) is of the sample, said as such.
DRIFT_SAMPLE_ROWS = 5_000


def chunk_profile(
    reference: dict[str, Any] | None,
    table: pa.Table,
    result: pa.Table,
    sample: int = DRIFT_SAMPLE_ROWS,
) -> dict[str, list[int]] | None:
    """The counts of (an evenly spread sample of at most ``sample``) rows a chunk scored, in the
    training profile's bins (for drift), or None when the job's model has no profile."""
    if not reference or not reference.get("profile") or not table.num_rows:
        return None
    if table.num_rows > sample:
        picked = pa.array(np.linspace(0, table.num_rows - 1, sample).round().astype(np.int64))
        table, result = table.take(picked), result.take(picked)
    features = [Feature.from_dict(f) for f in reference["features"]]
    try:
        encoded = encode_columns(features, {f.name: table.column(f.name) for f in features})
    except (FeatureValueError, KeyError):
        return None
    valid = encoded.valid
    kind = score_kind(reference["task"], reference["classes"])
    column = {
        "value": "predicted_value",
        "top": "probability",
        "second": f"p:{label_text(reference['classes'][-1])}",
    }[kind]
    scores = np.asarray(result.column(column).to_numpy(zero_copy_only=False), np.float64)[valid]
    names = [f.name for f in features]
    return count_chunk(reference["profile"], names, encoded.matrix[valid], encoded.unseen, scores)


def _empty_result() -> pa.Table:
    return pa.table(
        {"error": pa.array([], pa.string()), "predicted_value": pa.array([], pa.float64())}
    )
