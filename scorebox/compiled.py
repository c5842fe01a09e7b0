"""Scoring a model that training exported as data: an ONNX graph of its raw scores (tree ensembles
and linear models, training/compile.py builds it) and named parameters that turn raw scores into
probabilities or values the way the scikit-learn estimator does. Loading runs nothing of the
model's own, unlike a pickle: this is what a service serves.

The graph computes in double precision; the link (identity, logistic or softmax, with the same
operations in the same order as scikit-learn) and the averaging of a forest's trees are applied
here, so answers agree with scikit-learn's to about 1e-15 (checked at training to 1e-9).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit

# The file beside the pickled pipeline in the model's folder.
ONNX_ARTIFACT = "model.onnx"
LINKS = ("identity", "logistic", "softmax")


@dataclass(frozen=True)
class Scoring:
    """How raw scores become answers: divided by ``divide`` (a forest's tree count), plus
    ``baseline`` (a boosted model's starting score), through ``link``; category codes past the
    ``categories`` a column learnt (column, count) are made missing first, as scikit-learn
    routes them."""

    link: str
    divide: int = 1
    baseline: list[float] = field(default_factory=list)
    categories: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scoring:
        """Parameters read from a version's signed metadata (ValueError if malformed)."""
        try:
            scoring = cls(
                link=str(data["link"]),
                divide=int(data.get("divide", 1)),
                baseline=[float(v) for v in data.get("baseline", [])],
                categories=[[int(c), int(n)] for c, n in data.get("categories", [])],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed scoring parameters ({exc})") from None
        if scoring.link not in LINKS or scoring.divide < 1:
            raise ValueError(f"malformed scoring parameters ({scoring.link}, {scoring.divide})")
        return scoring


def _unknown_as_missing(matrix: np.ndarray, categories: list[list[int]]) -> np.ndarray:
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


def _softmax(raw: np.ndarray) -> np.ndarray:
    """scikit-learn's softmax, operation for operation."""
    out = raw - raw.max(axis=1).reshape((-1, 1))
    np.exp(out, out=out)
    out /= out.sum(axis=1).reshape((-1, 1))
    return out


class CompiledModel:
    """An exported model: its ONNX graph run by ONNX Runtime, then :class:`Scoring`."""

    def __init__(self, onnx_model: bytes, scoring: Scoring) -> None:
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
        self.scoring = scoring
        self._baseline = (
            np.asarray(scoring.baseline, dtype=np.float64) if scoring.baseline else None
        )

    def raw(self, matrix: np.ndarray) -> np.ndarray:
        """The model's raw scores (decision values), one column a target."""
        matrix = np.ascontiguousarray(matrix, np.float64)
        if self.scoring.categories:
            matrix = _unknown_as_missing(matrix, self.scoring.categories)
        raw = np.asarray(self._session.run(None, {self._input: matrix})[0], dtype=np.float64)
        if self._baseline is not None:
            raw = raw + self._baseline
        if self.scoring.divide != 1:
            raw = raw / self.scoring.divide
        return raw

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        """Class probabilities, as the estimator's ``predict_proba`` gives them."""
        raw = self.raw(matrix)
        if self.scoring.link == "softmax":
            return _softmax(raw)
        if self.scoring.link == "logistic":
            proba = np.empty((raw.shape[0], 2), dtype=np.float64)
            proba[:, 1] = expit(raw.ravel())
            proba[:, 0] = 1 - proba[:, 1]
            return proba
        return raw

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Predicted values (regression), as the estimator's ``predict`` gives them."""
        return self.raw(matrix).ravel()
