"""The service as BentoML's own clients discover it (``GET /schema.json``), so that
``bentoml.SyncHTTPClient(url).predict(records=[...])``, ``bentoml.AsyncHTTPClient`` and
``bentoml.depends(url=...)`` call scorebox's ``/predict`` like any BentoML API.

A BentoML client asks ``/schema.json`` for the service's ``routes``, makes a method of each, and
POSTs its keyword arguments as a JSON object to the route (``_bentoml_impl/client/http.py``).
It walks the input's and output's JSON schemas as it encodes and decodes: an object's listed
``properties`` are what it keeps of an answer, so every field of ``/predict``'s answer is listed,
and ``records`` (a list or one record, ``oneOf``) is sent as given, for ``/predict`` to check as
it checks any request. The routes are still answered by scorebox's front (service/front.py),
not by ``@bentoml.api``: publishing them changes nothing of how fast they are.

Only ``/predict`` is published: BentoML's clients POST JSON to every route, so the Arrow route
(a binary stream) and the GET routes are for plain HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from scorebox.modelinfo import ModelInfo
from service.openapi import prediction_schema, record_schema, records_schema, response_schema


def predict_route(info: ModelInfo, max_records: int) -> dict[str, Any]:
    """``/predict`` as one of BentoML's routes: ``predict(records=[...])``."""
    return {
        "name": "predict",
        "route": "/predict",
        "description": "Predict one record or a list of records: one prediction a record, in "
        "order, and the model version that answered.",
        "batchable": False,
        "input": {
            "title": "Input",
            "type": "object",
            "properties": {
                "records": records_schema(record_schema(info, openapi=False), max_records)
            },
            "required": ["records"],
        },
        "output": response_schema(prediction_schema()) | {"title": "Output"},
        "is_task": False,
    }


def document(
    base: dict[str, Any], info: ModelInfo, max_records: int, paths: Iterable[str]
) -> dict[str, Any]:
    """BentoML's own schema of the service (``base``: its name, description and paths) with
    scorebox's routes and ``paths`` added."""
    return base | {
        "routes": [*base.get("routes", []), predict_route(info, max_records)],
        "paths": {**base.get("paths", {}), **{path: {"mounted": False} for path in paths}},
    }
