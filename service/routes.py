"""scorebox's routes, answered by the front app (service/front.py): predictions from JSON records
and Arrow batches, the model's description, the OpenAPI document and the front page. Every
input problem is a 4xx naming it."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from concurrent.futures import Executor
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter

from scorebox.errors import ArrowStreamError, ModelError, RegistryUnavailableError, RequestBodyError
from service import bentoschema, openapi, page
from service.arrow import ARROW_MEDIA_TYPE, read_table, write_table
from service.front import Answer, Request, Route
from service.models import public
from service.predlog import request_id
from service.records import parse_records

if TYPE_CHECKING:
    from service.models import Pinned, Serving
    from service.predict import Predictor
    from service.predlog import PredictionLog


class ServingState(Protocol):
    """What the routes read of the service (service/service.py's Scorebox is one): the routes
    depend on this narrow state, not on the service class that installs them."""

    current: Serving
    pinned: Pinned
    scoring: Executor
    prediction_log: PredictionLog | None
    max_records: int
    auth: bool

    @property
    def predictor(self) -> Predictor: ...

    def max_rows_for(self, predictor: Predictor) -> int: ...

    def describe(self) -> dict[str, Any]: ...


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
# Up to this many rows, a compiled model scores on the event loop: cheaper than a thread hop.
INLINE_ROWS = 64


def _media_type(request: Request, default: str) -> str:
    given = request.headers.get(b"content-type", b"").decode("latin-1")
    return given.split(";")[0].strip().lower() or default


def _count_unseen(unseen: Any) -> None:
    for feature, count in unseen.items():
        unseen_categories.labels(feature=feature).inc(count)


def _pinned_tag(request: Request) -> str | None:
    """The exact version a request asks for (``x-scorebox-model: name:version``), if any."""
    given = request.headers.get(b"x-scorebox-model")
    return given.decode("latin-1").strip() if given else None


async def _predictor(
    service: ServingState, request: Request, current: Predictor
) -> Predictor | Answer:
    """The version a request pins (``x-scorebox-model``), loaded off the event loop, or
    ``current``; a 409 (or a 503 while the registry is away) naming why not."""
    tag = _pinned_tag(request)
    if not tag or tag == current.tag:
        return current
    try:
        return await asyncio.get_running_loop().run_in_executor(None, service.pinned.get, tag)
    except RegistryUnavailableError as exc:
        return Answer(503, {"error": public(f"cannot load {tag[:200]} now: {exc}")})
    except ModelError as exc:
        return Answer(409, {"error": public(f"cannot serve {tag[:200]}: {exc}")})


def routes(
    service: ServingState, bentoml_schema: Callable[[], dict[str, Any]]
) -> dict[tuple[str, str], Route]:
    """The routes of ``service``, by (method, path); ``bentoml_schema`` gives BentoML's own
    schema of the service, to which ``/schema.json`` adds scorebox's routes."""

    async def predict(request: Request) -> Answer:
        """JSON records in, one prediction each out."""
        media_type = _media_type(request, "application/json")
        if media_type != "application/json":
            return Answer(415, {"error": f"send application/json, not {media_type!r}"})
        current = service.current  # taken once: a switch never splits a request
        predictor = await _predictor(service, request, current.predictor)
        if isinstance(predictor, Answer):
            return predictor
        try:
            records = parse_records(request.body, predictor.features, service.max_records)
            matrix, unseen = predictor.encode_records(records)
        except RequestBodyError as problem:
            return Answer(problem.status, {"error": str(problem)})
        if predictor.compiled and len(records) <= INLINE_ROWS:
            answers = predictor.answers(matrix)
        elif predictor is current.predictor:
            answers = await current.coalesce(matrix)
        else:
            answers = await asyncio.get_running_loop().run_in_executor(
                service.scoring, predictor.answers, matrix
            )
        _count_unseen(unseen)
        rows_predicted.labels(endpoint="predict").inc(len(records))
        for answer in answers:
            value = answer["prediction"]
            if isinstance(value, float) and not math.isfinite(value):
                answer["prediction"] = None  # a linear model can overflow on extreme inputs
        if predictor is current.predictor and current.online is not None:
            current.online.add(matrix)
        if service.prediction_log is None:
            return Answer(200, {"model": predictor.tag, "predictions": answers})
        rid = request_id(request.headers.get(b"x-request-id"))
        service.prediction_log.offer(predictor.tag, predictor.text_values, rid, records, answers)
        return Answer(
            200,
            {"model": predictor.tag, "predictions": answers},
            headers=[(b"x-request-id", rid.encode())],
        )

    async def predict_arrow(request: Request) -> Answer:
        """An Arrow stream of feature columns in, a stream of predictions out."""
        media_type = _media_type(request, ARROW_MEDIA_TYPE)
        if media_type not in (ARROW_MEDIA_TYPE, "application/octet-stream"):
            return Answer(415, {"error": f"send {ARROW_MEDIA_TYPE}, not {media_type!r}"})
        predictor = await _predictor(service, request, service.current.predictor)
        if isinstance(predictor, Answer):
            return predictor
        max_rows = service.max_rows_for(predictor)

        def score() -> tuple[bytes, Any]:
            encoded = predictor.encode_table(read_table(request.body, max_rows))
            return write_table(predictor.score_table(encoded)), encoded

        try:
            payload, encoded = await asyncio.get_running_loop().run_in_executor(
                service.scoring, score
            )
        except ArrowStreamError as problem:
            return Answer(problem.status, {"error": str(problem)})
        rejected = encoded.rejected
        _count_unseen(encoded.unseen)
        rows_predicted.labels(endpoint="arrow").inc(len(encoded.errors) - rejected)
        if rejected:
            rows_rejected.labels(endpoint="arrow").inc(rejected)
        return Answer(
            200, payload, ARROW_MEDIA_TYPE, [(b"x-scorebox-model", predictor.tag.encode())]
        )

    async def describe(request: Request) -> Answer:
        """The served model: tag, task, features, classes, metrics, fingerprint."""
        return Answer(200, service.describe())

    async def docs(request: Request) -> Answer:
        """The OpenAPI document, built from the model's features."""
        predictor = service.predictor
        return Answer(
            200, openapi.document(predictor.info, predictor.tag, service.max_records, service.auth)
        )

    async def front_page(request: Request) -> Answer:
        """What the model is and how to call it."""
        predictor = service.predictor
        html = page.render(
            predictor.info, predictor.tag, request.base_url, service.auth, service.max_records
        )
        return Answer(200, html.encode(), "text/html; charset=utf-8")

    async def schema(request: Request) -> Answer:
        """The service as BentoML's clients discover it, with scorebox's routes."""
        paths = sorted({path for _, path in answered})
        return Answer(
            200,
            bentoschema.document(
                bentoml_schema(), service.predictor.info, service.max_records, paths
            ),
        )

    swagger_page = files("_bentoml_impl.server").joinpath("main-openapi.html").read_bytes()

    async def swagger(request: Request) -> Answer:
        """BentoML's Swagger UI, reading this service's ``/docs.json``."""
        return Answer(200, swagger_page, "text/html; charset=utf-8")

    answered: dict[tuple[str, str], Route] = {
        ("GET", "/"): front_page,
        ("GET", "/docs.json"): docs,
        ("GET", "/schema.json"): schema,
        ("GET", "/swagger"): swagger,
        ("POST", "/predict"): predict,
        ("GET", "/v1/model"): describe,
        ("POST", "/v1/predict/arrow"): predict_arrow,
    }
    return answered
