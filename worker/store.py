"""Where a chunk's rows come from and its predictions go: PostgreSQL through ADBC (rows read as
Arrow columns in C++ by binary COPY, predictions written by binary COPY), or any other database
through SQLAlchemy (the SQLite file of `scorebox demo`).

A chunk's write is one transaction, bounded by what is left of its lease (statement, lock and
idle timeouts) and fenced at its end: predictions are copied into the table in key order (or,
when some are there already, staged and upserted in key order), failed rows recorded, and the
chunk marked done only if its lease is still this worker's and unexpired; otherwise nothing is
written. Locks are taken in the order the whole worker keeps (see
worker/jobs.py): prediction rows, then the chunk row, then the job row.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Engine, and_, case, exists, select, update
from sqlalchemy.engine import make_url

from scorebox.db import Tables, insert_for, reflect, utcnow
from scorebox.names import TableName, parse_table
from worker.reading import key_value, unscored

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """The chunk a write belongs to and the token that must still hold it."""

    job_id: int
    chunk_no: int
    token: str
    table_name: str
    model_tag: str


@dataclass(frozen=True)
class Rows:
    """A chunk's keys (as text) and its feature columns, in key order."""

    keys: pa.Array
    table: pa.Table


@dataclass(frozen=True)
class Scored:
    """A chunk's predictions (row_id, predicted_label, predicted_value, probability, and
    probabilities as JSON text) and its failed rows (key, reason)."""

    table: pa.Table
    failed: list[tuple[str, str]]
    # The scored rows' counts in the training profile's bins (scorebox/profile.py), if any.
    profile: dict[str, list[int]] | None = None

    @property
    def count(self) -> int:
        return int(self.table.num_rows)


PREDICTION_COLUMNS = (
    "row_id",
    "predicted_label",
    "predicted_value",
    "probability",
    "probabilities",
)


def predictions_of(keys: pa.Array, result: pa.Table) -> Scored:
    """The service's answer (one row for each row sent, in order) as prediction columns and
    failed rows, built column by column (no Python per row but for failed rows)."""
    if result.num_rows != len(keys):
        raise ValueError(f"the service answered {result.num_rows} rows for {len(keys)} sent")
    # Row ids are text in the predictions table (integer keys come from the read as numbers).
    keys = keys if pa.types.is_string(keys.type) else pc.cast(keys, pa.string())
    errors = result.column("error")
    good = pc.is_null(errors)
    failed_at = np.flatnonzero(~np.asarray(good.to_numpy(zero_copy_only=False), dtype=bool))
    failed = [(keys[int(i)].as_py(), errors[int(i)].as_py()) for i in failed_at]
    n = len(keys) - len(failed)
    if "predicted_value" in result.column_names:
        columns = {
            "row_id": keys,
            "predicted_label": pa.nulls(len(keys), pa.string()),
            "predicted_value": result.column("predicted_value"),
            "probability": pa.nulls(len(keys), pa.float64()),
            "probabilities": pa.nulls(len(keys), pa.string()),
        }
    else:
        classes = [c.removeprefix("p:") for c in result.column_names if c.startswith("p:")]
        pieces: list[Any] = []
        for k, label in enumerate(classes):
            prefix = "{" if k == 0 else ", "
            pieces += [
                f"{prefix}{json.dumps(label)}: ",
                pc.cast(result.column(f"p:{label}"), pa.string()),
            ]
        pieces.append("}")
        columns = {
            "row_id": keys,
            "predicted_label": result.column("predicted_label"),
            "predicted_value": pa.nulls(len(keys), pa.float64()),
            "probability": result.column("probability"),
            "probabilities": pc.binary_join_element_wise(*pieces, ""),
        }
    table = pa.table(columns).filter(good) if failed else pa.table(columns)
    assert table.num_rows == n
    # One order for every write, whatever the source table's collation: the key's bytes, the
    # predictions table's own order. Writers that lock rows in the same order never deadlock.
    table = table.take(pc.sort_indices(table, sort_keys=[("row_id", "ascending")]))
    failed.sort(key=lambda pair: str(pair[0]).encode())
    return Scored(table, failed)


class Store(Protocol):
    """Reads a chunk's rows and writes its predictions."""

    def read(self, job: dict[str, Any], lo: str, hi: str) -> Rows: ...

    def write(self, lease: Lease, scored: Scored) -> bool: ...

    def close(self) -> None: ...


