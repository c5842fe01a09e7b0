"""Turning feature values of every kind into the float matrix a model reads, the same way on every
path: training (a DataFrame), ``/predict`` (JSON values), ``/v1/predict/arrow`` and batch jobs
(Arrow columns read from PostgreSQL or SQLite).

- number: the value as a float; NULL and NaN are missing; infinity makes the row invalid.
- bool: 1.0 / 0.0; NULL is missing.
- category: the value's position in the categories seen in training; NULL and values never
  seen are missing (unseen ones are counted).
- date / datetime: days since 1970-01-01 UTC (a timestamp without time zone is read as UTC).

The model pipeline starts with :class:`FrameEncoder`, so the registered model's own ``predict``
takes a DataFrame of the table's columns; the service and worker call :func:`encode_columns` or
:func:`encode_records` on the same feature list and skip that step.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.base import BaseEstimator, TransformerMixin

from scorebox.errors import FeatureValueError, InvalidRecordsError, one_line
from scorebox.features import Feature

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US_PER_DAY = 86_400_000_000
_ONE_US = timedelta(microseconds=1)
_TRUE = frozenset({"t", "true", "y", "yes", "1", "on"})
_FALSE = frozenset({"f", "false", "n", "no", "0", "off"})


def label_text(value: Any) -> str:
    """A class label as text, as the predictions table and the probability keys write it
    (booleans as PostgreSQL writes them: ``true`` / ``false``)."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def json_value(value: Any) -> Any:
    """A database (or pandas) value as a JSON record for ``/predict`` carries it."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (not isinstance(value, str) and pd.isna(value) is True):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


# --- single values (JSON records, and text columns whose values must be parsed) -------------


def number_value(value: Any) -> float:
    """A JSON number (never a boolean or a string) as a finite float or NaN for null."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FeatureValueError(f"expected a number, got {_kind_of(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer past the largest double
        number = math.inf
    if not math.isfinite(number):
        raise FeatureValueError("Input should be a finite number")
    return number


def bool_value(value: Any) -> float:
    """true / false (or 1 / 0) as 1.0 / 0.0; NaN for null."""
    if value is None:
        return math.nan
    if value is True or value is False or (isinstance(value, int) and value in (0, 1)):
        return float(value)
    raise FeatureValueError(f"expected true or false, got {_kind_of(value)}")


def days_value(value: Any) -> float:
    """An ISO 8601 date or timestamp (text or a date/datetime object) as days since 1970-01-01
    UTC; NaN for null."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        if not value.strip():
            return math.nan
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise FeatureValueError(
                f"expected an ISO 8601 date or timestamp, got {value!r}"
            ) from None
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return ((moment - _EPOCH) // _ONE_US) / _US_PER_DAY
    if isinstance(value, date):
        return float((value - _EPOCH.date()).days)
    raise FeatureValueError(f"expected an ISO 8601 date or timestamp, got {_kind_of(value)}")


def _kind_of(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


@dataclass
class Encoded:
    """A feature matrix, the reason each invalid row is invalid, and unseen categories."""

    matrix: np.ndarray
    errors: list[str | None]
    unseen: Counter[str] = field(default_factory=Counter)

    @cached_property
    def valid(self) -> np.ndarray:
        """A boolean mask of the rows that can be scored."""
        if not self.rejected:  # the usual batch: no per-row Python
            return np.ones(len(self.errors), dtype=bool)
        return np.array([e is None for e in self.errors], dtype=bool)

    @property
    def rejected(self) -> int:
        """How many rows cannot be scored."""
        return len(self.errors) - self.errors.count(None)

    def error_column(self) -> pa.Array:
        """The reasons as an Arrow column, null for the rows that can be scored."""
        if not self.rejected:
            return pa.nulls(len(self.errors), pa.string())
        return pa.array(self.errors, pa.string())


class _RecordCodec:
    """Per-feature converters for JSON values, built once per feature list."""

    def __init__(self, features: Sequence[Feature]) -> None:
        self.features = list(features)
        self.convert: list[Callable[[Any], float]] = []
        for feature in self.features:
            if feature.kind == "number":
                self.convert.append(number_value)
            elif feature.kind == "bool":
                self.convert.append(bool_value)
            elif feature.kind == "category":
                self.convert.append(self._category(feature))
            else:
                self.convert.append(days_value)
        self.unseen: Counter[str] = Counter()

    def _category(self, feature: Feature) -> Callable[[Any], float]:
        codes = {value: float(code) for code, value in enumerate(feature.categories)}
        name = feature.name

        def convert(value: Any) -> float:
            if value is None:
                return math.nan
            if not isinstance(value, str):
                raise FeatureValueError(f"expected text, got {_kind_of(value)}")
            code = codes.get(value)
            if code is None:
                self.unseen[name] += 1
                return math.nan
            return code

        return convert


_MISSING = object()


def encode_records(
    features: Sequence[Feature], records: Sequence[Any], shown: int = 20
) -> tuple[np.ndarray, Counter[str]]:
    """JSON records as a matrix and the count of unseen categories per feature, checking each
    value against its feature's kind on the way (one pass). Problems raise InvalidRecordsError with
    the first ``shown`` of them; the rest are only counted."""
    codec = _RecordCodec(features)
    names = [f.name for f in features]
    known = set(names)
    matrix = np.empty((len(records), len(names)), dtype=np.float64)
    problems: list[str] = []
    total = 0
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            total += 1
            if len(problems) < shown:
                problems.append(f"records[{i}]: expected an object of feature values")
            continue
        present = 0
        for j, (name, convert) in enumerate(zip(names, codec.convert, strict=True)):
            value = record.get(name, _MISSING)
            if value is _MISSING:
                total += 1
                if len(problems) < shown:
                    problems.append(f"records[{i}].{name}: Field required")
                continue
            present += 1
            try:
                matrix[i, j] = convert(value)
            except FeatureValueError as exc:
                total += 1
                if len(problems) < shown:
                    problems.append(f"records[{i}].{name}: {exc}")
        if len(record) > present:
            for key in record:
                if key not in known:
                    total += 1
                    if len(problems) < shown:
                        problems.append(f"records[{i}].{key}: not a feature of this model")
    if total:
        raise InvalidRecordsError(problems, total)
    return matrix, codec.unseen


# --- Arrow columns (the batch path, and DataFrames through FrameEncoder) --------------------


def _plain(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def _floats(array: pa.Array) -> np.ndarray:
    if pa.types.is_decimal(array.type):
        # Arrow's decimal-to-double cast is not correctly rounded (17.4 -> 17.400000000000002);
        # its text-to-double parse is, and gives what PostgreSQL's text and Python's float give.
        array = pc.cast(array, pa.string())
    # Unchecked: an integer past 2**53 rounds to the nearest double, as Python's float() does.
    doubles = pc.cast(array, pa.float64(), safe=False)
    return np.asarray(doubles.to_numpy(zero_copy_only=False), dtype=np.float64).copy()


def _each(array: pa.Array, convert: Callable[[Any], float]) -> tuple[np.ndarray, list[str | None]]:
    """Convert value by value (text that must be parsed): values and per-row problems."""
    values = np.full(len(array), np.nan)
    problems: list[str | None] = [None] * len(array)
    for i, value in enumerate(array.to_pylist()):
        try:
            values[i] = convert(value)
        except FeatureValueError as exc:
            problems[i] = str(exc)
    return values, problems


def _text_number(value: Any) -> float:
    if value is None or not str(value).strip():
        return math.nan
    try:
        number = float(value)
    except ValueError:
        raise FeatureValueError(f"non-numeric value {value!r}") from None
    if math.isinf(number):
        raise FeatureValueError("infinite value")
    return number


def _text_bool(value: Any) -> float:
    if value is None or not str(value).strip():
        return math.nan
    folded = str(value).strip().lower()
    if folded in _TRUE:
        return 1.0
    if folded in _FALSE:
        return 0.0
    raise FeatureValueError(f"expected true or false, got {value!r}")


def _column(
    feature: Feature, array: pa.Array, unseen: Counter[str]
) -> tuple[np.ndarray, list[str | None] | None]:
    """One column as floats, and per-row problems (None when every value is usable)."""
    kind, kind_type = feature.kind, array.type
    if pa.types.is_null(kind_type):
        return np.full(len(array), np.nan), None
    if kind == "number":
        if pa.types.is_string(kind_type) or pa.types.is_large_string(kind_type):
            return _each(array, _text_number)
        if not (
            pa.types.is_integer(kind_type)
            or pa.types.is_floating(kind_type)
            or pa.types.is_decimal(kind_type)
            or pa.types.is_boolean(kind_type)
        ):
            raise FeatureValueError(f"column {feature.name!r} has type {kind_type}, not a number")
        values = _floats(array)
        infinite = np.isinf(values)
        if infinite.any():
            return values, ["infinite value" if bad else None for bad in infinite]
        return values, None
    if kind == "bool":
        if pa.types.is_boolean(kind_type):
            return _floats(array), None
        if pa.types.is_integer(kind_type) or pa.types.is_floating(kind_type):
            values = _floats(array)
            wrong = ~np.isnan(values) & (values != 0) & (values != 1)
            if wrong.any():
                problems: list[str | None] = [None] * len(values)
                for i in np.flatnonzero(wrong):
                    problems[i] = f"expected true or false, got {_kind_of(values[i])}"
                    values[i] = np.nan
                return values, problems
            return values, None
        if pa.types.is_string(kind_type) or pa.types.is_large_string(kind_type):
            return _each(array, _text_bool)
        raise FeatureValueError(f"column {feature.name!r} has type {kind_type}, not a boolean")
    if kind == "category":
        if pa.types.is_boolean(kind_type):
            array = pc.if_else(array, "true", "false")
        elif not (pa.types.is_string(kind_type) or pa.types.is_large_string(kind_type)):
            try:
                array = pc.cast(array, pa.string())
            except pa.ArrowNotImplementedError:
                raise FeatureValueError(
                    f"column {feature.name!r} has type {kind_type}, not text"
                ) from None
        codes = pc.index_in(array, value_set=pa.array(feature.categories, pa.string()))
        values = _floats(codes)
        missing = int(pc.sum(pc.and_(pc.is_null(codes), pc.is_valid(array))).as_py() or 0)
        if missing:
            unseen[feature.name] += missing
        return values, None
    # date and datetime
    if pa.types.is_date32(kind_type):
        return _floats(pc.cast(array, pa.int32())), None
    if pa.types.is_date64(kind_type) or pa.types.is_timestamp(kind_type):
        if pa.types.is_date64(kind_type):
            array = pc.cast(array, pa.timestamp("ms"))
        micros = pc.cast(pc.cast(array, pa.timestamp("us", kind_type.tz)), pa.int64())
        return _floats(micros) / _US_PER_DAY, None
    if pa.types.is_string(kind_type) or pa.types.is_large_string(kind_type):
        return _each(array, days_value)
    raise FeatureValueError(
        f"column {feature.name!r} has type {kind_type}, not a date or timestamp"
    )


def encode_columns(features: Sequence[Feature], columns: Mapping[str, Any]) -> Encoded:
    """Arrow columns (by feature name) as a matrix; rows with an unusable value are marked with
    the reason and left as NaN. A column of a type no kind accepts raises FeatureValueError."""
    arrays = [_plain(columns[f.name]) for f in features]
    rows = len(arrays[0]) if arrays else 0
    matrix = np.empty((rows, len(features)), dtype=np.float64)
    errors: list[str | None] = [None] * rows
    unseen: Counter[str] = Counter()
    for j, (feature, array) in enumerate(zip(features, arrays, strict=True)):
        if len(array) != rows:
            raise FeatureValueError(
                f"column {feature.name!r} has {len(array)} rows, expected {rows}"
            )
        try:
            values, problems = _column(feature, array, unseen)
        except pa.ArrowException as exc:  # a value Arrow cannot convert (bad UTF-8, a date far out)
            reason = one_line(exc, 200)
            raise FeatureValueError(f"column {feature.name!r} ({array.type}): {reason}") from None
        matrix[:, j] = values
        if problems is not None:
            for i, problem in enumerate(problems):
                if problem is not None:
                    reason = f"{problem} in {feature.name}"
                    errors[i] = reason if errors[i] is None else f"{errors[i]}; {reason}"
    return Encoded(matrix, errors, unseen)


def _arrow_columns(frame: pd.DataFrame, names: Sequence[str]) -> dict[str, pa.Array]:
    return {name: pa.Array.from_pandas(frame[name]) for name in names}


class FrameEncoder(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """The pipeline's first step: a DataFrame (or Arrow table) of the table's columns to the
    float matrix of :func:`encode_columns`. ``fit`` learns each category feature's values: the
    ``max_categories`` most frequent, in order of frequency."""

    def __init__(self, features: Sequence[Feature] = (), max_categories: int = 250) -> None:
        self.features = features
        self.max_categories = max_categories

    def fit(self, frame: pd.DataFrame, y: Any = None) -> FrameEncoder:
        learned = []
        for feature in self.features:
            if feature.kind == "category":
                counts = frame[feature.name].dropna().map(label_text).value_counts()
                ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
                feature = feature.with_categories(
                    [str(v) for v, _ in ranked[: self.max_categories]]
                )
            learned.append(feature)
        self.features_ = learned
        self.n_features_in_ = len(learned)
        return self

    def transform(self, frame: pd.DataFrame | pa.Table) -> np.ndarray:
        names = [f.name for f in self.features_]
        if isinstance(frame, pa.Table):
            columns: Mapping[str, Any] = {name: frame.column(name) for name in names}
        else:
            columns = _arrow_columns(frame, names)
        encoded = encode_columns(self.features_, columns)
        bad = next((e for e in encoded.errors if e is not None), None)
        if bad is not None:
            raise FeatureValueError(bad)
        return encoded.matrix

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.array([f.name for f in self.features_], dtype=object)
