"""The evaluation report written next to the model: plots (PNG) and a Markdown summary."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
)
from sklearn.pipeline import Pipeline

from scorebox.modelinfo import ModelInfo

# Render to files only: training runs in containers and CI without a display.
matplotlib.use("Agg")


def _plots(
    pipeline: Pipeline, features: pd.DataFrame, target: pd.Series, task: str, path: Path
) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    if task == "regression":
        predicted = pipeline.predict(features)
        axes[0].scatter(target, predicted, s=8, alpha=0.5)
        low, high = float(np.min(target)), float(np.max(target))
        axes[0].plot([low, high], [low, high], color="grey", linestyle="--")
        axes[0].set(title="Predicted vs actual", xlabel="actual", ylabel="predicted")
        axes[1].hist(target - predicted, bins=40)
        axes[1].set(title="Residuals", xlabel="actual - predicted", ylabel="rows")
    elif len(pipeline.classes_) == 2 and target.nunique() == 2:
        RocCurveDisplay.from_estimator(pipeline, features, target, ax=axes[0])
        axes[0].set_title("ROC curve (holdout)")
        PrecisionRecallDisplay.from_estimator(pipeline, features, target, ax=axes[1])
        axes[1].set_title("Precision-recall curve (holdout)")
    else:
        ConfusionMatrixDisplay.from_estimator(pipeline, features, target, ax=axes[0])
        axes[0].set_title("Confusion matrix (holdout)")
        confidence = pipeline.predict_proba(features).max(axis=1)
        axes[1].hist(confidence, bins=20)
        axes[1].set(title="Confidence of predicted class", xlabel="probability", ylabel="rows")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    directory: Path,
    tag: str,
    info: ModelInfo,
    pipeline: Pipeline,
    holdout_features: pd.DataFrame,
    holdout_target: pd.Series,
) -> Path:
    """Write ``evaluation.png`` and ``report.md`` into ``directory``; return the Markdown path."""
    directory.mkdir(parents=True, exist_ok=True)
    _plots(
        pipeline,
        holdout_features,
        holdout_target,
        info.task,
        directory / "evaluation.png",
    )
    metrics = "\n".join(
        [f"| {name} | {value:.4f} |" for name, value in info.metrics.items()]
        + [f"| {name} | undefined: {why} |" for name, why in info.metrics_undefined.items()]
    )
    notes = "\n".join(
        f"- {name.replace('_', ' ')}: {count}" for name, count in info.data_notes.items()
    )
    features = ", ".join(f"`{f.name}` ({f.kind})" for f in info.features)
    left_out = "".join(f"\n- `{name}`: {why}" for name, why in info.left_out.items())
    summary = f"""# Evaluation of {tag}

- task: {info.task} ({info.estimator})
- table: `{info.feature_table}`, id `{info.id_column}`, target `{info.target_column}`
- rows: {info.training_rows} for training, {info.holdout_rows} held out
- training data fingerprint: `{info.fingerprint}`
- {info.compiled_note}
{notes}

| metric (holdout) | value |
|---|---|
{metrics}

![evaluation](evaluation.png)

Features: {features}

Columns left out:{left_out or " none"}
"""
    report = directory / "report.md"
    report.write_text(summary)
    return report