# --- PostgreSQL, through ADBC ---------------------------------------------------------------

# Errors worth retrying, by SQLSTATE class: connection (08), transaction rollback such as a
# deadlock or serialization failure (40), insufficient resources (53), operator intervention
# such as a statement timeout or a restart (57), and a lock not available (55P03).
_TRANSIENT_CLASSES = ("08", "40", "53", "57")


def transient_adbc(exc: BaseException) -> bool:
    """Whether an ADBC error is a passing fault (a lost connection has no SQLSTATE)."""
    import adbc_driver_manager

    if not isinstance(exc, adbc_driver_manager.Error):
        return False
    state = getattr(exc, "sqlstate", None)
    return state is None or state[:2] in _TRANSIENT_CLASSES or state == "55P03"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table(name: TableName) -> str:
    return ".".join(_quote(p) for p in (name.schema, name.name) if p is not None)


def _expression(name: str, how: str) -> str:
    """How a feature column is selected: as its type when it fits the feature's kind (exact
    numerics as double precision; infinite dates as NULL, which Arrow could not hold), else as
    text."""
    column = f"t.{_quote(name)}"
    if how == "decimal":
        return f"CAST({column} AS double precision)"
    if how in ("number", "bool"):
        return column
    if how in ("date", "timestamp", "timestamptz"):
        return f"CASE WHEN isfinite({column}) THEN {column} END"
    return f"CAST({column} AS text)"


# A row that is there already (SQLSTATE unique_violation).
_UNIQUE_VIOLATION = "23505"

# work_mem of a chunk's write: enough to sort a large chunk's staged predictions in memory.
_SORT_MEMORY = "64MB"


