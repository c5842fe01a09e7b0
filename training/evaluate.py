"""Holdout metrics for a fitted pipeline."""

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
) -> dict[str, float | None]:
    """Classification: ROC AUC, accuracy, log loss. Regression: RMSE, MAE, R2."""
    if task == "regression":
        predicted = pipeline.predict(features)
        return {
            "rmse": float(math.sqrt(mean_squared_error(target, predicted))),
            "mae": float(mean_absolute_error(target, predicted)),
            "r2": float(r2_score(target, predicted)),
        }
    classes = pipeline.classes_
    proba = pipeline.predict_proba(features)
    predicted = classes[np.argmax(proba, axis=1)]
    roc_auc: float | None
    if target.nunique() < len(classes):
        roc_auc = None  # undefined when the holdout lacks a class
    elif len(classes) == 2:
        roc_auc = float(roc_auc_score(target, proba[:, 1]))
    else:
        roc_auc = float(roc_auc_score(target, proba, multi_class="ovr", labels=classes))
    return {
        "roc_auc": roc_auc,
        "accuracy": float(accuracy_score(target, predicted)),
        "log_loss": float(log_loss(target, proba, labels=classes)),
    }
