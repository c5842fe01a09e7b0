"""The service's OpenAPI document (``/docs.json``), built from the served model's features, so
clients and generated tests see the real feature names, kinds and limits."""

from __future__ import annotations

from typing import Any

from scorebox.features import Feature
from scorebox.modelinfo import ModelInfo
from service.arrow import ARROW_MEDIA_TYPE

_KINDS: dict[str, dict[str, Any]] = {
    "number": {"type": "number"},
    "bool": {"type": "boolean"},
    "category": {"type": "string"},
    "date": {"type": "string", "format": "date"},
    "datetime": {"type": "string", "format": "date-time"},
}


def _feature_schema(feature: Feature, openapi: bool) -> dict[str, Any]:
    """A feature's value: OpenAPI 3.0 marks null with ``nullable``, JSON Schema (BentoML's
    /schema.json) with a ``null`` alternative."""
    kind = dict(_KINDS[feature.kind])
    schema = kind | {"nullable": True} if openapi else {"anyOf": [kind, {"type": "null"}]}
    about = f"{feature.kind} feature `{feature.name}` ({feature.sql_type}); null is missing"
    if feature.kind == "category" and feature.categories:
        shown = ", ".join(feature.categories[:10])
        about += f"; known values: {shown}{', ...' if len(feature.categories) > 10 else ''}"
        about += " (others are scored as missing)"
    return schema | {"description": about}


def record_schema(info: ModelInfo, openapi: bool = True) -> dict[str, Any]:
    """One record: every feature, by name; its example is a holdout row of training's."""
    record: dict[str, Any] = {
        "type": "object",
        "properties": {f.name: _feature_schema(f, openapi) for f in info.features},
        "required": [f.name for f in info.features],
        "additionalProperties": False,
    }
    if info.example:
        if openapi:
            record["example"] = info.example
        else:
            record["examples"] = [info.example]
    return record


def records_schema(record: dict[str, Any], max_records: int) -> dict[str, Any]:
    """The ``records`` field: a list of records, or one record."""
    return {
        "oneOf": [
            {"type": "array", "items": record, "minItems": 1, "maxItems": max_records},
            record,
        ],
        "description": f"the records to score (at most {max_records}), or one record",
    }


def prediction_schema() -> dict[str, Any]:
    """One answer: the prediction and, from a classifier, every class's probability."""
    return {
        "type": "object",
        "properties": {
            "prediction": {"description": "the predicted class or value"},
            "probabilities": {
                "type": "object",
                "additionalProperties": {"type": "number"},
                "description": "probability of each class",
            },
        },
        "required": ["prediction"],
    }


def response_schema(prediction: dict[str, Any]) -> dict[str, Any]:
    """The answer to ``/predict``: the version that answered and one prediction a record."""
    return {
        "type": "object",
        "properties": {
            "model": {"type": "string", "description": "tag of the model that answered"},
            "predictions": {
                "type": "array",
                "items": prediction,
                "description": "one prediction a record, in order",
            },
        },
        "required": ["model", "predictions"],
    }


def _with_example(info: ModelInfo) -> dict[str, Any]:
    """The request body's media type, with a record of training's holdout as its example."""
    media: dict[str, Any] = {"schema": {"$ref": "#/components/schemas/PredictInput"}}
    if info.example:
        media["example"] = {"records": [info.example]}
    return media


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def document(info: ModelInfo, tag: str, max_records: int, auth: bool) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the service serving model ``tag``."""
    refused = {
        "400": _error("the body is not JSON"),
        "413": _error("too many records or too large a body"),
        "415": _error("not application/json"),
        "422": _error("a record breaks the schema: the answer names the record and field"),
    }
    if auth:
        refused["401"] = _error("missing or wrong bearer token")
    operations: dict[str, Any] = {
        "/predict": {
            "post": {
                "summary": "Predict one record or a list of records",
                "operationId": "predict",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": _with_example(info)},
                },
                "responses": {
                    "200": {
                        "description": "one prediction a record, in order",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/PredictResponse"}
                            }
                        },
                    },
                }
                | refused,
            }
        },
        "/v1/predict/arrow": {
            "post": {
                "summary": "Score an Arrow IPC stream of feature columns (batch scoring)",
                "operationId": "predict_arrow",
                "requestBody": {
                    "required": True,
                    "content": {
                        ARROW_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}
                    },
                },
                "responses": {
                    "200": {
                        "description": "an Arrow stream: error, predicted_label or "
                        "predicted_value, probability, p:<class>; one row a row sent",
                        "content": {
                            ARROW_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}
                        },
                    }
                }
                | refused,
            }
        },
        "/v1/model": {
            "get": {
                "summary": "The served model: tag, task, features, classes, metrics",
                "operationId": "model",
                "responses": {"200": {"description": "the model's description"}},
            }
        },
    }
    operations["/schema.json"] = {
        "get": {
            "summary": "The service as BentoML's clients read it (bentoml.SyncHTTPClient)",
            "operationId": "bentoml_schema",
            "responses": {"200": {"description": "BentoML's schema of the service"}},
        }
    }
    for path, about in (
        ("/livez", "the process is alive"),
        ("/readyz", "the service is ready"),
        ("/metrics", "Prometheus metrics"),
    ):
        operations[path] = {"get": {"summary": about, "responses": {"200": {"description": "ok"}}}}
    doc: dict[str, Any] = {
        "openapi": "3.0.2",
        "info": {
            "title": f"scorebox: {tag}",
            "version": tag.partition(":")[2] or "latest",
            "description": f"{info.task} model trained on {info.feature_table} "
            f"({info.estimator}); predicts {info.target_column}.",
        },
        "paths": operations,
        "components": {
            "schemas": {
                "Record": record_schema(info),
                "PredictInput": {
                    "type": "object",
                    "properties": {
                        "records": records_schema(
                            {"$ref": "#/components/schemas/Record"}, max_records
                        )
                    },
                    "required": ["records"],
                    "additionalProperties": False,
                },
                "Prediction": prediction_schema(),
                "PredictResponse": response_schema({"$ref": "#/components/schemas/Prediction"}),
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
            }
        },
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
