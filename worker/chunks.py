"""One chunk of a job: claim it with a lease, read its rows, score them through the service, and
write the predictions with the chunk's completion in one transaction fenced by the lease token.

A chunk that runs twice writes the same rows once: a second claim finds it done, and a worker
whose lease expired (another took the chunk over) writes nothing.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql
from sqlalchemy import (
    JSON,
    BigInteger,
    Double,
    Engine,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    exists,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.exc import InterfaceError, OperationalError

from scorebox.db import insert_for, reflect_table, split_name, utcnow
from scorebox.errors import ScoreboxError
from worker.client import ServiceClient, ServiceUnavailable
from worker.jobs import ACTIVE, Tables, fail_job, unscored

log = logging.getLogger(__name__)


# Database faults worth retrying: a lost connection or a server restart, through SQLAlchemy or
# psycopg's COPY.
TRANSIENT = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


class ModelMismatch(ScoreboxError):
    """The service serves another model than the job's."""


@dataclass(frozen=True)
class Claim:
    """A chunk leased to this worker."""

    job_id: int
    chunk_no: int
    id_lo: int
    id_hi: int
    token: str
    job: dict[str, Any]


def claim(engine: Engine, tables: Tables, job_id: int, chunk_no: int, lease: float) -> Claim | None:
    """Lease the chunk if it is pending (or its lease expired) and its job is active."""
    chunks, jobs = tables.chunks, tables.jobs
    token = str(uuid.uuid4())
    now = utcnow()
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
    with engine.begin() as conn:
        row = conn.execute(
            update(chunks)
            .where(tuple_(chunks.c.job_id, chunks.c.chunk_no).in_(claimable))
            .values(
                status="running",
                lease_token=token,
                lease_expires_at=now + timedelta(seconds=lease),
                attempt=chunks.c.attempt + 1,
                updated_at=now,
            )
            .returning(chunks.c.id_lo, chunks.c.id_hi)
        ).first()
        if row is None:
            return None
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == "queued")
            .values(status="running", started_at=now)
        )
        job = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one()
    return Claim(job_id, chunk_no, row.id_lo, row.id_hi, token, dict(job))


@dataclass(frozen=True)
class Rows:
    """A chunk's rows ready for the service, and those refused before it (id, reason)."""

    table: pa.Table
    refused: list[tuple[int, str]]


def read_rows(engine: Engine, tables: Tables, claim: Claim) -> Rows:
    """The chunk's rows (``id`` and features) as Arrow, streamed by COPY and parsed in C++.

    In mode ``new`` rows that already have a prediction for the job's model are left out.
    """
    job = claim.job
    if engine.dialect.name != "postgresql":
        return _read_rows_portable(engine, tables, claim)
    schema, name = split_name(job["table_name"])
    source = sql.Identifier(schema, name) if schema else sql.Identifier(name)
    id_col = sql.Identifier(job["id_column"])
    features: list[str] = job["features"]
    query = sql.SQL(
        "SELECT {id} AS id, {cols} FROM {source} AS t WHERE {id} BETWEEN %s AND %s"
    ).format(id=id_col, cols=sql.SQL(", ").join(map(sql.Identifier, features)), source=source)
    params: list[Any] = [claim.id_lo, claim.id_hi]
    if job["mode"] == "new":
        p_schema, p_name = split_name(tables.predictions.fullname)
        predictions = sql.Identifier(p_schema, p_name) if p_schema else sql.Identifier(p_name)
        query += sql.SQL(
            " AND NOT EXISTS (SELECT 1 FROM {p} WHERE row_id = t.{id} AND model_tag = %s)"
        ).format(p=predictions, id=id_col)
        params.append(job["model_tag"])
    query += sql.SQL(" ORDER BY 1")
    buffer = io.BytesIO()
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor:
            copy_query = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER)").format(query)
            with cursor.copy(copy_query, params) as copy:
                for block in copy:
                    buffer.write(block)
    buffer.seek(0)
    types = {"id": pa.int64()} | {f: pa.float64() for f in features}
    try:
        table = pacsv.read_csv(
            buffer,
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True),
        )
        return Rows(table, [])
    except pa.ArrowInvalid:
        # Some value is not a number (a text column): parse as text and sort the rows out.
        buffer.seek(0)
        text_types = {"id": pa.int64()} | {f: pa.string() for f in features}
        frame = pacsv.read_csv(
            buffer,
            convert_options=pacsv.ConvertOptions(column_types=text_types, strings_can_be_null=True),
        ).to_pandas()
        return _numeric(frame, features)


