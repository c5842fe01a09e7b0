"""The service's HTTP routes, a Starlette app mounted in the BentoML service (BentoML keeps
``/livez``, ``/readyz`` and ``/metrics``). Every input problem is a 4xx naming it."""

from __future__ import annotations

import asyncio
import math
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import bentoml
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from service import openapi, page
from service.arrow import ARROW_MEDIA_TYPE, ArrowProblem, read_table, write_table
from service.records import BodyProblem, parse_records

if TYPE_CHECKING:
    from service.service import Scorebox

rows_predicted = Counter(
    "scorebox_rows_predicted", "Rows scored by the model, by endpoint", ["endpoint"]
)
rows_rejected = Counter(
    "scorebox_rows_rejected", "Rows refused for their values (batch endpoint)", ["endpoint"]
)
unseen_categories = Counter(
    "scorebox_unseen_categories",
    "Category values never seen in training (scored as missing), by feature",
    ["feature"],
)


def _service() -> Scorebox:
    return bentoml.get_current_service()


def _refuse(status: int, error: str) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _count_unseen(unseen: Any) -> None:
    for feature, count in unseen.items():
        unseen_categories.labels(feature=feature).inc(count)


async def predict(request: Request) -> Response:
    """JSON records in, one prediction each out."""
    service = _service()
    media_type = _media_type(request) or "application/json"
    if media_type != "application/json":
        return _refuse(415, f"send application/json, not {media_type!r}")
    predictor = service.predictor
    try:
        records = parse_records(await request.body(), predictor.features, service.max_records)
    except BodyProblem as problem:
        return _refuse(problem.status, str(problem))
    matrix, unseen = predictor.encode_records(records)
    answers = await service.coalesce(matrix)
    _count_unseen(unseen)
    rows_predicted.labels(endpoint="predict").inc(len(records))
    for answer in answers:
        value = answer["prediction"]
        if isinstance(value, float) and not math.isfinite(value):
            answer["prediction"] = None  # a linear model can overflow on extreme inputs
    return JSONResponse({"model": predictor.tag, "predictions": answers})


async def predict_arrow(request: Request) -> Response:
    """An Arrow stream of feature columns in, a stream of predictions out."""
    service = _service()
    media_type = _media_type(request) or ARROW_MEDIA_TYPE
    if media_type not in (ARROW_MEDIA_TYPE, "application/octet-stream"):
        return _refuse(415, f"send {ARROW_MEDIA_TYPE}, not {media_type!r}")
    predictor = service.predictor
    body = await request.body()

    def score() -> tuple[bytes, int, Any]:
        table = read_table(body, service.max_rows)
        encoded = predictor.encode_table(table)
        result = predictor.score_table(encoded)
        return write_table(result), sum(e is not None for e in encoded.errors), encoded

    try:
        payload, rejected, encoded = await asyncio.get_running_loop().run_in_executor(
            service.scoring, score
        )
    except ArrowProblem as problem:
        return _refuse(problem.status, str(problem))
    _count_unseen(encoded.unseen)
    rows_predicted.labels(endpoint="arrow").inc(len(encoded.errors) - rejected)
    if rejected:
        rows_rejected.labels(endpoint="arrow").inc(rejected)
    return Response(
        payload, media_type=ARROW_MEDIA_TYPE, headers={"X-Scorebox-Model": predictor.tag}
    )


async def describe(request: Request) -> Response:
    """The served model: tag, task, features, classes, metrics, fingerprint."""
    return JSONResponse(_service().describe())


async def docs(request: Request) -> Response:
    """The OpenAPI document, built from the model's features."""
    service = _service()
    return JSONResponse(
        openapi.document(
            service.predictor.info, service.predictor.tag, service.max_records, service.auth
        )
    )


async def front_page(request: Request) -> Response:
    """What the model is and how to call it."""
    service = _service()
    base = str(request.base_url).rstrip("/")
    return HTMLResponse(
        page.render(
            service.predictor.info, service.predictor.tag, base, service.auth, service.max_records
        )
    )


_SWAGGER = files("_bentoml_impl.server").joinpath("main-openapi.html")


async def swagger(request: Request) -> Response:
    """BentoML's Swagger UI, reading this service's ``/docs.json``."""
    return HTMLResponse(_SWAGGER.read_text())


app = Starlette(
    routes=[
        Route("/", front_page, methods=["GET"]),
        Route("/docs.json", docs, methods=["GET"]),
        Route("/swagger", swagger, methods=["GET"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/v1/model", describe, methods=["GET"]),
        Route("/v1/predict/arrow", predict_arrow, methods=["POST"]),
    ]
)
