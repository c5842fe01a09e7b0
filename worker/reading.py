"""Reading a chunk's rows as Arrow columns of the model's features, typed as the table stores
them (numbers, booleans, dates, timestamps, text), with each row's key as text.

How a feature is read was decided when the job was submitted (:func:`read_as`): a column whose
type fits the model's kind is read typed; anything else is read as text, which the service
parses value by value (a value that does not parse fails its row, not the chunk).
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql
from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    Engine,
    Float,
    Integer,
    Numeric,
    Table,
    and_,
    cast,
    exists,
    select,
)
from sqlalchemy.types import Text

from scorebox.db import Tables, reflect
from scorebox.names import parse_table

# Arrow type of each way of reading a column (``text`` for anything parsed by the service).
_ARROW: dict[str, pa.DataType] = {
    "number": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "text": pa.string(),
}
_ISO_TIME = 'YYYY-MM-DD"T"HH24:MI:SS.US'


def key_value(kind: str, value: str) -> Any:
    """A chunk bound (stored as text) as the Python value that compares like the key column."""
    if kind == "integer":
        return int(value)
    if kind == "uuid":
        return uuid.UUID(value)
    return value


def unscored(source: Table, id_column: str, predictions: Table, table: str, model_tag: str) -> Any:
    """SQL condition: the row has no prediction from ``model_tag`` for table ``table`` yet."""
    return ~exists().where(
        and_(
            predictions.c.source_table == table,
            predictions.c.model_tag == model_tag,
            predictions.c.row_id == cast(source.c[id_column], Text),
        )
    )


def read_as(kind: str, column_type: Any) -> str:
    """How to read a column of ``column_type`` for a feature of ``kind`` (a key of _ARROW)."""
    if kind == "number" and isinstance(column_type, Integer | Float | Numeric):
        return "number"
    if kind == "bool" and isinstance(column_type, Boolean):
        return "bool"
    if kind in ("date", "datetime"):
        if isinstance(column_type, DateTime):
            return "timestamptz" if column_type.timezone else "timestamp"
        if isinstance(column_type, Date):
            return "date"
    return "text"


@dataclass(frozen=True)
class Rows:
    """A chunk's keys (as text) and its feature columns, in key order."""

    keys: list[str]
    table: pa.Table


def read_rows(engine: Engine, tables: Tables, job: dict[str, Any], lo: str, hi: str) -> Rows:
    """The rows of ``job``'s table with keys from ``lo`` to ``hi`` (in mode ``new``, only those
    without a prediction from the job's model)."""
    bounds = (key_value(job["key_kind"], lo), key_value(job["key_kind"], hi))
    if engine.dialect.name == "postgresql":
        return _read_copy(engine, tables, job, bounds)
    return _read_portable(engine, tables, job, bounds)


def _expression(name: str, how: str) -> sql.Composable:
    column = sql.SQL("t.{}").format(sql.Identifier(name))
    if how in ("number", "bool"):
        return column
    if how == "date":
        return sql.SQL("to_char({}, 'YYYY-MM-DD')").format(column)
    if how == "timestamp":
        return sql.SQL("to_char({}, {})").format(column, sql.Literal(_ISO_TIME))
    if how == "timestamptz":
        return sql.SQL("to_char({} AT TIME ZONE 'UTC', {})").format(column, sql.Literal(_ISO_TIME))
    return sql.SQL("CAST({} AS text)").format(column)


def _identifier(name: str) -> sql.Identifier:
    table = parse_table(name)
    return sql.Identifier(table.schema, table.name) if table.schema else sql.Identifier(table.name)


def _read_copy(
    engine: Engine, tables: Tables, job: dict[str, Any], bounds: tuple[Any, Any]
) -> Rows:
    """PostgreSQL: COPY the chunk out as CSV and parse it with Arrow's C++ reader."""
    features: list[dict[str, str]] = job["features"]
    key = sql.SQL("t.{}").format(sql.Identifier(job["id_column"]))
    query = sql.SQL("SELECT CAST({key} AS text), {columns} FROM {source} AS t").format(
        key=key,
        columns=sql.SQL(", ").join(_expression(f["name"], f["read"]) for f in features),
        source=_identifier(job["table_name"]),
    )
    query += sql.SQL(" WHERE {key} >= %s AND {key} <= %s").format(key=key)
    params: list[Any] = list(bounds)
    if job["mode"] == "new":
        query += sql.SQL(
            " AND NOT EXISTS (SELECT 1 FROM {p} AS p WHERE p.source_table = %s "
            "AND p.model_tag = %s AND p.row_id = CAST({key} AS text))"
        ).format(p=_identifier(tables.predictions.fullname), key=key)
        params += [job["table_name"], job["model_tag"]]
    query += sql.SQL(" ORDER BY {key}").format(key=key)
    buffer = io.BytesIO()
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor:
            copy_query = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)
            with cursor.copy(copy_query, params) as copy:
                for block in copy:
                    buffer.write(block)
    names = ["__key", *(f["name"] for f in features)]
    typed = {"__key": pa.string()} | {f["name"]: _ARROW[f["read"]] for f in features}
    try:
        table = _parse(buffer, names, typed)
    except pa.ArrowInvalid:
        # A value the typed reader cannot take (a BC date, say): let the service parse text.
        table = _parse(buffer, names, dict.fromkeys(names, pa.string()))
    keys = table.column("__key").to_pylist()
    return Rows(keys, table.drop_columns(["__key"]))


def _parse(buffer: io.BytesIO, names: list[str], types: dict[str, pa.DataType]) -> pa.Table:
    buffer.seek(0)
    return pacsv.read_csv(
        buffer,
        read_options=pacsv.ReadOptions(column_names=names),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )


def _read_portable(
    engine: Engine, tables: Tables, job: dict[str, Any], bounds: tuple[Any, Any]
) -> Rows:
    """The same rows through a plain SELECT (SQLite, where there is no COPY)."""
    features: list[dict[str, str]] = job["features"]
    with engine.connect() as conn:
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
                    tables.predictions,
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
    return Rows([str(k) for k in columns[0]], pa.table(arrays))


def _array(values: list[Any]) -> pa.Array:
    """Values as an Arrow array of their own type, or as text when they are of mixed types."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())
