"""Saving a fitted pipeline to the BentoML model store with its scorebox metadata."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import bentoml
import joblib
from sklearn.pipeline import Pipeline

from scorebox.compiled import ONNX_ARTIFACT
from scorebox.errors import ModelError
from scorebox.modelinfo import ModelInfo, verified_files


def artifact_sha256(pipeline: Pipeline) -> str:
    """SHA-256 of the bytes joblib writes for ``pipeline``: what save_model will store."""
    buffer = io.BytesIO()
    joblib.dump(pipeline, buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def register(
    name: str, pipeline: Pipeline, info: ModelInfo, compiled: bytes | None = None
) -> bentoml.Model:
    """Save to the model store, with the compiled model beside the pickle when there is one;
    the stored files must hash to what ``info`` records."""
    signatures = {"predict": {"batchable": True}}
    if info.task == "classification":
        signatures["predict_proba"] = {"batchable": True}
    saved = bentoml.sklearn.save_model(
        name,
        pipeline,
        signatures=signatures,
        labels={"task": info.task, "trained_by": "scorebox"},
        metadata=info.to_metadata(),
    )
    model = bentoml.models.get(saved.tag)  # the stored copy, not the build directory
    if compiled is not None:
        (Path(model.path) / ONNX_ARTIFACT).write_bytes(compiled)
    try:
        verified_files(Path(model.path), info, str(model.tag))
    except ModelError:
        bentoml.models.delete(model.tag)
        raise ModelError(
            f"the stored artifact of {model.tag} does not match the trained pipeline; "
            "the model was removed"
        ) from None
    return model