def _numeric(frame: pd.DataFrame, features: list[str]) -> Rows:
    """Convert feature columns to float; a row with a value that is not a number (other than
    NULL) is refused with the column and value, and the rest go on."""
    reasons = [""] * len(frame)
    for name in features:
        raw = frame[name]
        values = pd.to_numeric(raw, errors="coerce")
        for i in np.flatnonzero((values.isna() & raw.notna()).to_numpy()):
            reasons[i] = reasons[i] or f"non-numeric value in {name}: {raw.iloc[i]!r}"
        frame[name] = values.astype("float64")
    refused = [(int(i), r) for i, r in zip(frame["id"], reasons, strict=True) if r]
    good = frame[[not r for r in reasons]].astype({"id": "int64"})
    return Rows(pa.Table.from_pandas(good, preserve_index=False), refused)


def _read_rows_portable(engine: Engine, tables: Tables, claim: Claim) -> Rows:
    """The same rows through a plain SELECT (SQLite, where there is no COPY)."""
    job = claim.job
    features: list[str] = job["features"]
    with engine.connect() as conn:
        source = reflect_table(conn, job["table_name"])
        ids = source.c[job["id_column"]]
        query = (
            select(ids.label("id"), *(source.c[f] for f in features))
            .where(ids.between(claim.id_lo, claim.id_hi))
            .order_by(ids)
        )
        if job["mode"] == "new":
            query = query.where(
                unscored(source, job["id_column"], tables.predictions, job["model_tag"])
            )
        frame = pd.read_sql(query, conn)
    return _numeric(frame, features)