class PostgresStore:
    """Chunks read and written with ADBC's PostgreSQL driver, one connection per process."""

    def __init__(self, url: str, tables: Tables, application_name: str) -> None:
        parsed = make_url(url).set(drivername="postgresql")
        parsed = parsed.update_query_dict({"application_name": application_name})
        self._uri = parsed.render_as_string(hide_password=False)
        self._tables = tables
        self._connection: Any = None
        self._pid = 0

    def _connect(self) -> Any:
        import adbc_driver_postgresql.dbapi as adbc

        if self._connection is None or self._pid != os.getpid():
            self._connection = adbc.connect(self._uri)
            self._pid = os.getpid()
        return self._connection

    def _run(self, work: Any) -> Any:
        """Run ``work(connection)`` in a transaction; on any error roll back, and drop a
        connection that cannot roll back (the server went away) so the next call reconnects."""
        connection = self._connect()
        try:
            result = work(connection)
        except BaseException:
            try:
                connection.rollback()
            except Exception:
                self._close()
            raise
        return result

    def _close(self) -> None:
        try:
            self._connection.close()
        except Exception as exc:
            log.debug("closing a broken connection: %s", exc)
        self._connection = None

    def close(self) -> None:
        """Close this process's connection (a later call opens a new one)."""
        if self._connection is not None and self._pid == os.getpid():
            self._close()

    def read(self, job: dict[str, Any], lo: str, hi: str) -> Rows:
        features: list[dict[str, str]] = job["features"]
        key = f"t.{_quote(job['id_column'])}"
        key_type = job["key_type"]
        # Integers are made text here, in Arrow; other keys by the database (a UUID's form).
        selected_key = key if job["key_kind"] == "integer" else f"CAST({key} AS text)"
        query = (
            f"SELECT {selected_key} AS k, "
            + ", ".join(
                f"{_expression(f['name'], f['read'])} AS f{i}" for i, f in enumerate(features)
            )
            + f" FROM {_table(parse_table(job['table_name']))} AS t"
            + f" WHERE {key} >= CAST({_given('lo')} AS {key_type})"
            + f" AND {key} <= CAST({_given('hi')} AS {key_type})"
        )
        given = {"lo": lo, "hi": hi}
        if job["mode"] == "new":
            predictions = _table(parse_table(self._tables.predictions.fullname))
            query += (
                f" AND NOT EXISTS (SELECT 1 FROM {predictions} AS p WHERE p.source_table = "
                f"{_given('source')} AND p.model_tag = {_given('tag')} "
                f"AND p.row_id = CAST({key} AS text))"
            )
            given |= {"source": job["table_name"], "tag": job["model_tag"]}
        query += f" ORDER BY {key}"
        settings = ", ".join(
            f"set_config('scorebox.{name}', ${i}, true)" for i, name in enumerate(given, 1)
        )

        def work(connection: Any) -> pa.Table:
            with connection.cursor() as cursor:
                # The values go in as settings of this transaction, not as parameters: ADBC
                # reads a query without parameters by binary COPY: 50,000 rows of the example in
                # 121 ms instead of 216 ms here.
                cursor.execute(f"SELECT {settings}", tuple(given.values()))
                cursor.fetchall()
                cursor.execute(query)
                table = cursor.fetch_arrow_table()
            connection.commit()
            return table

        table = self._run(work)
        names = [f["name"] for f in features]
        return Rows(
            table.column(0).combine_chunks(),
            table.drop_columns([table.column_names[0]]).rename_columns(names),
        )

    def write(self, lease: Lease, scored: Scored) -> bool:
        tables = self._tables
        chunks, jobs = _table(_name(tables.chunks)), _table(_name(tables.jobs))
        predictions, failed_rows = _table(_name(tables.predictions)), _table(_name(tables.failed))
        ids = (lease.job_id, lease.chunk_no, lease.token)

        def work(connection: Any, direct: bool) -> bool:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT CAST(floor(extract(epoch FROM lease_expires_at - clock_timestamp())"
                    f" * 1000) AS bigint) FROM {chunks}"
                    " WHERE job_id = $1 AND chunk_no = $2 AND lease_token = $3",
                    ids,
                )
                left = cursor.fetchall()
                if not left or left[0][0] is None or left[0][0] <= 0:
                    connection.rollback()
                    return False
                # No statement, lock wait or idle moment of this transaction outlives the lease.
                # The staged rows are sorted in memory, not in temporary files (4 MB, the
                # server's default, is less than a chunk of 50,000 predictions).
                cursor.execute(
                    "SELECT set_config('statement_timeout', $1, true), "
                    "set_config('lock_timeout', $1, true), "
                    "set_config('idle_in_transaction_session_timeout', $1, true), "
                    "set_config('work_mem', $2, true)",
                    (str(left[0][0]), _SORT_MEMORY),
                )
                cursor.fetchall()
                if scored.count and direct:
                    # Straight into the table by binary COPY: no staging, no conflict checks.
                    cursor.adbc_ingest(
                        tables.predictions.name,
                        _with_lease(scored.table, lease),
                        mode="append",
                        db_schema_name=tables.predictions.schema,
                    )
                elif scored.count:
                    cursor.adbc_ingest(
                        "_scorebox_staging", scored.table, mode="replace", temporary=True
                    )
                    cursor.execute(
                        f"INSERT INTO {predictions} (source_table, model_tag, row_id, "
                        "predicted_label, predicted_value, probability, probabilities, job_id) "
                        "SELECT $1, $2, row_id, predicted_label, predicted_value, probability, "
                        "CAST(probabilities AS json), $3 FROM _scorebox_staging "
                        'ORDER BY row_id COLLATE "C" '
                        "ON CONFLICT (source_table, model_tag, row_id) DO UPDATE SET "
                        "predicted_label = excluded.predicted_label, "
                        "predicted_value = excluded.predicted_value, "
                        "probability = excluded.probability, "
                        "probabilities = excluded.probabilities, job_id = excluded.job_id, "
                        "scored_at = now()",
                        (lease.table_name, lease.model_tag, lease.job_id),
                    )
                if scored.failed:
                    reasons = pa.table(
                        {
                            "row_id": [k for k, _ in scored.failed],
                            "reason": [r for _, r in scored.failed],
                        }
                    )
                    cursor.adbc_ingest("_scorebox_failed", reasons, mode="replace", temporary=True)
                    cursor.execute(
                        f"INSERT INTO {failed_rows} (job_id, row_id, reason) SELECT $1, row_id, "
                        'reason FROM _scorebox_failed ORDER BY row_id COLLATE "C" '
                        "ON CONFLICT (job_id, row_id) "
                        "DO UPDATE SET reason = excluded.reason",
                        (lease.job_id,),
                    )
                # The fence, last: the lease must still be this worker's and unexpired now.
                cursor.execute(
                    f"UPDATE {chunks} SET status = 'done', lease_token = NULL, rows_scored = $4, "
                    "rows_failed = $5, profile = CAST($6 AS json), updated_at = now() "
                    "WHERE job_id = $1 AND chunk_no = $2 "
                    "AND lease_token = $3 AND status = 'running' "
                    "AND lease_expires_at > clock_timestamp() RETURNING 1",
                    (*ids, scored.count, len(scored.failed), json.dumps(scored.profile)),
                )
                if not cursor.fetchall():
                    connection.rollback()
                    return False
                _finish_job(cursor, jobs, chunks, lease.job_id, scored.count, len(scored.failed))
            connection.commit()
            return True

        import adbc_driver_manager

        try:
            written: bool = self._run(lambda connection: work(connection, direct=True))
        except adbc_driver_manager.Error as exc:
            # Some of these rows have a prediction of this model already (a job run again, or
            # two jobs on one table): the chunk is written again as an upsert, in key order.
            # So is a chunk whose copy ADBC refused before it started (a table missing: ADBC
            # says so without an SQLSTATE), so that the upsert's error names the problem.
            refused = isinstance(exc, adbc_driver_manager.ProgrammingError)
            if getattr(exc, "sqlstate", None) != _UNIQUE_VIOLATION and not refused:
                raise
            written = self._run(lambda connection: work(connection, direct=False))
        if not written:
            log.warning("chunk %s/%s: lease lost, nothing written", lease.job_id, lease.chunk_no)
        return written


def _with_lease(scored: pa.Table, lease: Lease) -> pa.Table:
    """A chunk's predictions with the columns its lease gives, as the predictions table has
    them (a row id as text, as the upsert's cast makes it)."""
    rows = scored.num_rows
    return (
        scored.set_column(
            scored.schema.get_field_index("row_id"),
            "row_id",
            pc.cast(scored.column("row_id"), pa.string()),
        )
        .append_column("source_table", pa.repeat(pa.scalar(lease.table_name, pa.string()), rows))
        .append_column("model_tag", pa.repeat(pa.scalar(lease.model_tag, pa.string()), rows))
        .append_column("job_id", pa.repeat(pa.scalar(lease.job_id, pa.int32()), rows))
    )


def _given(name: str) -> str:
    """A value given to a read as a setting of its transaction (see PostgresStore.read)."""
    return f"current_setting('scorebox.{name}')"


def _name(table: Any) -> TableName:
    return TableName(table.schema, table.name)


def _finish_job(cursor: Any, jobs: str, chunks: str, job_id: int, scored: int, failed: int) -> None:
    """Count the chunk's rows on its job; fail the job past --max-failed-rows; end it when this
    was its last chunk (a new statement sees every chunk committed before it took the job row)."""
    cursor.execute(
        f"UPDATE {jobs} SET rows_scored = rows_scored + $2, rows_failed = rows_failed + $3 "
        "WHERE id = $1",
        (job_id, scored, failed),
    )
    if failed:
        cursor.execute(
            f"UPDATE {jobs} SET status = 'failed', finished_at = now(), error = "
            "rows_failed || ' rows failed, more than --max-failed-rows ' || max_failed_rows || "
            "'; see `scorebox jobs show ' || id || '`' "
            "WHERE id = $1 AND status IN ('queued', 'running') AND rows_failed > max_failed_rows",
            (job_id,),
        )
    cursor.execute(
        f"UPDATE {jobs} SET status = CASE WHEN rows_failed > 0 THEN 'succeeded_with_errors' "
        "ELSE 'succeeded' END, finished_at = now(), "
        # Rows inserted into a chunk's id range after submission are scored too: count them.
        "rows_total = GREATEST(rows_total, rows_scored + rows_failed) "
        "WHERE id = $1 AND status = 'running' "
        f"AND NOT EXISTS (SELECT 1 FROM {chunks} WHERE job_id = $1 AND status <> 'done')",
        (job_id,),
    )


# --- any other database, through SQLAlchemy ----------------------------------------------------


def _array(values: list[Any]) -> pa.Array:
    """Values as an Arrow array of their own type, or as text when they are of mixed types."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())


class PortableStore:
    """Chunks read with a plain SELECT and written row by row (SQLite, where there is no COPY);
    leases are measured on this machine's clock, the only one there is."""

    def __init__(self, engine: Engine, tables: Tables) -> None:
        self._engine = engine
        self._tables = tables

    def close(self) -> None:
        """Nothing to close: the engine's pool belongs to the caller."""

    def read(self, job: dict[str, Any], lo: str, hi: str) -> Rows:
        features: list[dict[str, str]] = job["features"]
        bounds = (key_value(job["key_kind"], lo), key_value(job["key_kind"], hi))
        with self._engine.connect() as conn:
            source = reflect(conn, parse_table(job["table_name"]))
            ids = source.c[job["id_column"]]
            query = (
                select(ids, *(source.c[f["name"]] for f in features))
                .where(ids >= bounds[0], ids <= bounds[1])
                .order_by(ids)
            )
            if job["mode"] == "new":
                query = query.where(
                    unscored(
                        source,
                        job["id_column"],
                        self._tables.predictions,
                        job["table_name"],
                        job["model_tag"],
                    )
                )
            rows = conn.execute(query).all()
        columns: list[tuple[Any, ...]] = (
            list(zip(*rows, strict=True)) if rows else [() for _ in range(len(features) + 1)]
        )
        arrays = {
            f["name"]: _array(list(values)) for f, values in zip(features, columns[1:], strict=True)
        }
        return Rows(pa.array([str(k) for k in columns[0]], pa.string()), pa.table(arrays))

    def write(self, lease: Lease, scored: Scored) -> bool:
        tables = self._tables
        chunks, jobs = tables.chunks, tables.jobs
        now = utcnow()
        with self._engine.begin() as conn:
            if scored.count:
                fixed = {
                    "source_table": lease.table_name,
                    "model_tag": lease.model_tag,
                    "job_id": lease.job_id,
                }
                rows = [row | fixed for row in scored.table.to_pylist()]
                for row in rows:
                    if row["probabilities"] is not None:
                        row["probabilities"] = json.loads(row["probabilities"])
                insert = insert_for(conn, tables.predictions)
                updated = [*PREDICTION_COLUMNS[1:], "job_id"]
                conn.execute(
                    insert.on_conflict_do_update(
                        index_elements=["source_table", "model_tag", "row_id"],
                        set_={n: insert.excluded[n] for n in updated} | {"scored_at": now},
                    ),
                    rows,
                )
            if scored.failed:
                insert = insert_for(conn, tables.failed)
                conn.execute(
                    insert.on_conflict_do_update(
                        index_elements=["job_id", "row_id"], set_={"reason": insert.excluded.reason}
                    ),
                    [{"job_id": lease.job_id, "row_id": k, "reason": r} for k, r in scored.failed],
                )
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
                    rows_scored=scored.count,
                    rows_failed=len(scored.failed),
                    updated_at=now,
                    profile=scored.profile,
                )
            ).rowcount
            if fenced == 0:
                conn.rollback()
                log.warning(
                    "chunk %s/%s: lease lost, nothing written", lease.job_id, lease.chunk_no
                )
                return False
            failed = len(scored.failed)
            conn.execute(
                update(jobs)
                .where(jobs.c.id == lease.job_id)
                .values(
                    rows_scored=jobs.c.rows_scored + scored.count,
                    rows_failed=jobs.c.rows_failed + failed,
                )
            )
            if failed:
                conn.execute(
                    update(jobs)
                    .where(
                        jobs.c.id == lease.job_id,
                        jobs.c.status.in_(("queued", "running")),
                        jobs.c.rows_failed > jobs.c.max_failed_rows,
                    )
                    .values(
                        status="failed",
                        finished_at=now,
                        error=f"more rows failed than --max-failed-rows; see `scorebox jobs show "
                        f"{lease.job_id}`",
                    )
                )
            conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == lease.job_id,
                    jobs.c.status == "running",
                    ~exists().where(
                        and_(chunks.c.job_id == lease.job_id, chunks.c.status != "done")
                    ),
                )
                .values(
                    status=case(
                        (jobs.c.rows_failed > 0, "succeeded_with_errors"), else_="succeeded"
                    ),
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


def make_store(engine: Engine, tables: Tables, application_name: str = "scorebox") -> Store:
    """The store for ``engine``'s database."""
    if engine.dialect.name == "postgresql":
        url = engine.url.render_as_string(hide_password=False)
        return PostgresStore(url, tables, application_name)
    return PortableStore(engine, tables)
