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


def _feature_schema(feature: Feature) -> dict[str, Any]:
    schema: dict[str, Any] = dict(_KINDS[feature.kind]) | {"nullable": True}
    about = f"{feature.kind} feature `{feature.name}` ({feature.sql_type}); null is missing"
    if feature.kind == "category" and feature.categories:
        shown = ", ".join(feature.categories[:10])
        about += f"; known values: {shown}{', ...' if len(feature.categories) > 10 else ''}"
        about += " (others are scored as missing)"
    return schema | {"description": about}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def document(info: ModelInfo, tag: str, max_records: int, auth: bool) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the service serving model ``tag``."""
    record = {
        "type": "object",
        "properties": {f.name: _feature_schema(f) for f in info.features},
        "required": [f.name for f in info.features],
        "additionalProperties": False,
    }
    probabilities = {
        "type": "object",
        "additionalProperties": {"type": "number"},
        "description": "probability of each class",
    }
    prediction = {
        "type": "object",
        "properties": {
            "prediction": {"description": "the predicted class or value"},
            "probabilities": probabilities,
        },
        "required": ["prediction"],
    }
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
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/PredictInput"}
                        }
                    },
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
                "Record": record,
                "PredictInput": {
                    "type": "object",
                    "properties": {
                        "records": {
                            "oneOf": [
                                {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Record"},
                                    "minItems": 1,
                                    "maxItems": max_records,
                                },
                                {"$ref": "#/components/schemas/Record"},
                            ]
                        }
                    },
                    "required": ["records"],
                    "additionalProperties": False,
                },
                "Prediction": prediction,
                "PredictResponse": {
                    "type": "object",
                    "properties": {
                        "model": {
                            "type": "string",
                            "description": "tag of the model that answered",
                        },
                        "predictions": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Prediction"},
                        },
                    },
                },
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
            }
        },
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
