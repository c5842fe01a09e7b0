"""Holdout metrics for a fitted pipeline; a metric the holdout cannot define is absent, with why."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline


def evaluate(
    pipeline: Pipeline, features: pd.DataFrame, target: pd.Series, task: str
) -> tuple[dict[str, float], dict[str, str]]:
    """Classification: ROC AUC, accuracy, log loss. Regression: RMSE, MAE, R2. Returns the
    metrics and, for each one left undefined, the reason."""
    undefined: dict[str, str] = {}
    metrics: dict[str, float] = {}
    if task == "regression":
        predicted = pipeline.predict(features)
        metrics["rmse"] = float(math.sqrt(mean_squared_error(target, predicted)))
        metrics["mae"] = float(mean_absolute_error(target, predicted))
        if target.nunique() > 1:
            metrics["r2"] = float(r2_score(target, predicted))
        else:
            undefined["r2"] = "the held-out target has a single value"
        return metrics, undefined
    classes = pipeline.classes_
    proba = pipeline.predict_proba(features)
    predicted = classes[np.argmax(proba, axis=1)]
    if target.nunique() < len(classes):
        missing = sorted(set(classes.tolist()) - set(target.tolist()), key=str)
        undefined["roc_auc"] = (
            f"the held-out rows lack class(es) {', '.join(map(str, missing))}; "
            "more rows of each class would define it"
        )
    elif len(classes) == 2:
        metrics["roc_auc"] = float(roc_auc_score(target, proba[:, 1]))
    else:
        metrics["roc_auc"] = float(roc_auc_score(target, proba, multi_class="ovr", labels=classes))
    metrics["accuracy"] = float(accuracy_score(target, predicted))
    metrics["log_loss"] = float(log_loss(target, proba, labels=classes))
    return metrics, undefined
