"""Reading the training rows and describing them (NULL counts, fingerprint)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Connection

from scorebox.db import reflect_table
from scorebox.errors import DataError
from scorebox.features import FeatureSchema


@dataclass(frozen=True)
class TrainingData:
    """Rows fit for training, in id order, and what was done to get them."""

    frame: pd.DataFrame
    dropped_null_target: int
    rows_with_null_features: int


def load(conn: Connection, schema: FeatureSchema) -> TrainingData:
    """Read id, features and target; drop rows without a target; refuse unusable tables."""
    table = reflect_table(conn, schema.table)
    columns = [schema.id_column, *schema.feature_names, schema.target_column]
    query = select(*(table.c[c] for c in columns)).order_by(table.c[schema.id_column])
    frame = pd.read_sql(query, conn)
    if frame.empty:
        raise DataError(f"table {schema.table!r} has no rows to train on")
    for name in schema.feature_names:
        frame[name] = pd.to_numeric(frame[name], errors="raise").astype(np.float64)
    empty = [name for name in schema.feature_names if frame[name].isna().all()]
    if empty:
        raise DataError(
            f"feature column(s) {', '.join(empty)} are NULL in every row of {schema.table!r}; "
            "fill them or leave them out of SCOREBOX_FEATURE_COLUMNS"
        )
    has_target = frame[schema.target_column].notna()
    dropped = int((~has_target).sum())
    frame = frame[has_target].reset_index(drop=True)
    if frame.empty:
        raise DataError(
            f"target column {schema.target_column!r} is NULL in every row of {schema.table!r}"
        )
    target = frame[schema.target_column]
    if target.dtype.kind == "f" and np.all(np.mod(target, 1) == 0):
        # An integer column with NULLs arrives as float; the labels are integers again.
        frame[schema.target_column] = target.astype(np.int64)
    null_features = int(frame[schema.feature_names].isna().any(axis=1).sum())
    return TrainingData(frame, dropped, null_features)


def fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 over the column names and pandas' per-row hashes of the training rows."""
    digest = hashlib.sha256("\x1f".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()
