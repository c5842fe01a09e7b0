"""Running a tree ensemble compiled to ONNX (training/compile.py builds it) with ONNX Runtime.

The ONNX graph computes the trees' raw scores in double precision; turning them into
probabilities or values is left to the fitted scikit-learn estimator's own loss (HistGradient-
Boosting) or is already the average scikit-learn takes (random forests), so answers agree with
scikit-learn's to about 1e-15. An ONNX model is data, not code: loading it runs nothing of its
own, unlike a pickle or a compiled library.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The file beside the pickled pipeline in the model's folder.
ONNX_ARTIFACT = "model.onnx"


def _known_categories(estimator: Any) -> list[tuple[int, int]]:
    """(column, number of categories) of each categorical column of a HistGradientBoosting
    model, whose learnt categories are the codes 0..k-1 (training/compile.py checks that)."""
    preprocessor = getattr(estimator, "_preprocessor", None)
    if preprocessor is None:
        return []
    encoder = preprocessor.named_transformers_["encoder"]
    columns = np.flatnonzero(np.asarray(estimator.is_categorical_))
    return [
        (int(column), int(np.count_nonzero(~np.isnan(np.asarray(known, dtype=np.float64)))))
        for column, known in zip(columns, encoder.categories_, strict=True)
    ]


def _unknown_as_missing(matrix: np.ndarray, categories: list[tuple[int, int]]) -> np.ndarray:
    """``matrix`` with category codes the model never saw (negative, fractional or past the
    last code) made missing, which is how scikit-learn routes them."""
    fixed = matrix
    for column, count in categories:
        values = matrix[:, column]
        with np.errstate(invalid="ignore"):
            unknown = ~((values >= 0) & (values < count) & (values == np.floor(values)))
        unknown &= ~np.isnan(values)
        if unknown.any():
            if fixed is matrix:
                fixed = matrix.copy()
            fixed[unknown, column] = np.nan
    return fixed


class CompiledModel:
    """The compiled trees of ``estimator`` (a fitted HistGradientBoosting or random forest)."""

    def __init__(self, onnx_model: bytes, estimator: Any) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread: the service runs one scoring thread per process, processes share cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            onnx_model, options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._estimator = estimator
        self._boosted = hasattr(estimator, "_baseline_prediction")
        # A forest's graph sums its trees; scikit-learn averages them.
        self._trees = 1 if self._boosted else len(estimator.estimators_)
        self.classes = getattr(estimator, "classes_", None)
        self._categories = _known_categories(estimator)

    def _raw(self, matrix: np.ndarray) -> np.ndarray:
        matrix = np.ascontiguousarray(matrix, np.float64)
        if self._categories:
            matrix = _unknown_as_missing(matrix, self._categories)
        raw = self._session.run(None, {self._input: matrix})[0]
        if self._boosted:
            return np.asarray(raw + self._estimator._baseline_prediction, dtype=np.float64)
        return np.asarray(raw, dtype=np.float64) / self._trees

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        """Class probabilities, as the estimator's ``predict_proba`` gives them."""
        raw = self._raw(matrix)
        if self._boosted:
            return np.asarray(self._estimator._loss.predict_proba(raw))
        return raw

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Predicted values (regression), as the estimator's ``predict`` gives them."""
        raw = self._raw(matrix)
        if self._boosted:
            return np.asarray(self._estimator._loss.link.inverse(raw.ravel()))
        return raw.ravel()
