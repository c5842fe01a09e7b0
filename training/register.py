"""Saving a fitted pipeline to the BentoML model store with its scorebox metadata, and signing
the stored version (scorebox/signing.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import bentoml
import joblib
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sklearn.pipeline import Pipeline

from scorebox.compiled import ONNX_ARTIFACT
from scorebox.errors import ModelError
from scorebox.modelinfo import ARTIFACT, TRAINING_ROWS, ModelInfo
from scorebox.signing import SIGNATURE_FILE, folder_files, sign


def artifact_sha256(pipeline: Pipeline) -> str:
    """SHA-256 of the bytes joblib writes for ``pipeline``: what save_model will store."""
    buffer = io.BytesIO()
    joblib.dump(pipeline, buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def register(
    name: str, pipeline: Pipeline, info: ModelInfo, compiled: bytes | None = None
) -> bentoml.Model:
    """Save to the model store, with the exported model beside the pickle when there is one;
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
    folder = Path(model.path)
    expected = {ARTIFACT: info.artifact_sha256}
    if compiled is not None:
        (folder / ONNX_ARTIFACT).write_bytes(compiled)
        expected[ONNX_ARTIFACT] = info.compiled_sha256
    for file, digest in expected.items():
        if hashlib.sha256((folder / file).read_bytes()).hexdigest() != digest:
            bentoml.models.delete(model.tag)
            raise ModelError(
                f"the stored {file} of {model.tag} does not match the trained pipeline; "
                "the model was removed"
            )
    return model


def write_training_rows(model: bentoml.Model, ids: Iterable[Any]) -> None:
    """The ids (as text, as the predictions table keys rows) of the rows the model was fitted
    on, beside its files, so a comparison can leave them out."""
    text = "\n".join(str(value) for value in ids)
    (Path(model.path) / TRAINING_ROWS).write_bytes(gzip.compress(text.encode(), mtime=0))


def seal(model: bentoml.Model, key: Ed25519PrivateKey) -> None:
    """Sign the stored version: its tag, every file of its folder and its metadata."""
    folder = Path(model.path)
    envelope = sign(key, str(model.tag), folder_files(folder), dict(model.info.metadata))
    (folder / SIGNATURE_FILE).write_text(envelope)
