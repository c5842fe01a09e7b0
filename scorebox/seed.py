"""`scorebox seed`: example feature tables. The only place that knows the example data sets.

- ``breast_cancer`` (the default): scikit-learn's breast cancer data, 30 numbers and a 0/1
  target; with ``rows``, synthetic rows of the same shape for load tests.
- ``penguins``: the Palmer penguins (the ``palmerpenguins`` package), a mixed-type table as
  people have them: text ids, categories, booleans, dates, timestamps, free text, NULLs and
  column names with spaces and capitals; with ``rows``, resampled penguins.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Double,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    inspect,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeEngine

from scorebox.errors import DataError
from scorebox.names import parse_table
from scorebox.pgcopy import copy_columns

_BATCH_ROWS = 100_000


def example_frame() -> pd.DataFrame:
    """The breast cancer data set with SQL-friendly column names and ids 1..569."""
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=lambda c: re.sub(r"\W+", "_", c.strip()).lower())
    frame.insert(0, "id", np.arange(1, len(frame) + 1, dtype=np.int64))
    return frame


def synthetic_batches(rows: int, random_state: int = 0) -> Iterator[pd.DataFrame]:
    """Rows shaped like the example data: each class's features drawn from its own normal
    distribution, so a model still learns something. Deterministic for a given ``rows``."""
    example = example_frame()
    features = [c for c in example.columns if c not in ("id", "target")]
    classes = example["target"].to_numpy()
    labels, counts = np.unique(classes, return_counts=True)
    priors = counts / counts.sum()
    stats = {
        label: (
            example.loc[classes == label, features].mean().to_numpy(),
            example.loc[classes == label, features].std().to_numpy(),
        )
        for label in labels
    }
    lower = example[features].min().to_numpy()
    for start in range(0, rows, _BATCH_ROWS):
        n = min(_BATCH_ROWS, rows - start)
        rng = np.random.default_rng([random_state, start])
        target = rng.choice(labels, size=n, p=priors)
        values = np.empty((n, len(features)))
        for label, (mean, std) in stats.items():
            mask = target == label
            values[mask] = rng.normal(mean, std, size=(int(mask.sum()), len(features)))
        batch = pd.DataFrame(np.maximum(values, lower), columns=features)
        batch.insert(0, "id", np.arange(start + 1, start + n + 1, dtype=np.int64))
        batch["target"] = target.astype(np.int32)
        yield batch


# The penguins table: column name -> SQL type ("id" and "target" are renamed as configured).
PENGUIN_COLUMNS: dict[str, TypeEngine[Any]] = {
    "id": Text(),
    "Island": String(16),
    "Bill Length (mm)": Double(),
    "Bill Depth (mm)": Numeric(5, 1),
    "Flipper Length (mm)": Integer(),
    "Body Mass (g)": BigInteger(),
    "Sex": String(8),
    "Is Male": Boolean(),
    "Year": SmallInteger(),
    "Seen On": Date(),
    "Weighed At": DateTime(timezone=True),
    "Field Notes": Text(),
    "target": Text(),
}
_WORDS = ("calm", "moulting", "nesting", "tagged", "shy", "curious", "loud", "banded")


def penguin_batches(rows: int | None = None, random_state: int = 0) -> Iterator[pd.DataFrame]:
    """The 344 Palmer penguins, or ``rows`` penguins resampled from them (measurements jittered),
    with a visit date and time, a free-text note and an id like ``P-0000042``."""
    from palmerpenguins import load_penguins

    real = load_penguins()
    total = len(real) if rows is None else rows
    for start in range(0, total, _BATCH_ROWS):
        n = min(_BATCH_ROWS, total - start)
        rng = np.random.default_rng([random_state, start])
        picked = real if rows is None else real.iloc[rng.integers(0, len(real), n)]
        picked = picked.reset_index(drop=True)
        numbers = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
        if rows is not None:
            scale = picked[numbers].std().to_numpy() * 0.05
            picked[numbers] = picked[numbers] + rng.normal(0, 1, (n, 4)) * scale
        index = np.arange(start, start + n)
        years = picked["year"].to_numpy()
        seen = [
            date(int(y), 1 + int(i) % 12, 1 + int(i) % 28)
            for y, i in zip(years, index, strict=True)
        ]
        frame = pd.DataFrame(
            {
                "id": [f"P-{i + 1:07d}" for i in index],
                "Island": picked["island"],
                "Bill Length (mm)": picked["bill_length_mm"].round(2),
                "Bill Depth (mm)": picked["bill_depth_mm"].round(1),
                "Flipper Length (mm)": picked["flipper_length_mm"].round().astype("Int64"),
                "Body Mass (g)": picked["body_mass_g"].round().astype("Int64"),
                "Sex": picked["sex"],
                "Is Male": picked["sex"].map({"male": True, "female": False}),
                "Year": years,
                "Seen On": seen,
                "Weighed At": [
                    datetime(d.year, d.month, d.day, tzinfo=UTC)
                    + timedelta(minutes=int(i) * 37 % 1440)
                    for d, i in zip(seen, index, strict=True)
                ],
                "Field Notes": [
                    f"#{i + 1}: {_WORDS[int(i) % len(_WORDS)]} {s} near {isl}"
                    for i, s, isl in zip(index, picked["species"], picked["island"], strict=True)
                ],
                "target": picked["species"],
            }
        )
        yield frame


@dataclass(frozen=True)
class _Example:
    columns: Callable[[list[str]], dict[str, TypeEngine[Any]]]
    batches: Callable[[int | None], Iterator[pd.DataFrame]]


def _breast_cancer_columns(names: list[str]) -> dict[str, TypeEngine[Any]]:
    features: dict[str, TypeEngine[Any]] = {
        name: Double() for name in names if name not in ("id", "target")
    }
    return {"id": BigInteger(), **features, "target": Integer()}


EXAMPLES = {
    "breast_cancer": _Example(
        _breast_cancer_columns,
        lambda rows: iter([example_frame()]) if rows is None else synthetic_batches(rows),
    ),
    "penguins": _Example(lambda names: PENGUIN_COLUMNS, penguin_batches),
}


def seed(
    conn: Connection,
    table_name: str,
    *,
    id_column: str,
    target_column: str,
    rows: int | None = None,
    example: str = "breast_cancer",
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Create ``table_name`` if needed and load the example rows; ids already there are kept.

    Returns the number of rows inserted (0 when seeding again).
    """
    if rows is not None and rows < 1:
        raise DataError(f"--rows must be at least 1, got {rows}")
    if example not in EXAMPLES:
        raise DataError(f"no example {example!r}; choose one of {', '.join(EXAMPLES)}")
    renames = {"id": id_column, "target": target_column}
    batches = (b.rename(columns=renames) for b in EXAMPLES[example].batches(rows))
    first = next(batches)
    types = {
        renames.get(k, k): t for k, t in EXAMPLES[example].columns(list(first.columns)).items()
    }
    parsed = parse_table(table_name)
    table = Table(
        parsed.name,
        MetaData(),
        *(
            Column(name, kind, primary_key=name == id_column, autoincrement=False)
            for name, kind in types.items()
        ),
        schema=parsed.schema,
    )
    if inspect(conn).has_table(parsed.name, schema=parsed.schema):
        existing = {c["name"] for c in inspect(conn).get_columns(parsed.name, schema=parsed.schema)}
        missing = [name for name in types if name not in existing]
        if missing:
            raise DataError(
                f"table {table_name!r} already exists but lacks the example columns "
                f"{', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}; "
                "seed into another table with SCOREBOX_FEATURE_TABLE"
            )
        empty = conn.execute(select(table.c[id_column]).limit(1)).first() is None
    else:
        table.create(conn)
        empty = True

    def counted() -> Iterator[pd.DataFrame]:
        for batch in (first, *batches):
            yield batch
            if on_batch:
                on_batch(len(batch))

    if conn.dialect.name == "postgresql":
        return _seed_postgres(conn, table, counted(), empty=empty)
    inserted = 0
    for batch in counted():
        result = conn.execute(sqlite.insert(table).on_conflict_do_nothing(), _records(batch))
        inserted += max(result.rowcount, 0)
    return inserted


