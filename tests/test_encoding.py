"""scorebox/encoding.py: values become the model's matrix the same way on every path (JSON
records for /predict, Arrow columns for batches and training), on a real mixed table (Palmer
penguins from its PyPI package: text with NULLs, floats with NULLs, integers) plus booleans and
dates, and every value that cannot be used is named."""

from __future__ import annotations

import math
from datetime import date, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from scorebox.encoding import (
    FrameEncoder,
    encode_columns,
    encode_records,
    json_value,
    label_text,
)
from scorebox.errors import FeatureValueError, InvalidRecordsError
from scorebox.features import Feature


def _penguins() -> tuple[pd.DataFrame, list[Feature]]:
    import palmerpenguins

    frame = palmerpenguins.load_penguins()
    rng = np.random.default_rng(0)
    frame["tagged"] = pd.array(rng.integers(0, 2, len(frame)).astype(bool), dtype="boolean")
    frame.loc[::17, "tagged"] = pd.NA
    frame["seen"] = pd.to_datetime("2007-11-01") + pd.to_timedelta(
        rng.integers(0, 900, len(frame)), unit="D"
    )
    frame["seen"] = frame["seen"].dt.date
    frame.loc[::23, "seen"] = None
    features = [
        Feature("species", "category"),
        Feature("island", "category"),
        Feature("sex", "category"),
        Feature("bill_length_mm", "number"),
        Feature("body_mass_g", "number"),
        Feature("year", "number"),
        Feature("tagged", "bool"),
        Feature("seen", "date"),
    ]
    return frame, features


def test_json_records_and_arrow_columns_encode_every_row_identically() -> None:
    frame, features = _penguins()
    encoder = FrameEncoder(features, max_categories=2).fit(frame)
    learned = encoder.features_
    # The two most frequent islands are known; the third is an unseen category.
    assert learned[1].categories == ("Biscoe", "Dream")
    from_frame = encoder.transform(frame)
    from_arrow = encode_columns(learned, {f.name: pa.array(frame[f.name]) for f in learned})
    records = [
        {f.name: json_value(row[f.name]) for f in learned}
        for row in frame.to_dict(orient="records")
    ]
    from_json, unseen = encode_records(learned, records)
    np.testing.assert_array_equal(from_frame, from_arrow.matrix)
    np.testing.assert_array_equal(from_frame, from_json)
    assert from_arrow.errors == [None] * len(frame)
    assert unseen["island"] == (frame["island"] == "Torgersen").sum() > 0
    assert from_arrow.unseen == unseen
    # NULL is missing (NaN) for every kind, never a category code or zero.
    for j, feature in enumerate(learned):
        assert np.isnan(from_json[frame[feature.name].isna().to_numpy(), j]).all(), feature.name


def test_values_become_numbers_as_documented() -> None:
    assert json_value(np.float64("nan")) is None and json_value(pd.NaT) is None
    assert json_value(date(2024, 2, 29)) == "2024-02-29"
    assert json_value(np.int64(7)) == 7 and isinstance(json_value(np.int64(7)), int)
    assert label_text(True) == "true" and label_text(np.bool_(False)) == "false"
    assert label_text(np.int64(3)) == "3"
    days = Feature("when", "datetime")
    matrix, _ = encode_records(
        [days], [{"when": "1970-01-02T00:00:00+00:00"}, {"when": "1970-01-01T12:00"}]
    )
    assert matrix[:, 0].tolist() == [1.0, 0.5]
    assert encode_records([days], [{"when": datetime(1970, 1, 3)}])[0][0, 0] == 2.0


@pytest.mark.parametrize(
    ("feature", "value", "words"),
    [
        (Feature("n", "number"), "12", "expected a number, got"),
        (Feature("n", "number"), True, "expected a number, got"),
        (Feature("n", "number"), 10**400, "finite"),
        (Feature("b", "bool"), "yes", "expected true or false"),
        (Feature("b", "bool"), 2, "expected true or false"),
        (Feature("d", "date"), "31/12/2024", "ISO 8601"),
        (Feature("d", "date"), 20240101, "ISO 8601"),
    ],
)
def test_a_value_that_cannot_be_used_is_named_by_record_and_field(
    feature: Feature, value: object, words: str
) -> None:
    with pytest.raises(InvalidRecordsError) as refused:
        encode_records([feature], [{feature.name: None}, {feature.name: value}])
    message = str(refused.value)
    assert message.startswith("1 invalid field(s): records[1].") and words in message


def test_missing_unknown_and_non_object_records_are_all_counted_and_the_first_shown() -> None:
    features = [Feature("a", "number")]
    records = [{"b": 1}, 5, *({"a": "x"} for _ in range(30))]
    with pytest.raises(InvalidRecordsError) as refused:
        encode_records(features, records, shown=3)
    message = str(refused.value)
    assert message.startswith("33 invalid field(s): records[0].a: Field required")
    assert "records[0].b: not a feature" in message and "(and 30 more)" in message


def test_an_arrow_column_marks_bad_rows_and_refuses_a_type_no_kind_reads() -> None:
    feature = Feature("d", "date")
    encoded = encode_columns([feature], {"d": pa.array(["2024-01-01", "soon", None])})
    assert encoded.errors[0] is None and encoded.errors[2] is None
    assert encoded.errors[1] is not None and "in d" in encoded.errors[1]
    assert math.isnan(encoded.matrix[1, 0]) and encoded.rejected == 1
    with pytest.raises(FeatureValueError, match="'d'"):
        encode_columns([feature], {"d": pa.array([1.5, 2.5])})
