"""The BentoML service, served by `bentoml serve .` (see bentofile.yaml).

The model is chosen by SCOREBOX_MODEL_NAME and SCOREBOX_MODEL_TAG (default ``latest``) and its
metadata shapes the request schema, so the OpenAPI page shows the real feature names.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException, NotFound
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from threadpoolctl import threadpool_limits

from scorebox.errors import ModelError
from scorebox.modelinfo import ModelInfo, verify_artifact
from scorebox.settings import get_settings
from service.auth import BearerAuth
from service.batching import Coalescer
from service.limits import BodyLimit
from service.predict import ARROW_MEDIA_TYPE, InvalidBatch, Predictor
from service.schema import ModelDescription, PredictResponse, predict_input_model, record_model

log = logging.getLogger(__name__)

settings = get_settings()
MODEL_TAG = f"{settings.model_name}:{settings.model_tag}"
# The file bentoml.sklearn.save_model writes the pipeline to.
ARTIFACT = "saved_model.pkl"


def _stored_model(tag: str) -> bentoml.Model:
    try:
        return bentoml.models.get(tag)
    except NotFound:
        raise ModelError(
            f"no model {tag} in the BentoML store; run `scorebox train` or set "
            "SCOREBOX_MODEL_NAME / SCOREBOX_MODEL_TAG (and BENTOML_HOME)"
        ) from None


_STORED = _stored_model(MODEL_TAG)
INFO = ModelInfo.from_metadata(_STORED.info.metadata, str(_STORED.tag))
PredictInput = predict_input_model(record_model(INFO))

rows_predicted = bentoml.metrics.Counter(
    name="scorebox_rows_predicted",
    documentation="Rows scored by the model, by endpoint",
    labelnames=["endpoint"],
)
rows_rejected = bentoml.metrics.Counter(
    name="scorebox_rows_rejected",
    documentation="Rows refused for their values (batch endpoint)",
    labelnames=["endpoint"],
)


class TooManyRecords(BentoMLException):
    """More records in one request than SCOREBOX_SERVICE_MAX_RECORDS allows."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


async def _describe(request: Request) -> Response:
    service = bentoml.get_current_service()
    return JSONResponse(service.describe().model_dump())


async def _predict_arrow(request: Request) -> Response:
    service = bentoml.get_current_service()
    body = await request.body()
    loop = asyncio.get_running_loop()
    try:
        payload = await loop.run_in_executor(service.scoring, service.predictor.predict_arrow, body)
    except InvalidBatch as exc:
        return JSONResponse({"error": str(exc)}, status_code=422)
    return Response(
        payload, media_type=ARROW_MEDIA_TYPE, headers={"X-Scorebox-Model": service.predictor.tag}
    )


extra_routes = Starlette(
    routes=[
        Route("/model", _describe, methods=["GET"]),
        Route("/predict/arrow", _predict_arrow, methods=["POST"]),
    ]
)


@bentoml.asgi_app(extra_routes, path="/v1")
@bentoml.service(
    name="scorebox",
    workers=settings.service_workers,
    traffic={"timeout": 60},
)
class Scorebox:
    """Predictions from the registered scorebox model."""

    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        model = self.model_ref
        verify_artifact(Path(model.path), INFO, str(model.tag))
        self.predictor = Predictor(bentoml.sklearn.load_model(model), INFO, str(model.tag))
        self.max_records = settings.service_max_records
        # Every model call runs on this one thread, whose OpenMP/BLAS pools are limited to one
        # thread (OpenMP's limit is per calling thread): with SCOREBOX_SERVICE_WORKERS processes,
        # more would fight over the cores (seen here: 2 workers fell from ~650 to 62 req/s).
        self.scoring = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="scoring",
            initializer=threadpool_limits,
            initargs=(1,),
        )
        self.coalesce = Coalescer(
            self.predictor.predict_matrix, max_rows=self.max_records, executor=self.scoring
        )
        log.info("serving %s", model.tag)

    def describe(self) -> ModelDescription:
        """The served model's tag, features, task, metrics and training fingerprint."""
        return ModelDescription(
            tag=self.predictor.tag,
            task=INFO.task,
            features=INFO.features,
            classes=INFO.classes,
            metrics=INFO.metrics,
            training_rows=INFO.training_rows,
            fingerprint=INFO.fingerprint,
            artifact_sha256=INFO.artifact_sha256,
            estimator=INFO.estimator,
        )

    @bentoml.api(route="/predict", input_spec=PredictInput)  # type: ignore[untyped-decorator]
    async def predict(self, records: list[Any]) -> PredictResponse:
        """Predict one record or a list of records."""
        rows = records
        if len(rows) > self.max_records:
            raise TooManyRecords(
                f"{len(rows)} records in one request; the limit is {self.max_records} "
                "(SCOREBOX_SERVICE_MAX_RECORDS): split the request or use /v1/predict/arrow"
            )
        matrix = self.predictor.matrix([row.model_dump() for row in rows])
        predictions = await self.coalesce(matrix)
        rows_predicted.labels(endpoint="predict").inc(len(rows))
        return PredictResponse(model=self.predictor.tag, predictions=predictions)  # type: ignore[arg-type]


# Added first, so it runs inside auth: an unauthenticated client learns nothing about limits.
Scorebox.add_asgi_middleware(  # type: ignore[attr-defined]
    BodyLimit, max_bytes=settings.service_max_body_bytes
)
if settings.api_token is not None:
    Scorebox.add_asgi_middleware(  # type: ignore[attr-defined]
        BearerAuth, token=settings.api_token.get_secret_value()
    )
