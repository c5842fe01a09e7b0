"""`scorebox seed`: the example feature table (scikit-learn's breast cancer data, or a synthetic
table of the same shape for load tests). The only place that knows the example data set."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Integer,
    MetaData,
    Table,
    inspect,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

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


def _table(name: str, features: list[str], id_column: str, target_column: str) -> Table:
    parsed = parse_table(name)
    return Table(
        parsed.name,
        MetaData(),
        Column(id_column, BigInteger, primary_key=True, autoincrement=False),
        *(Column(feature, Double, nullable=True) for feature in features),
        Column(target_column, Integer, nullable=True),
        schema=parsed.schema,
    )


def _rename(frame: pd.DataFrame, id_column: str, target_column: str) -> pd.DataFrame:
    return frame.rename(columns={"id": id_column, "target": target_column})


def seed(
    conn: Connection,
    table_name: str,
    *,
    id_column: str,
    target_column: str,
    rows: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Create ``table_name`` if needed and load the example rows; ids already there are kept.

    Returns the number of rows inserted (0 when seeding again).
    """
    if rows is not None and rows < 1:
        raise DataError(f"--rows must be at least 1, got {rows}")
    batches = iter([example_frame()]) if rows is None else synthetic_batches(rows)
    first = _rename(next(batches), id_column, target_column)
    features = [c for c in first.columns if c not in (id_column, target_column)]
    table = _table(table_name, features, id_column, target_column)
    parsed = parse_table(table_name)
    schema, bare = parsed.schema, parsed.name

    if inspect(conn).has_table(bare, schema=schema):
        existing = {c["name"] for c in inspect(conn).get_columns(bare, schema=schema)}
        missing = [c.name for c in table.columns if c.name not in existing]
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

    def renamed() -> Iterator[pd.DataFrame]:
        yield first
        for batch in batches:
            yield _rename(batch, id_column, target_column)

    names = [c.name for c in table.columns]
    if conn.dialect.name == "postgresql":
        return _seed_postgres(conn, table, names, renamed(), empty=empty, on_batch=on_batch)
    inserted = 0
    for batch in renamed():
        statement = sqlite.insert(table).on_conflict_do_nothing()
        result = conn.execute(
            statement,
            [{str(k): v for k, v in row.items()} for row in batch[names].to_dict("records")],
        )
        inserted += max(result.rowcount, 0)
        if on_batch:
            on_batch(len(batch))
    return inserted


def _seed_postgres(
    conn: Connection,
    table: Table,
    names: list[str],
    batches: Iterator[pd.DataFrame],
    *,
    empty: bool,
    on_batch: Callable[[int], None] | None,
) -> int:
    """COPY straight into an empty table; otherwise COPY into a temporary table and insert the
    ids that are not there yet, so seeding twice leaves one copy of each row."""

    # Binary COPY needs the exact width of each column: id int8, features float8, target int4.
    dtypes = {name: np.float64 for name in names} | {
        names[0]: np.int64,
        names[-1]: np.int32,
    }

    def columns() -> Iterator[list[np.ndarray]]:
        for batch in batches:
            yield [batch[name].to_numpy(dtype=dtypes[name]) for name in names]
            if on_batch:
                on_batch(len(batch))

    if empty:
        return copy_columns(conn, (table.schema, table.name), names, columns())
    staging = Table(
        f"_scorebox_seed_{table.name}",
        MetaData(),
        *(Column(c.name, c.type) for c in table.columns),
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )
    staging.create(conn)
    copy_columns(conn, (None, staging.name), names, columns())
    statement = (
        postgresql.insert(table)
        .from_select(names, select(staging))
        .on_conflict_do_nothing(index_elements=[names[0]])
    )
    return conn.execute(statement.execution_options(preserve_rowcount=True)).rowcount
