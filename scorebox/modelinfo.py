"""What a scorebox model carries in its BentoML metadata: the contract between training, the
service and the worker."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scorebox.errors import ModelError

FORMAT = 1
# The file bentoml.sklearn.save_model writes the pickled pipeline to.
ARTIFACT = "saved_model.pkl"


@dataclass(frozen=True)
class ModelInfo:
    """Everything needed to serve and score with a model, read back from its metadata."""

    task: str
    feature_table: str
    id_column: str
    target_column: str
    features: dict[str, str]
    classes: list[Any]
    metrics: dict[str, float | None]
    training_rows: int
    holdout_rows: int
    fingerprint: str
    artifact_sha256: str
    estimator: str
    versions: dict[str, str]
    data_notes: dict[str, int] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        """Feature names in the order the model expects them."""
        return list(self.features)

    def to_metadata(self) -> dict[str, Any]:
        """The BentoML metadata dict (features as an ordered list, since YAML maps may reorder)."""
        data = asdict(self)
        data["features"] = [{"name": n, "dtype": t} for n, t in self.features.items()]
        data["scorebox_format"] = FORMAT
        return data

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], tag: str) -> ModelInfo:
        """Read the metadata of model ``tag``; a model not trained by scorebox is refused."""
        if metadata.get("scorebox_format") != FORMAT:
            raise ModelError(
                f"model {tag} was not trained by `scorebox train` (no scorebox metadata); "
                "retrain it with scorebox"
            )
        data = {k: v for k, v in metadata.items() if k != "scorebox_format"}
        data["features"] = {f["name"]: f["dtype"] for f in data["features"]}
        try:
            return cls(**data)
        except TypeError as exc:
            raise ModelError(f"model {tag} has incomplete scorebox metadata: {exc}") from None


def verify_artifact(model_dir: Path, info: ModelInfo, tag: str) -> None:
    """Refuse to unpickle an artifact whose SHA-256 is not the one training recorded."""
    digest = hashlib.sha256((model_dir / ARTIFACT).read_bytes()).hexdigest()
    if digest != info.artifact_sha256:
        raise ModelError(
            f"model {tag}: {ARTIFACT} has SHA-256 {digest}, but training recorded "
            f"{info.artifact_sha256}; refusing to load it"
        )
