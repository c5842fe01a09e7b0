"""PostgreSQL binary COPY of fixed-width numeric columns, encoded with numpy, not row by row."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from psycopg import sql
from sqlalchemy.engine import Connection

_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_TRAILER = (-1).to_bytes(2, "big", signed=True)


def encode_binary(columns: Sequence[np.ndarray]) -> bytes:
    """Rows of COPY's binary format (no header) for equally long int64/int32/float64 columns.

    Every value is written as present: callers pass columns without NULLs.
    """
    n_rows = len(columns[0])
    fields: list[tuple[str, str]] = [("count", ">i2")]
    for i, column in enumerate(columns):
        fields += [(f"len{i}", ">i4"), (f"val{i}", ">" + column.dtype.str[1:])]
    rows = np.empty(n_rows, dtype=np.dtype(fields))
    rows["count"] = len(columns)
    for i, column in enumerate(columns):
        rows[f"len{i}"] = column.dtype.itemsize
        rows[f"val{i}"] = column
    return rows.tobytes()


def copy_columns(
    conn: Connection,
    table: tuple[str | None, str],
    names: Sequence[str],
    batches: Iterable[Sequence[np.ndarray]],
) -> int:
    """COPY numeric column batches into ``table`` (schema, name); return the number of rows."""
    schema, name = table
    target = sql.Identifier(schema, name) if schema else sql.Identifier(name)
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        target, sql.SQL(", ").join(sql.Identifier(n) for n in names)
    )
    driver = conn.connection.driver_connection
    assert driver is not None
    total = 0
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        copy.write(_HEADER)
        for batch in batches:
            copy.write(encode_binary(batch))
            total += len(batch[0])
        copy.write(_TRAILER)
    return total
