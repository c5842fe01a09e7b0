"""Turning checked inputs into predictions, for JSON records and for Arrow column batches.

The service encodes with the version's feature list (scorebox/encoding.py, the same FrameEncoder
training fitted) and scores the float matrix with the model exported as data (an ONNX graph and
named parameters, scorebox/compiled.py). Only a version that could not be exported is scored by
its pickled pipeline, unpickled from bytes whose signature was verified.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import sklearn

from scorebox.catalog import Version
from scorebox.compiled import ONNX_ARTIFACT, CompiledModel, Scoring
from scorebox.encoding import Encoded, encode_columns, encode_records, label_text
from scorebox.errors import (
    ArrowStreamError,
    FeatureValueError,
    InvalidRecordsError,
    ModelError,
    RequestBodyError,
)
from scorebox.modelinfo import ARTIFACT, ModelInfo, load_pipeline


class Predictor:
    """A model (exported, or a pipeline's steps after its encoder) with the metadata it was
    trained with."""

    def __init__(self, model: Any, info: ModelInfo, tag: str, compiled: bool) -> None:
        self.info = info
        self.tag = tag
        self.features = info.features
        self.model = model
        self.compiled = compiled
        self.classes = list(info.classes)
        self.keys = [label_text(c) for c in self.classes]
        self.labels = [_plain(c) for c in self.classes]
        # Text features, each with the values the model knows (the prediction log keeps those
        # whole, however long).
        self.text_values = {
            f.name: frozenset(f.categories)
            for f in self.features
            if f.kind in ("category", "date", "datetime")
        }

    @classmethod
    def load(cls, version: Version) -> Predictor:
        """The predictor of a verified version: its exported model (data), or, when it has
        none, its pipeline unpickled from the signed bytes."""
        info = version.info
        if version.has(ONNX_ARTIFACT) and info.scoring:
            try:
                scoring = Scoring.from_dict(info.scoring)
            except ValueError as exc:
                raise ModelError(f"model {version.tag}: {exc}") from None
            model = CompiledModel(version.read(ONNX_ARTIFACT), scoring)
            return cls(model, info, version.tag, compiled=True)
        pipeline = load_pipeline(version.read(ARTIFACT))
        encoder = pipeline.steps[0][1]
        if getattr(encoder, "features_", None) != info.features:
            raise ModelError(f"model {version.tag}: its encoder does not match its features")
        if [_plain(c) for c in getattr(pipeline, "classes_", [])] != list(info.classes):
            raise ModelError(f"model {version.tag}: its classes do not match its metadata")
        return cls(pipeline[1:], info, version.tag, compiled=False)

    def run(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Predicted values (regression) or class indices, and the probability matrix of a
        classifier. NaN stands for a missing value."""
        with sklearn.config_context(assume_finite=True):
            if self.info.task == "classification":
                proba = self.model.predict_proba(matrix)
                return proba.argmax(axis=1), proba
            return np.asarray(self.model.predict(matrix), dtype=np.float64), None

    def encode_records(self, records: Sequence[Any]) -> tuple[np.ndarray, Counter[str]]:
        """JSON records as the model's matrix, and unseen categories per feature; a value of
        the wrong kind is a 422 naming the record and field."""
        try:
            return encode_records(self.features, records)
        except InvalidRecordsError as exc:
            raise RequestBodyError(str(exc), 422) from None

    def answers(self, matrix: np.ndarray) -> list[dict[str, Any]]:
        """One JSON prediction a row of ``matrix``."""
        predicted, proba = self.run(matrix)
        if proba is None:
            return [{"prediction": float(v)} for v in predicted]
        labels, keys = self.labels, self.keys
        return [
            {"prediction": labels[k], "probabilities": dict(zip(keys, row, strict=True))}
            for k, row in zip(predicted.tolist(), proba.tolist(), strict=True)
        ]

    def encode_table(self, table: pa.Table) -> Encoded:
        """An Arrow batch holding exactly the model's features, as the model's matrix."""
        names = [f.name for f in self.features]
        missing = [n for n in names if n not in table.column_names]
        if missing:
            raise ArrowStreamError(f"batch lacks column(s): {', '.join(missing)}")
        extra = [n for n in table.column_names if n not in set(names)]
        if extra:
            raise ArrowStreamError(f"batch has column(s) that are not features: {', '.join(extra)}")
        try:
            return encode_columns(self.features, {n: table.column(n) for n in names})
        except FeatureValueError as exc:
            raise ArrowStreamError(str(exc)) from None

    def score_table(self, encoded: Encoded) -> pa.Table:
        """The answer to a batch: ``error`` (null when scored), then ``predicted_value``, or
        ``predicted_label``, ``probability`` and one ``p:<class>`` column a class."""
        rows = len(encoded.errors)
        out: dict[str, pa.Array] = {"error": encoded.error_column()}
        # The usual batch has no refused row: its matrix is scored as it is and the answers are
        # the model's output, uncopied (taking the valid rows copies the whole matrix: 12 MB for
        # 50,000 rows of 30 features, 7% of the service's CPU for a batch).
        good = encoded.valid if encoded.rejected else None
        bad = None if good is None else ~good
        matrix = encoded.matrix if good is None else encoded.matrix[good]
        predicted, proba = self.run(matrix) if len(matrix) else (np.array([]), None)

        def every_row(scored: np.ndarray, fill: float) -> np.ndarray:
            """Values of the scored rows, placed at their rows among all (``fill`` elsewhere)."""
            if good is None:
                return scored
            full = np.full((rows, *scored.shape[1:]), fill, dtype=scored.dtype)
            full[good] = scored
            return full

        if self.info.task == "regression":
            values = every_row(np.asarray(predicted, dtype=np.float64), np.nan)
            out["predicted_value"] = pa.array(values, mask=bad)
            return pa.table(out)
        codes = every_row(np.asarray(predicted).astype(np.int64, copy=False), 0)
        out["predicted_label"] = pa.array(self.keys, pa.string()).take(pa.array(codes, mask=bad))
        scored = (
            np.zeros((len(matrix), len(self.classes)))
            if proba is None
            else np.asarray(proba, dtype=np.float64)
        )
        full = every_row(scored, 0.0)
        out["probability"] = pa.array(full.max(axis=1), mask=bad)
        for k, key in enumerate(self.keys):
            out[f"p:{key}"] = pa.array(full[:, k], mask=bad)
        return pa.table(out)


def _plain(value: Any) -> Any:
    """numpy scalars to Python values for JSON."""
    return value.item() if isinstance(value, np.generic) else value
