"""`scorebox train`: read, fit, evaluate, register, report."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from sklearn.model_selection import train_test_split
from sqlalchemy import Engine

from scorebox.features import resolve_schema
from scorebox.modelinfo import ModelInfo
from scorebox.settings import Settings
from training import data
from training.evaluate import evaluate
from training.pipeline import build_pipeline, check_classes, infer_task
from training.register import artifact_sha256, register
from training.report import write_report

log = logging.getLogger(__name__)

_PACKAGES = ("scikit-learn", "pandas", "numpy", "bentoml", "scorebox")


@dataclass(frozen=True)
class TrainResult:
    """The registered model and where its report is."""

    tag: str
    info: ModelInfo
    report: Path


def train(
    settings: Settings, engine: Engine, step: Callable[[str], None] = lambda _: None
) -> TrainResult:
    """Train on the configured table and register the model; ``step`` hears about progress."""
    step(f"reading {settings.feature_table}")
    with engine.connect() as conn:
        schema = resolve_schema(conn, settings)
        loaded = data.load(conn, schema)
    frame = loaded.frame
    notes = {
        "rows_dropped_null_target": loaded.dropped_null_target,
        "rows_with_null_features_imputed": loaded.rows_with_null_features,
    }
    for note, count in notes.items():
        if count:
            log.warning("%s: %d", note.replace("_", " "), count)

    features = frame[schema.feature_names]
    target = frame[schema.target_column]
    task = infer_task(target, settings.task)
    classes = check_classes(target) if task == "classification" else []
    stratify = None
    if task == "classification" and target.value_counts().min() >= 2:
        stratify = target
    x_train, x_test, y_train, y_test = train_test_split(
        features,
        target,
        test_size=settings.test_size,
        random_state=settings.random_state,
        stratify=stratify,
    )

    pipeline, estimator = build_pipeline(task, settings.estimator, settings.random_state)
    step(f"fitting {estimator} ({task}) on {len(x_train)} rows")
    pipeline.fit(x_train, y_train)
    step(f"evaluating on {len(x_test)} held-out rows")
    metrics = evaluate(pipeline, x_test, y_test, task)

    info = ModelInfo(
        task=task,
        feature_table=settings.feature_table,
        id_column=schema.id_column,
        target_column=schema.target_column,
        features=schema.features,
        classes=classes,
        metrics=metrics,
        training_rows=len(x_train),
        holdout_rows=len(x_test),
        fingerprint=data.fingerprint(frame),
        artifact_sha256=artifact_sha256(pipeline),
        estimator=estimator,
        versions={name: version(name) for name in _PACKAGES},
        data_notes=notes,
    )
    step(f"registering {settings.model_name} in the BentoML model store")
    model = register(settings.model_name, pipeline, info)
    report = write_report(
        Path(model.path) / "report", str(model.tag), info, pipeline, x_test, y_test
    )
    return TrainResult(tag=str(model.tag), info=info, report=report)