def _prediction_rows(result: pa.Table, job_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Column arrays of good predictions and a list of failed rows, from the service's result."""
    errors = result.column("error").to_pylist()
    ids = result.column("id").to_numpy()
    good = np.array([e is None for e in errors], dtype=bool)
    failed = [
        {"job_id": job_id, "row_id": int(i), "reason": e}
        for i, e in zip(ids, errors, strict=True)
        if e
    ]
    columns: dict[str, Any] = {"row_id": ids[good].tolist()}
    if "predicted_value" in result.column_names:
        columns["predicted_value"] = (
            result.column("predicted_value").to_numpy(zero_copy_only=False)[good].tolist()
        )
        columns["predicted_label"] = [None] * int(good.sum())
        columns["probability"] = [None] * int(good.sum())
        columns["probabilities"] = [None] * int(good.sum())
    else:
        classes = [c.removeprefix("p:") for c in result.column_names if c.startswith("p:")]
        proba = np.column_stack(
            [result.column(f"p:{c}").to_numpy(zero_copy_only=False) for c in classes]
        )[good]
        columns["predicted_label"] = np.asarray(
            result.column("predicted_label").to_pylist(), dtype=object
        )[good].tolist()
        columns["predicted_value"] = [None] * int(good.sum())
        columns["probability"] = (
            result.column("probability").to_numpy(zero_copy_only=False)[good].tolist()
        )
        columns["probabilities"] = [
            json.dumps(dict(zip(classes, row, strict=True))) for row in proba.tolist()
        ]
    return columns, failed


def write(
    engine: Engine,
    tables: Tables,
    claim: Claim,
    result: pa.Table | None,
    refused: Sequence[tuple[int, str]] = (),
) -> bool:
    """Upsert predictions, record failed rows and complete the chunk in one transaction, only if
    this worker still holds the lease. Returns False (and writes nothing) when fenced off.
    ``result`` is None for a chunk with no rows left to score."""
    columns, failed = _prediction_rows(result, claim.job_id) if result else ({"row_id": []}, [])
    failed += [{"job_id": claim.job_id, "row_id": i, "reason": r} for i, r in refused]
    scored = len(columns["row_id"])
    chunks, jobs, predictions = tables.chunks, tables.jobs, tables.predictions
    with engine.begin() as conn:
        fenced = conn.execute(
            update(chunks)
            .where(
                chunks.c.job_id == claim.job_id,
                chunks.c.chunk_no == claim.chunk_no,
                chunks.c.lease_token == claim.token,
                chunks.c.status == "running",
            )
            .values(
                status="done",
                lease_token=None,
                rows_scored=scored,
                rows_failed=len(failed),
                updated_at=utcnow(),
            )
        ).rowcount
        if fenced == 0:
            conn.rollback()
            log.warning("chunk %s/%s: lease lost, nothing written", claim.job_id, claim.chunk_no)
            return False
        if scored and conn.dialect.name == "postgresql":
            _upsert(conn, predictions, columns, claim.job["model_tag"], claim.job_id)
        elif scored:
            _upsert_rows(conn, predictions, columns, claim.job["model_tag"], claim.job_id)
        if failed:
            insert = insert_for(conn, tables.failed)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["job_id", "row_id"], set_={"reason": insert.excluded.reason}
                ),
                failed,
            )
        conn.execute(
            update(jobs)
            .where(jobs.c.id == claim.job_id)
            .values(
                rows_scored=jobs.c.rows_scored + scored,
                rows_failed=jobs.c.rows_failed + len(failed),
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
            .values(status="succeeded", finished_at=utcnow())
        )
    return True


def _upsert(
    conn: Connection, predictions: Table, columns: dict[str, Any], tag: str, job_id: int
) -> None:
    """INSERT ... SELECT FROM unnest(arrays) ON CONFLICT (row_id, model_tag) DO UPDATE, in id order
    so concurrent writers lock rows in the same order and cannot deadlock."""
    arrays = (
        func.unnest(
            cast(bindparam("ids"), ARRAY(BigInteger)),
            cast(bindparam("labels"), ARRAY(Text)),
            cast(bindparam("vals"), ARRAY(Double)),
            cast(bindparam("probability"), ARRAY(Double)),
            cast(bindparam("probabilities"), ARRAY(Text)),
        )
        .table_valued(
            "row_id", "predicted_label", "predicted_value", "probability", "probabilities"
        )
        .render_derived(name="u")
    )
    rows = select(
        arrays.c.row_id,
        cast(bindparam("tag"), String),
        arrays.c.predicted_label,
        arrays.c.predicted_value,
        arrays.c.probability,
        cast(arrays.c.probabilities, JSON),
        cast(bindparam("job"), Integer),
    ).order_by(arrays.c.row_id)
    names = [
        "row_id",
        "model_tag",
        "predicted_label",
        "predicted_value",
        "probability",
        "probabilities",
        "job_id",
    ]
    insert = postgresql.insert(predictions).from_select(names, rows)
    statement = insert.on_conflict_do_update(
        index_elements=["row_id", "model_tag"],
        set_={name: insert.excluded[name] for name in names[2:]} | {"scored_at": func.now()},
    )
    conn.execute(
        statement,
        {
            "tag": tag,
            "job": job_id,
            "ids": columns["row_id"],
            "labels": columns["predicted_label"],
            "vals": columns["predicted_value"],
            "probability": columns["probability"],
            "probabilities": columns["probabilities"],
        },
    )


def _upsert_rows(
    conn: Connection, predictions: Table, columns: dict[str, Any], tag: str, job_id: int
) -> None:
    """The portable upsert (SQLite): one parameter set a row."""
    names = ["row_id", "predicted_label", "predicted_value", "probability", "probabilities"]
    rows = [
        dict(zip(names, values, strict=True)) | {"model_tag": tag, "job_id": job_id}
        for values in zip(*(columns[n] for n in names), strict=True)
    ]
    for row in rows:
        if row["probabilities"] is not None:
            row["probabilities"] = json.loads(row["probabilities"])
    insert = insert_for(conn, predictions)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["row_id", "model_tag"],
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
    """Give the chunk back (status pending) so a retry can claim it at once."""
    with engine.begin() as conn:
        _end_lease(conn, tables, claim, status="pending")


def fail(engine: Engine, tables: Tables, claim: Claim, error: str) -> None:
    """Mark the chunk and its job failed with ``error``; what other chunks wrote stays."""
    with engine.begin() as conn:
        _end_lease(conn, tables, claim, status="failed", error=error)
        fail_job(conn, tables, claim.job_id, error)


def run_chunk(
    engine: Engine, tables: Tables, client: ServiceClient, job_id: int, chunk_no: int, lease: float
) -> str:
    """Claim, read, score and write one chunk. Returns what happened (for logs and tests).

    Raises ServiceUnavailable after releasing the chunk, so the caller may retry it.
    """
    leased = claim(engine, tables, job_id, chunk_no, lease)
    if leased is None:
        return "skipped"
    try:
        rows = read_rows(engine, tables, leased)
        if rows.table.num_rows == 0:
            return "done" if write(engine, tables, leased, None, rows.refused) else "fenced"
        tag, result = client.score(rows.table)
        if tag != leased.job["model_tag"]:
            raise ModelMismatch(
                f"the service now serves {tag}, but job {job_id} scores with "
                f"{leased.job['model_tag']}; not mixing models (resubmit the job)"
            )
    except ServiceUnavailable:
        release(engine, tables, leased)
        raise
    except TRANSIENT:
        _release_quietly(engine, tables, leased)
        raise
    except ScoreboxError as exc:
        fail(engine, tables, leased, str(exc))
        return "failed"
    except Exception as exc:
        # A bug, not a passing fault: record it on the job instead of retrying forever.
        log.exception("chunk %s/%s failed", job_id, chunk_no)
        fail(engine, tables, leased, f"internal error: {exc!r}")
        return "failed"
    try:
        return "done" if write(engine, tables, leased, result, rows.refused) else "fenced"
    except TRANSIENT:
        _release_quietly(engine, tables, leased)
        raise


def _release_quietly(engine: Engine, tables: Tables, leased: Claim) -> None:
    """Release after a database error; if the database is still away, the lease expires and the
    sweeper queues the chunk again."""
    try:
        release(engine, tables, leased)
    except TRANSIENT:
        log.warning(
            "chunk %s/%s: could not release, lease will expire", leased.job_id, leased.chunk_no
        )
