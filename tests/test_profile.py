"""scorebox/profile.py on scikit-learn's breast cancer data: training's profile, a job's counts
merged from its chunks, PSI, and a drift that is called only from enough rows to judge it."""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.datasets import load_breast_cancer

from scorebox.features import Feature
from scorebox.profile import SCORE, count_chunk, drift, merge, reference, rows_needed, score_kind


def _profile() -> tuple[dict, np.ndarray, list[str]]:
    data = load_breast_cancer()
    names = ["mean radius", "mean texture"]
    matrix = data.data[:, :2].astype(np.float64)
    features = [Feature(n, "number") for n in names]
    scores = (matrix[:, 0] - matrix[:, 0].min()) / np.ptp(matrix[:, 0])
    return reference(features, matrix, scores, probability=True), matrix, names


def _counts(profile: dict, matrix: np.ndarray, names: list[str], chunks: int) -> dict:
    scores = (matrix[:, 0] - 6.981) / (28.11 - 6.981)
    parts = np.array_split(np.arange(len(matrix)), chunks)
    return merge(
        count_chunk(profile, names, matrix[p], Counter(), np.clip(scores[p], 0, 1)) for p in parts
    )


def test_the_training_rows_counted_in_chunks_do_not_drift() -> None:
    profile, matrix, names = _profile()
    found = drift(profile, _counts(profile, matrix, names, 7), warn=0.2)
    assert [d.name for d in found][-1] == SCORE
    assert all(d.rows == len(matrix) and d.psi < 0.01 for d in found)
    assert not any(d.drifted(0.2) for d in found)


def test_a_shift_is_drift_from_many_rows_and_too_few_to_judge_from_a_handful() -> None:
    profile, matrix, names = _profile()
    shifted = matrix.copy()
    shifted[:, 1] += 8  # texture moved by about two standard deviations
    many = {d.name: d for d in drift(profile, _counts(profile, shifted, names, 3), warn=0.2)}
    assert many["mean texture"].drifted(0.2) and not many["mean radius"].drifted(0.2)
    assert many["mean texture"].needed == rows_needed(
        profile["features"]["mean texture"]["shares"], 0.2
    )
    # Five unshifted rows: most bins are empty, so PSI is large, yet nothing is called drift.
    few = drift(profile, _counts(profile, matrix[:5], names, 1), warn=0.2)
    assert any(d.psi > 0.2 for d in few)
    assert not any(d.drifted(0.2) for d in few)
    assert all(d.rows < d.needed for d in few if d.psi > 0.2)


def test_rows_needed_grows_with_the_bins_and_a_lower_threshold() -> None:
    even = [0.0] + [0.1] * 10 + [0.0]
    assert 1 < rows_needed(even, 0.25) < rows_needed(even, 0.1)
    assert rows_needed([0.0, 1.0, 0.0], 0.1) == 1  # one bin: nothing to judge
    assert [score_kind("regression", []), score_kind("c", [0, 1]), score_kind("c", "abc")] == [
        "value",
        "second",
        "top",
    ]
