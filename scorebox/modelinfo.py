"""What a scorebox model carries in its BentoML metadata: the contract between training, the
service and the worker."""

from __future__ import annotations

import gzip
import io
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from scorebox.errors import ModelError
from scorebox.features import Feature

# 2: features carry their kind and categories; the pipeline starts with FrameEncoder.
# 3: exported models carry their scoring parameters; versions are signed.
FORMAT = 3
# The file bentoml.sklearn.save_model writes the pickled pipeline to.
ARTIFACT = "saved_model.pkl"
# The ids (as text) of the rows the model was fitted on, one a line, gzipped: a comparison
# leaves them out (scorebox/compare.py).
TRAINING_ROWS = "training_rows.txt.gz"


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
    # How the exported model's raw scores become answers (scorebox/compiled.py's Scoring);
    # empty when the model could not be exported and only its pickle can serve it.
    scoring: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        """Feature names in the order the model expects them."""
        return [f.name for f in self.features]

    def to_metadata(self) -> dict[str, Any]:
        """The BentoML metadata dict (features as an ordered list, since YAML maps may reorder;
        the example record as JSON text, since it may hold nulls, which BentoML's metadata
        cannot). Every value is a string, a finite number, a boolean, a list or a map."""
        data = asdict(self)
        data["features"] = [f.to_dict() for f in self.features]
        data["example"] = json.dumps(
            {name: _finite_or_none(value) for name, value in self.example.items()},
            allow_nan=False,
        )
        data["scorebox_format"] = FORMAT
        _check_plain(data, "metadata")
        return data

    @classmethod
    def from_metadata(cls, metadata: Any, tag: str) -> ModelInfo:
        """Read the metadata of model ``tag``; a model not trained by scorebox, or metadata that
        cannot be read, is refused with the reason."""
        if not isinstance(metadata, dict):
            raise ModelError(f"model {tag}: its metadata is unreadable (not an object)")
        found = metadata.get("scorebox_format")
        if found is None:
            raise ModelError(
                f"model {tag} was not trained by `scorebox train` (no scorebox metadata); "
                "retrain it with scorebox"
            )
        if found != FORMAT:
            raise ModelError(
                f"model {tag} was trained by another scorebox (metadata format {found!r}, this "
                f"version reads {FORMAT}); retrain it with `scorebox train`"
            )
        data = {k: v for k, v in metadata.items() if k != "scorebox_format"}
        try:
            data["features"] = [Feature.from_dict(f) for f in data["features"]]
            if isinstance(data.get("example"), str):
                data["example"] = json.loads(data["example"])
            info = cls(**data)
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise ModelError(f"model {tag}: its metadata is unreadable ({exc})"[:300]) from None
        if not isinstance(info.metrics, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in info.metrics.values()
        ):
            raise ModelError(f"model {tag}: its metrics are unreadable (not numbers)")
        return info


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _check_plain(value: Any, where: str) -> None:
    """Refuse, naming where, a value that metadata cannot hold: None, NaN, an infinity, or a
    type that is not plain data."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ModelError(f"the model's {where} has a key that is not text: {key!r}")
            _check_plain(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ModelError(f"the model's {where} is {value}, which metadata cannot hold")
    elif value is None or not isinstance(value, str | int | bool):
        raise ModelError(
            f"the model's {where} is {type(value).__name__}, which metadata cannot hold"
        )


def training_row_ids(data: bytes) -> set[str]:
    """The ids in a version's TRAINING_ROWS file (its bytes, already verified)."""
    return set(gzip.decompress(data).decode().splitlines())


def load_pipeline(pickled: bytes) -> Any:
    """The pipeline unpickled from bytes whose signature was verified: only for a model that
    could not be exported to ONNX (a pickle is code)."""
    import joblib

    return joblib.load(io.BytesIO(pickled))
