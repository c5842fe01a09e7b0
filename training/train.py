"""`scorebox train`: read, fit, evaluate, register, report."""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sqlalchemy import Engine

from scorebox.aliases import who
from scorebox.catalog import Catalog
from scorebox.encoding import json_value
from scorebox.errors import DataError
from scorebox.features import resolve_schema
from scorebox.modelinfo import ModelInfo
from scorebox.profile import reference, score_of
from scorebox.settings import Settings
from scorebox.signing import key_id, load_key, signing_key
from training import data
from training.compile import Compiled, compile_model
from training.evaluate import evaluate
from training.pipeline import build_pipeline, check_classes, infer_task
from training.register import artifact_sha256, register, seal, write_training_rows
from training.report import write_report

log = logging.getLogger(__name__)

_PACKAGES = ("scikit-learn", "pandas", "numpy", "bentoml", "scorebox")


@dataclass(frozen=True)
class TrainResult:
    """The registered model and where its report is."""

    tag: str
    info: ModelInfo
    report: Path
    registry: str  # what became of the model in the database's registry, in words
    signed: str  # which key signed it, and where that key is


def _split(
    features: pd.DataFrame, target: pd.Series, task: str, settings: Settings
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    """The holdout split: stratified by class when every class has at least two rows and the
    holdout can hold one of each."""
    stratify = None
    if task == "classification":
        counts = target.value_counts()
        holdout = math.ceil(len(target) * settings.test_size)
        if counts.min() >= 2 and len(counts) <= holdout <= len(target) - len(counts):
            stratify = target
    x_train, x_test, y_train, y_test = train_test_split(
        features,
        target,
        test_size=settings.test_size,
        random_state=settings.random_state,
        stratify=stratify,
    )
    if task == "classification":
        # A class too rare to stratify may land only in the holdout: the model could never
        # predict it, so its rows go back to the training side.
        unseen = ~y_test.isin(set(y_train))
        if unseen.any():
            x_train = pd.concat([x_train, x_test[unseen]])
            y_train = pd.concat([y_train, y_test[unseen]])
            x_test, y_test = x_test[~unseen], y_test[~unseen]
    if task == "classification" and y_test.empty:
        raise DataError(
            f"no class of the target has two rows ({target.nunique()} classes in {len(target)} "
            "rows), so no model can be evaluated; the target looks like an id or free text: set "
            "SCOREBOX_TARGET_COLUMN to the column that holds the labels"
        )
    if task == "classification" and y_train.nunique() < 2:
        raise DataError("the training rows hold a single class after the holdout split; add rows")
    return x_train, x_test, y_train, y_test


def compile_pipeline(pipeline: Pipeline, holdout: pd.DataFrame) -> Compiled:
    """The pipeline's model (after its encoder: a tree ensemble, or a linear model with its
    input step) exported as data and checked on the encoded holdout rows."""
    encoded = pipeline.steps[0][1].transform(holdout)
    if len(pipeline.steps) == 2:
        return compile_model(pipeline.steps[-1][1], encoded)
    if len(pipeline.steps) == 3:
        return compile_model(pipeline.steps[-1][1], encoded, prepare=pipeline.steps[1][1])
    return Compiled(None, "not exported: the pipeline has steps scorebox cannot export")


def train(
    settings: Settings, engine: Engine, step: Callable[[str], None] = lambda _: None
) -> TrainResult:
    """Train on the configured table, sign and register the model; ``step`` hears about
    progress."""
    # A configured key first: missing or unreadable, it says so before minutes of fitting. The
    # default key is created only when there is a model to sign.
    create = settings.signing_key is None and not settings.signing_key_path.exists()
    key = None if create else load_key(settings.signing_key_path)
    step(f"reading {settings.feature_table}")
    with engine.connect() as conn:
        schema = resolve_schema(conn, settings)
        loaded = data.load(conn, schema, settings.max_categories)
    frame = loaded.frame
    for note, count in loaded.notes.items():
        if count:
            log.warning("%s: %d", note.replace("_", " "), count)

    names = [f.name for f in loaded.features]
    features = frame[names]
    target = frame[schema.target_column]
    task = infer_task(target, data.is_discrete(schema.target_type), settings.task)
    if task == "classification" and target.dtype.kind == "f":
        target = target.astype("int64")  # integral measurements asked to be classes
    classes = check_classes(target) if task == "classification" else []
    x_train, x_test, y_train, y_test = _split(features, target, task, settings)

    pipeline, estimator = build_pipeline(
        task, settings.estimator, loaded.features, settings.random_state, settings.max_categories
    )
    step(f"fitting {estimator} ({task}) on {len(x_train)} rows")
    with warnings.catch_warnings():
        # A tiny table can leave a class with fewer rows than folds: not worth stopping for.
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        pipeline.fit(x_train, y_train)
    if task == "classification":  # in the order of the model's outputs
        classes = [c.item() if hasattr(c, "item") else c for c in pipeline.classes_]
    step(f"evaluating on {len(x_test)} held-out rows")
    metrics, undefined = evaluate(pipeline, x_test, y_test, task)
    step("exporting the model as data")
    compiled = compile_pipeline(pipeline, x_test)
    step("profiling the data for drift")
    encoder = pipeline.named_steps["encode"]
    probabilities = pipeline.predict_proba(x_test) if task == "classification" else None
    values = pipeline.predict(x_test) if task == "regression" else None
    profile = reference(
        encoder.features_,
        encoder.transform(features),
        score_of(task, classes, probabilities, values),
        probability=task == "classification",
    )

    info = ModelInfo(
        task=task,
        feature_table=str(schema.table),
        id_column=schema.id_column,
        target_column=schema.target_column,
        features=pipeline.named_steps["encode"].features_,
        classes=classes,
        metrics=metrics,
        training_rows=len(x_train),
        holdout_rows=len(x_test),
        fingerprint=data.fingerprint(frame[[schema.id_column, *names, schema.target_column]]),
        artifact_sha256=artifact_sha256(pipeline),
        estimator=estimator,
        versions={name: version(name) for name in _PACKAGES},
        data_notes=loaded.notes,
        left_out=loaded.left_out,
        metrics_undefined=undefined,
        example={str(name): json_value(value) for name, value in x_test.iloc[0].items()},
        compiled_sha256="" if compiled.onnx is None else hashlib.sha256(compiled.onnx).hexdigest(),
        compiled_note=compiled.summary
        if compiled.onnx is not None
        else f"{compiled.summary}; served from its pickle, loaded only after its signature checks",
        profile=profile,
        scoring={} if compiled.scoring is None else compiled.scoring.to_dict(),
    )
    step(f"registering {settings.model_name} in the BentoML model store")
    model = register(settings.model_name, pipeline, info, compiled.onnx)
    report = write_report(
        Path(model.path) / "report", str(model.tag), info, pipeline, x_test, y_test
    )
    write_training_rows(model, frame.loc[x_train.index, schema.id_column])
    step(f"signing {model.tag}")
    created = ""
    if key is None:
        key = signing_key(settings.signing_key_path, settings.default_trust_folder, create=True)
        trusted = settings.default_trust_folder
        created = f"; created now{f', trusted from {trusted}' if trusted else ''}"
    seal(model, key)
    catalog = Catalog.from_settings(settings, engine)
    if catalog.ready():
        step(f"recording {model.tag} in the database's model registry")
        catalog.publish(str(model.tag), who())
        registered = "recorded in the database (`scorebox models list`)"
    else:
        registered = (
            "not recorded in the database: its tables are missing; run `scorebox db upgrade`, "
            f"then `scorebox models push {model.tag}`"
        )
    signed = f"key {key_id(key.public_key())} ({settings.signing_key_path}{created})"
    return TrainResult(
        tag=str(model.tag), info=info, report=report, registry=registered, signed=signed
    )