def _records(batch: pd.DataFrame) -> list[dict[str, object]]:
    """Rows as dicts of Python values, None for missing."""
    plain = batch.astype(object).where(batch.notna(), None)
    return [{str(k): v for k, v in row.items()} for row in plain.to_dict("records")]


def _copy(conn: Connection, table: Table, batches: Iterator[pd.DataFrame]) -> None:
    """COPY into ``table``: binary and built with numpy for fixed-width numbers, row by row
    (psycopg adapting each value) for anything else."""
    names = [c.name for c in table.columns]
    widths = {BigInteger: np.int64, Integer: np.int32, Double: np.float64}
    numeric = all(type(c.type) in widths for c in table.columns)
    if numeric:
        copy_columns(
            conn,
            (table.schema, table.name),
            names,
            ([b[n].to_numpy(dtype=widths[type(table.c[n].type)]) for n in names] for b in batches),
        )
        return
    from psycopg import sql

    target = sql.Identifier(*(p for p in (table.schema, table.name) if p is not None))
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        target, sql.SQL(", ").join(map(sql.Identifier, names))
    )
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for batch in batches:
            plain = batch[names].astype(object).where(batch[names].notna(), None)
            for row in plain.itertuples(index=False, name=None):
                copy.write_row(row)


def _seed_postgres(
    conn: Connection, table: Table, batches: Iterator[pd.DataFrame], *, empty: bool
) -> int:
    """COPY straight into an empty table; otherwise COPY into a temporary table and insert the
    ids that are not there yet, so seeding twice leaves one copy of each row."""
    if empty:
        rows = 0

        def counting() -> Iterator[pd.DataFrame]:
            nonlocal rows
            for batch in batches:
                rows += len(batch)
                yield batch

        _copy(conn, table, counting())
        return rows
    staging = Table(
        f"_scorebox_seed_{table.name}",
        MetaData(),
        *(Column(c.name, c.type) for c in table.columns),
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )
    staging.create(conn)
    _copy(conn, staging, batches)
    key = next(c.name for c in table.columns if c.primary_key)
    statement = (
        postgresql.insert(table)
        .from_select([c.name for c in table.columns], select(staging))
        .on_conflict_do_nothing(index_elements=[key])
    )
    return conn.execute(statement.execution_options(preserve_rowcount=True)).rowcount
