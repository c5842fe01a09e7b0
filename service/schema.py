"""Request and response models built from the served model's metadata, so the OpenAPI document
shows the real feature names and types."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any

import bentoml
from bentoml.exceptions import BadInput, BentoMLException
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from scorebox.modelinfo import ModelInfo

if TYPE_CHECKING:
    from starlette.requests import Request

_TYPES: dict[str, type] = {"float": float, "int": float, "bool": float}


def record_model(info: ModelInfo, examples: dict[str, float] | None = None) -> type[BaseModel]:
    """One row of features: each a finite number or null (imputed); no other fields."""
    fields: dict[str, Any] = {}
    for name, dtype in info.features.items():
        fields[name] = (
            Annotated[
                _TYPES[dtype] | None,
                Field(
                    strict=True,
                    allow_inf_nan=False,
                    description=f"{dtype} feature `{name}`; null is imputed",
                    examples=[examples[name]] if examples else None,
                ),
            ],
            ...,
        )
    return create_model(
        "Record",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )


class InvalidRecords(BentoMLException):
    """Records that parse as JSON but break the schema: 422, naming record index and field."""

    error_code = HTTPStatus.UNPROCESSABLE_ENTITY


def _location(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


class UnsupportedMediaType(BentoMLException):
    """/predict reads JSON only: never pickles, forms or files."""

    error_code = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class _PredictInputBase(bentoml.IODescriptor):  # type: ignore[misc]
    """Accepts JSON only; turns pydantic's errors into 400 (malformed JSON) or 422 (naming the
    record and field)."""

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> bentoml.IODescriptor:
        media_type = request.headers.get("content-type", "application/json").split(";")[0]
        if media_type.strip().lower() != "application/json":
            raise UnsupportedMediaType(f"send application/json, not {media_type!r}")
        try:
            return await super().from_http_request(request, serde)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            if any(e["type"] == "json_invalid" for e in errors):
                raise BadInput(f"malformed JSON body: {errors[0]['msg']}") from None
            shown = "; ".join(f"{_location(e['loc'])}: {e['msg']}" for e in errors[:20])
            more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
            raise InvalidRecords(f"{len(errors)} invalid field(s): {shown}{more}") from None


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


def predict_input_model(record: type[BaseModel]) -> type[bentoml.IODescriptor]:
    """The /predict body: ``{"records": [...]}``; a single object counts as a list of one."""
    records: Any = Annotated[
        list[record],  # type: ignore[valid-type]
        BeforeValidator(_as_list),
        Field(min_length=1, description="records keyed by feature name (one object also works)"),
    ]
    model: type[bentoml.IODescriptor] = create_model(
        "PredictInput", __base__=_PredictInputBase, records=(records, ...)
    )
    return model


class Prediction(BaseModel):
    """The prediction for one record."""

    prediction: str | int | float | bool = Field(
        description="the predicted class (classification) or value (regression)"
    )
    probabilities: dict[str, float] | None = Field(
        None, description="classification: probability of each class"
    )


class PredictResponse(BaseModel):
    """Predictions in the order of the records sent, and the model that made them."""

    model: str = Field(description="tag of the model that produced these predictions")
    predictions: list[Prediction]


class ModelDescription(BaseModel):
    """What `/model` reports about the served model."""

    model_config = ConfigDict(protected_namespaces=())

    tag: str
    task: str
    features: dict[str, str]
    classes: list[Any]
    metrics: dict[str, float | None]
    training_rows: int
    fingerprint: str
    artifact_sha256: str
    estimator: str
