"""Reading the training rows and deciding what to learn from: which columns are features (free
text is left out), what the target's labels are, and what was dropped on the way."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sqlalchemy import Boolean, Float, Integer, Numeric, select
from sqlalchemy.engine import Connection

from scorebox.db import reflect
from scorebox.errors import DataError
from scorebox.features import Feature, FeatureSchema

# A text column with more distinct values than this (and mostly unique) is free text.
FREE_TEXT_SHARE = 0.5
# Fewer usable rows than this cannot give both a fit and a holdout worth reporting.
MIN_ROWS = 10


@dataclass(frozen=True)
class TrainingData:
    """Rows fit for training, in id order, the features to learn from, and what was done."""

    frame: pd.DataFrame
    features: list[Feature]
    left_out: dict[str, str]
    notes: dict[str, int] = field(default_factory=dict)


def load(conn: Connection, schema: FeatureSchema, max_categories: int) -> TrainingData:
    """Read id, features and target; drop rows without a target, with an infinite target or
    with an infinite feature;
    leave out free-text and all-NULL columns (or refuse them when they were asked for)."""
    table = reflect(conn, schema.table)
    columns = [schema.id_column, *schema.feature_names, schema.target_column]
    query = select(*(table.c[c] for c in columns)).order_by(table.c[schema.id_column])
    frame = pd.read_sql(query, conn, coerce_float=True)
    if frame.empty:
        raise DataError(f"table {str(schema.table)!r} has no rows to train on")

    features, left_out = _usable(frame, schema, max_categories)
    has_target = frame[schema.target_column].notna()
    dropped = int((~has_target).sum())
    frame = frame[has_target].reset_index(drop=True)
    if frame.empty:
        raise DataError(
            f"target column {schema.target_column!r} is NULL in every row of {str(schema.table)!r}"
        )
    target = frame[schema.target_column]
    infinite_target = (
        np.isinf(target.to_numpy(dtype=np.float64))
        if target.dtype.kind == "f"
        else np.zeros(len(frame), dtype=bool)
    )
    frame = frame[~infinite_target].reset_index(drop=True)
    numbers = [f.name for f in features if f.kind == "number"]
    infinite = np.isinf(frame[numbers].to_numpy(dtype=np.float64)).any(axis=1)
    frame = frame[~infinite].reset_index(drop=True)
    frame[schema.target_column] = labels(frame[schema.target_column], schema.target_type)
    if len(frame) < MIN_ROWS:
        raise DataError(
            f"table {str(schema.table)!r} has {len(frame)} usable row(s); at least {MIN_ROWS} "
            "are needed to fit a model and evaluate it on held-out rows"
        )
    names = [f.name for f in features]
    notes = {
        "rows_dropped_null_target": dropped,
        "rows_dropped_infinite_target": int(infinite_target.sum()),
        "rows_dropped_infinite_feature": int(infinite.sum()),
        "rows_with_null_features_imputed": int(frame[names].isna().any(axis=1).sum()),
    }
    return TrainingData(frame, features, left_out, notes)


def _usable(
    frame: pd.DataFrame, schema: FeatureSchema, max_categories: int
) -> tuple[list[Feature], dict[str, str]]:
    """The candidate features worth learning from; the rest with the reason."""
    features: list[Feature] = []
    left_out = dict(schema.left_out)
    for feature in schema.features:
        values = frame[feature.name]
        present = int(values.notna().sum())
        if present == 0:
            if schema.explicit:
                raise DataError(
                    f"feature column {feature.name!r} is NULL in every row of "
                    f"{str(schema.table)!r}; fill it or leave it out of SCOREBOX_FEATURE_COLUMNS"
                )
            left_out[feature.name] = "NULL in every row"
            continue
        if feature.kind == "category" and not schema.explicit:
            distinct = int(values.nunique())
            if distinct > max_categories and distinct > FREE_TEXT_SHARE * present:
                left_out[feature.name] = (
                    f"free text: {distinct} distinct values in {present} rows "
                    "(name it in SCOREBOX_FEATURE_COLUMNS to use its most frequent values)"
                )
                continue
        features.append(feature)
    if not features:
        raise DataError(
            f"table {str(schema.table)!r} has no usable feature columns "
            f"(left out: {'; '.join(f'{k}: {v}' for k, v in left_out.items())})"
        )
    return features, left_out


def labels(target: pd.Series, sql_type: object) -> pd.Series:
    """The target (without NULLs) as plain labels or values: booleans, integers, text or floats."""
    if isinstance(sql_type, Boolean):
        return target.astype(bool)
    if isinstance(sql_type, Integer) or _integral_numeric(sql_type):
        return target.astype(np.int64)
    if isinstance(sql_type, Float | Numeric):
        return target.astype(np.float64)
    return target.map(str).astype(object)


def _integral_numeric(sql_type: object) -> bool:
    return isinstance(sql_type, Numeric) and not isinstance(sql_type, Float) and sql_type.scale == 0


def is_discrete(sql_type: object) -> bool:
    """A target type whose values are labels or counts, never measurements (floats)."""
    return not isinstance(sql_type, Float | Numeric) or _integral_numeric(sql_type)


def fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 over the column names and pandas' per-row hashes of the training rows."""
    digest = hashlib.sha256("\x1f".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()
