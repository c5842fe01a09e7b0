"""Models exported as data answer exactly as scikit-learn does: every supported estimator and task,
on held-out rows of real data sets and on edge rows (for trees: thresholds, the doubles and floats
beside them, missing values, every category; for linear models: missing, extreme and unseen
values). Labels must agree exactly, probabilities and values to 1e-9; where the exporter cannot
promise that it refuses and says why."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from scorebox.compiled import CompiledModel
from training.compile import TOLERANCE, compile_model, edge_rows, linear_edge_rows
from training.pipeline import _linear_inputs


def _penguins(target: str) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """The Palmer penguins as numbers: island and sex as category codes (sex has NULLs), the
    measurements with their NULLs as NaN; ``target`` is species (3 classes) or body mass."""
    from palmerpenguins import load_penguins

    frame = load_penguins()
    frame = frame[frame[target].notna()]
    island = frame["island"].astype("category").cat.codes.astype(float)
    sex = frame["sex"].astype("category").cat.codes.astype(float).replace(-1.0, np.nan)
    numbers = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm"]
    if target == "species":
        numbers.append("body_mass_g")
        y = frame["species"].to_numpy()
    else:
        y = frame["body_mass_g"].to_numpy(dtype=float)
    x = np.column_stack([island, sex, frame[numbers].to_numpy(dtype=float)])
    return x, y, [True, True] + [False] * len(numbers)


def _data(name: str) -> tuple[np.ndarray, np.ndarray, list[bool] | None]:
    if name == "breast_cancer":
        x, y = load_breast_cancer(return_X_y=True)
        return x, y, None
    if name == "wine":
        x, y = load_wine(return_X_y=True)
        return x, y, None
    if name == "diabetes":
        x, y = load_diabetes(return_X_y=True)
        return x, y, None
    return _penguins("species" if name == "penguins_species" else "body_mass_g")


def _holes(x: np.ndarray, share: float = 0.05) -> np.ndarray:
    """``x`` with a share of its cells missing, so the trees learn where missing values go."""
    rng = np.random.default_rng(1)
    x = x.copy()
    x[rng.random(x.shape) < share] = np.nan
    return x


CASES = [
    ("hgb binary", "breast_cancer", HistGradientBoostingClassifier),
    ("hgb multiclass", "wine", HistGradientBoostingClassifier),
    ("hgb regression", "diabetes", HistGradientBoostingRegressor),
    ("hgb multiclass categorical", "penguins_species", HistGradientBoostingClassifier),
    ("hgb regression categorical", "penguins_mass", HistGradientBoostingRegressor),
    ("forest binary", "breast_cancer", RandomForestClassifier),
    ("forest multiclass", "penguins_species", RandomForestClassifier),
    ("forest regression", "diabetes", RandomForestRegressor),
]


def _fit(data: str, kind: Any) -> tuple[Any, np.ndarray]:
    x, y, categorical = _data(data)
    if kind in (HistGradientBoostingClassifier, HistGradientBoostingRegressor):
        x = _holes(x) if categorical is None else x
        model = kind(categorical_features=categorical, random_state=0, max_iter=60)
    else:
        model = kind(n_estimators=40, random_state=0)  # forests take NaN as they are
    x_train, x_test, y_train, _ = train_test_split(x, y, test_size=0.3, random_state=0)
    model.fit(x_train, y_train)
    return model, x_test


@pytest.mark.parametrize(("case", "data", "kind"), CASES, ids=[c[0] for c in CASES])
def test_compiled_model_is_an_exact_twin(case: str, data: str, kind: Any) -> None:
    model, holdout = _fit(data, kind)
    result = compile_model(model, holdout)
    assert result.onnx is not None, result.summary
    assert "agrees with scikit-learn" in result.summary

    # Checked here again, independently of compile_model's own check.
    rows = np.vstack([holdout, edge_rows(model, holdout)])
    assert np.isnan(rows).all(axis=1).any(), "an all-missing row is among the edge rows"
    assert result.scoring is not None
    compiled = CompiledModel(result.onnx, result.scoring)
    if hasattr(model, "classes_"):
        expected, got = model.predict_proba(rows), compiled.predict_proba(rows)
        labels = model.classes_[got.argmax(axis=1)]
        np.testing.assert_array_equal(labels, model.predict(rows))
    else:
        expected, got = model.predict(rows), compiled.predict(rows)
    np.testing.assert_allclose(got, expected, rtol=TOLERANCE, atol=0)


def test_category_never_seen_and_missing_values_route_as_in_scikit_learn() -> None:
    model, holdout = _fit("penguins_species", HistGradientBoostingClassifier)
    result = compile_model(model, holdout)
    assert result.onnx is not None, result.summary
    odd = np.tile(holdout[:1], (4, 1))
    odd[0, 0] = 17.0  # an island code never seen in training
    odd[1, 0] = -1.0  # and a negative one
    odd[1, 1] = np.nan  # sex missing
    odd[2, 2:] = np.nan  # every measurement missing
    odd[3, :] = np.nan
    assert result.scoring is not None
    compiled = CompiledModel(result.onnx, result.scoring)
    np.testing.assert_allclose(
        compiled.predict_proba(odd), model.predict_proba(odd), rtol=TOLERANCE, atol=0
    )


@pytest.mark.parametrize("kind", [GradientBoostingClassifier, ExtraTreesClassifier])
def test_an_estimator_the_compiler_does_not_support_is_refused_with_a_reason(kind: Any) -> None:
    x, y = load_breast_cancer(return_X_y=True)
    model = kind(n_estimators=5, random_state=0).fit(x, y)
    result = compile_model(model, x[:50])
    assert result.onnx is None
    assert result.summary.startswith("not exported: ")
    assert type(model).__name__ in result.summary


LINEAR = [
    ("logistic binary", "breast_cancer", LogisticRegression),
    ("logistic multiclass categorical", "penguins_species", LogisticRegression),
    ("ridge regression", "diabetes", Ridge),
    ("linear regression categorical", "penguins_mass", LinearRegression),
]


@pytest.mark.parametrize(("case", "data", "kind"), LINEAR, ids=[c[0] for c in LINEAR])
def test_exported_linear_model_is_an_exact_twin(case: str, data: str, kind: Any) -> None:
    x, y, categorical = _data(data)
    x = _holes(x) if categorical is None else x
    flags = categorical or [False] * x.shape[1]
    estimator = kind(max_iter=2000) if kind is LogisticRegression else kind()
    pipeline = make_pipeline(_linear_inputs(flags), estimator)
    x_train, x_test, y_train, _ = train_test_split(x, y, test_size=0.3, random_state=0)
    pipeline.fit(x_train, y_train)
    prepare, model = pipeline.steps[0][1], pipeline.steps[1][1]
    result = compile_model(model, x_test, prepare=prepare)
    assert result.onnx is not None, result.summary
    assert result.scoring is not None

    rows = np.vstack([x_test, linear_edge_rows(prepare, x_test)])
    assert np.isnan(rows).all(axis=1).any(), "an all-missing row is among the edge rows"
    compiled = CompiledModel(result.onnx, result.scoring)
    if hasattr(model, "classes_"):
        expected, got = pipeline.predict_proba(rows), compiled.predict_proba(rows)
        np.testing.assert_array_equal(model.classes_[got.argmax(axis=1)], pipeline.predict(rows))
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    else:
        expected, got = pipeline.predict(rows), compiled.predict(rows)
        np.testing.assert_allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE)
