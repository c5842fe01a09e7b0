"""The task and the scikit-learn pipeline fitted for it.

Every pipeline starts with scorebox's FrameEncoder (the table's columns to numbers, see
scorebox/encoding.py). Tree ensembles read the encoded matrix as it is: missing values natively,
categories as categories (HistGradientBoosting) or ordinal codes (random forest). Linear models
get the median for missing numbers, scaling, and one-hot categories (unseen ones ignored).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from scorebox.encoding import FrameEncoder
from scorebox.errors import ConfigError, DataError
from scorebox.features import Feature

# An integer target with at most this many distinct values is taken for class labels.
MAX_INFERRED_CLASSES = 20

DEFAULT_ESTIMATOR = {
    "classification": "hist_gradient_boosting",
    "regression": "hist_gradient_boosting",
}
LINEAR = frozenset({"logistic_regression", "ridge", "linear_regression"})


def infer_task(target: pd.Series, discrete: bool, configured: str | None) -> str:
    """The configured task, or: booleans and text are classes; integers are classes when there
    are at most 20 distinct values; floating-point targets are regression."""
    numeric = target.dtype.kind in "iuf"
    if configured == "regression" and not numeric:
        raise DataError(f"SCOREBOX_TASK is regression but the target holds {target.dtype} values")
    fractional = target.dtype.kind == "f" and not np.all(np.mod(target, 1) == 0)
    if configured == "classification" and fractional:
        raise DataError("SCOREBOX_TASK is classification but the target holds fractional numbers")
    if configured is not None:
        return configured
    if not numeric or target.dtype.kind == "b":
        return "classification"
    if discrete and target.nunique() <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"


def _estimator(task: str, name: str, categorical: list[bool], random_state: int) -> BaseEstimator:
    """The estimator called ``name`` for ``task``."""
    mask = categorical if any(categorical) else None
    choices: dict[tuple[str, str], BaseEstimator] = {
        ("classification", "hist_gradient_boosting"): HistGradientBoostingClassifier(
            categorical_features=mask, random_state=random_state
        ),
        ("classification", "random_forest"): RandomForestClassifier(
            n_estimators=200, random_state=random_state
        ),
        ("classification", "logistic_regression"): LogisticRegression(max_iter=2000),
        ("regression", "hist_gradient_boosting"): HistGradientBoostingRegressor(
            categorical_features=mask, random_state=random_state
        ),
        ("regression", "random_forest"): RandomForestRegressor(
            n_estimators=200, random_state=random_state
        ),
        ("regression", "ridge"): Ridge(),
        ("regression", "linear_regression"): LinearRegression(),
    }
    if (task, name) not in choices:
        fitting = sorted(n for t, n in choices if t == task)
        raise ConfigError(
            f"SCOREBOX_ESTIMATOR: {name!r} cannot do {task}; choose one of {', '.join(fitting)}"
        )
    return choices[(task, name)]


def _linear_inputs(categorical: list[bool]) -> ColumnTransformer:
    """Median-imputed, scaled numbers and one-hot categories (missing is a category of its own,
    values never seen in training are all zeros)."""
    numbers = [j for j, is_category in enumerate(categorical) if not is_category]
    categories = [j for j, is_category in enumerate(categorical) if is_category]
    parts = []
    if numbers:
        parts.append(
            ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numbers)
        )
    if categories:
        parts.append(
            (
                "categories",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value=-1.0),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                categories,
            )
        )
    return ColumnTransformer(parts, sparse_threshold=0)


def build_pipeline(
    task: str,
    estimator: str | None,
    features: Sequence[Feature],
    random_state: int,
    max_categories: int = 250,
) -> tuple[Pipeline, str]:
    """An unfitted pipeline (encoder, inputs for linear models, estimator) and its name."""
    name = estimator or DEFAULT_ESTIMATOR[task]
    categorical = [f.kind == "category" for f in features]
    model = _estimator(task, name, categorical, random_state)
    steps: list[tuple[str, BaseEstimator]] = [
        ("encode", FrameEncoder(list(features), max_categories))
    ]
    if name in LINEAR:
        steps.append(("prepare", _linear_inputs(categorical)))
    steps.append(("model", model))
    return Pipeline(steps), name


def check_classes(target: pd.Series) -> list[object]:
    """The sorted class labels, refusing a target with a single class."""
    classes = sorted(target.unique().tolist(), key=lambda v: (str(type(v)), v))
    if len(classes) < 2:
        raise DataError(f"the target has a single class ({classes[0]!r}); nothing to learn")
    return [c.item() if isinstance(c, np.generic) else c for c in classes]
