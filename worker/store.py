"""Where a chunk's rows come from and its predictions go: PostgreSQL through ADBC (rows read as
Arrow columns in C++ by binary COPY, predictions written by binary COPY), or any other database
through SQLAlchemy (the SQLite file of `scorebox demo`).

A chunk's write is one transaction, bounded by what is left of its lease (statement, lock and
idle timeouts) and fenced at its end: predictions are copied into the table in key order (or,
when some are there already, staged and upserted in key order), failed rows recorded, and the
chunk marked done only if its lease is still this worker's and unexpired; otherwise nothing is
written. The chunk's completion is the ledger's (scorebox/ledger.py), as are the lock order and
the fence's statements. Locks are taken in that order: prediction rows, then the chunk row, then
the job row.
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
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url

from scorebox import ledger
from scorebox.db import Tables, insert_for, reflect, utcnow
from scorebox.ledger import Lease
from scorebox.names import TableName, parse_table, quote_identifier
from worker.reading import key_value, unscored

log = logging.getLogger(__name__)


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


def _table(name: TableName) -> str:
    return ".".join(quote_identifier(p) for p in (name.schema, name.name) if p is not None)


def _expression(name: str, how: str) -> str:
    """How a feature column is selected: as its type when it fits the feature's kind (exact
    numerics as double precision; infinite dates as NULL, which Arrow could not hold), else as
    text."""
    column = f"t.{quote_identifier(name)}"
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
        key = f"t.{quote_identifier(job['id_column'])}"
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

        names = {"chunks": chunks, "jobs": jobs}

        def work(connection: Any, direct: bool) -> bool:
            with connection.cursor() as cursor:
                left = ledger.lease_left_adbc(cursor, names, lease)
                if left is None or left <= 0:
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
                    (str(left), _SORT_MEMORY),
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
                            "row_id": pa.array([str(k) for k, _ in scored.failed], pa.string()),
                            "reason": [r for _, r in scored.failed],
                        }
                    )
                    cursor.adbc_ingest("_scorebox_failed", reasons, mode="replace", temporary=True)
                    cursor.execute(
                        ledger.ADBC_FAILED.format(failed=failed_rows, staged="_scorebox_failed"),
                        (lease.job_id,),
                    )
                # The fence, last: the lease must still be this worker's and unexpired now.
                finished = ledger.finish_chunk_adbc(
                    cursor,
                    names,
                    lease,
                    scored.count,
                    len(scored.failed),
                    json.dumps(scored.profile),
                )
                if not finished:
                    connection.rollback()
                    return False
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
                ledger.record_failed(conn, tables, lease.job_id, scored.failed)
            finished = ledger.finish_chunk(
                conn, tables, lease, scored.count, len(scored.failed), scored.profile
            )
            if not finished:
                conn.rollback()
                log.warning(
                    "chunk %s/%s: lease lost, nothing written", lease.job_id, lease.chunk_no
                )
                return False
        return True


def make_store(engine: Engine, tables: Tables, application_name: str = "scorebox") -> Store:
    """The store for ``engine``'s database."""
    if engine.dialect.name == "postgresql":
        url = engine.url.render_as_string(hide_password=False)
        return PostgresStore(url, tables, application_name)
    return PortableStore(engine, tables)
