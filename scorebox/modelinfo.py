"""What a scorebox model carries in its BentoML metadata: the contract between training, the
service and the worker."""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scorebox.compiled import ONNX_ARTIFACT
from scorebox.errors import ModelError
from scorebox.features import Feature

# 2: features carry their kind and categories; the pipeline starts with FrameEncoder.
FORMAT = 2
# The file bentoml.sklearn.save_model writes the pickled pipeline to.
ARTIFACT = "saved_model.pkl"


@dataclass(frozen=True)
class ModelInfo:
    """Everything needed to serve and score with a model, read back from its metadata."""

    task: str
    feature_table: str
    id_column: str
    target_column: str
    features: list[Feature]
    classes: list[Any]
    metrics: dict[str, float]
    training_rows: int
    holdout_rows: int
    fingerprint: str
    artifact_sha256: str
    estimator: str
    versions: dict[str, str]
    data_notes: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    metrics_undefined: dict[str, str] = field(default_factory=dict)
    example: dict[str, Any] = field(default_factory=dict)
    # Empty when the model has no compiled form (BentoML metadata cannot hold None).
    compiled_sha256: str = ""
    compiled_note: str = ""
    # The training data's profile, for drift (scorebox/profile.py); empty in older models.
    profile: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        """Feature names in the order the model expects them."""
        return [f.name for f in self.features]

    def to_metadata(self) -> dict[str, Any]:
        """The BentoML metadata dict (features as an ordered list, since YAML maps may reorder)."""
        data = asdict(self)
        data["features"] = [f.to_dict() for f in self.features]
        data["scorebox_format"] = FORMAT
        return data

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], tag: str) -> ModelInfo:
        """Read the metadata of model ``tag``; a model not trained by scorebox is refused."""
        found = metadata.get("scorebox_format")
        if found is None:
            raise ModelError(
                f"model {tag} was not trained by `scorebox train` (no scorebox metadata); "
                "retrain it with scorebox"
            )
        if found != FORMAT:
            raise ModelError(
                f"model {tag} was trained by an older scorebox (metadata format {found}, this "
                f"version reads {FORMAT}); retrain it with `scorebox train`"
            )
        data = {k: v for k, v in metadata.items() if k != "scorebox_format"}
        data["features"] = [Feature.from_dict(f) for f in data["features"]]
        try:
            return cls(**data)
        except TypeError as exc:
            raise ModelError(f"model {tag} has incomplete scorebox metadata: {exc}") from None


def verified_files(model_dir: Path, info: ModelInfo, tag: str) -> dict[str, bytes]:
    """The model's files (the pickle, and the compiled model if any) read once, each refused
    unless its SHA-256 is the one training recorded; load from these bytes, not the files."""
    expected = {ARTIFACT: info.artifact_sha256}
    if info.compiled_sha256:
        expected[ONNX_ARTIFACT] = info.compiled_sha256
    files = {}
    for name, recorded in expected.items():
        path = model_dir / name
        if not path.exists():
            raise ModelError(f"model {tag}: {name} is missing from {model_dir}")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != recorded:
            raise ModelError(
                f"model {tag}: {name} has SHA-256 {digest}, but training recorded "
                f"{recorded}; refusing to load it"
            )
        files[name] = data
    return files


def load_pipeline(files: dict[str, bytes]) -> Any:
    """The pipeline unpickled from verified bytes (see :func:`verified_files`)."""
    import joblib

    return joblib.load(io.BytesIO(files[ARTIFACT]))
