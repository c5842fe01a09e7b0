"""The task and the scikit-learn pipeline fitted for it."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from scorebox.errors import ConfigError, DataError

# A target with at most this many distinct integer values is taken for class labels.
MAX_INFERRED_CLASSES = 20

DEFAULT_ESTIMATOR = {
    "classification": "hist_gradient_boosting",
    "regression": "hist_gradient_boosting",
}


def infer_task(target: pd.Series, configured: str | None) -> str:
    """The configured task, or classification for labels and few integers, else regression."""
    if configured is not None:
        if configured == "regression" and target.dtype.kind not in "iuf":
            raise DataError(f"SCOREBOX_TASK is regression but the target is {target.dtype}")
        return configured
    if target.dtype.kind in "iub" and target.nunique() <= MAX_INFERRED_CLASSES:
        return "classification"
    if target.dtype.kind in "iuf":
        return "regression"
    return "classification"


def _estimator(task: str, name: str, random_state: int) -> tuple[BaseEstimator, bool]:
    """The estimator called ``name`` for ``task`` and whether it wants scaled inputs."""
    choices: dict[tuple[str, str], tuple[BaseEstimator, bool]] = {
        ("classification", "hist_gradient_boosting"): (
            HistGradientBoostingClassifier(random_state=random_state),
            False,
        ),
        ("classification", "random_forest"): (
            RandomForestClassifier(n_estimators=200, random_state=random_state),
            False,
        ),
        ("classification", "logistic_regression"): (
            LogisticRegression(max_iter=2000),
            True,
        ),
        ("regression", "hist_gradient_boosting"): (
            HistGradientBoostingRegressor(random_state=random_state),
            False,
        ),
        ("regression", "random_forest"): (
            RandomForestRegressor(n_estimators=200, random_state=random_state),
            False,
        ),
        ("regression", "ridge"): (Ridge(), True),
        ("regression", "linear_regression"): (LinearRegression(), True),
    }
    if (task, name) not in choices:
        fitting = sorted(n for t, n in choices if t == task)
        raise ConfigError(
            f"SCOREBOX_ESTIMATOR: {name!r} cannot do {task}; choose one of {', '.join(fitting)}"
        )
    return choices[(task, name)]


def build_pipeline(task: str, estimator: str | None, random_state: int) -> tuple[Pipeline, str]:
    """An unfitted pipeline (median imputer, scaler where useful, estimator) and its name."""
    name = estimator or DEFAULT_ESTIMATOR[task]
    model, scale = _estimator(task, name, random_state)
    steps: list[tuple[str, BaseEstimator]] = [("impute", SimpleImputer(strategy="median"))]
    if scale:
        steps.append(("scale", StandardScaler()))
    steps.append(("model", model))
    return Pipeline(steps), name


def check_classes(target: pd.Series) -> list[object]:
    """The sorted class labels, refusing a target with a single class."""
    classes = sorted(target.unique().tolist(), key=lambda v: (str(type(v)), v))
    if len(classes) < 2:
        raise DataError(f"the target has a single class ({classes[0]!r}); nothing to learn")
    return [c.item() if isinstance(c, np.generic) else c for c in classes]
