"""How a job reads its table, decided when it is submitted: the key's bounds (:func:`key_value`),
which rows mode ``new`` keeps (:func:`unscored`), and how each feature column is read
(:func:`read_as`): a column whose type fits the model's kind is read typed; anything else is
read as text, which the service parses value by value (a value that does not parse fails its
row, not the chunk). worker/store.py does the reading.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    Float,
    Integer,
    Numeric,
    Table,
    and_,
    cast,
    exists,
)
from sqlalchemy.types import Text


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
    """How to read a column of ``column_type`` for a feature of ``kind``: ``number``,
    ``decimal`` (exact numerics, read as double precision), ``bool``, ``date``, ``timestamp``,
    ``timestamptz`` (typed) or ``text`` (parsed by the service)."""
    if kind == "number" and isinstance(column_type, Integer | Float):
        return "number"
    if kind == "number" and isinstance(column_type, Numeric):
        return "decimal"
    if kind == "bool" and isinstance(column_type, Boolean):
        return "bool"
    if kind in ("date", "datetime"):
        if isinstance(column_type, DateTime):
            return "timestamptz" if column_type.timezone else "timestamp"
        if isinstance(column_type, Date):
            return "date"
    return "text"
