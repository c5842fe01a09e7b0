"""The BentoML service, served by `bentoml serve .` (see bentofile.yaml).

The model is chosen by SCOREBOX_MODEL_NAME and SCOREBOX_MODEL_TAG (default ``latest``); its
metadata shapes the request schema, so the OpenAPI document shows the real feature names.
scorebox's routes (service/routes.py) are answered by its own ASGI app in front of BentoML's
(service/front.py); BentoML runs the worker processes and serves ``/livez``, ``/readyz`` and
``/metrics``.

Stop it with SIGTERM (or SIGINT): the workers finish the requests in flight and exit. A worker
also exits when the `bentoml serve` process dies, even by SIGKILL, so none is left on the port.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bentoml
from threadpoolctl import threadpool_limits

from scorebox.catalog import Catalog, Resolved
from scorebox.compiled import ONNX_ARTIFACT
from scorebox.errors import ScoreboxError
from scorebox.modelinfo import ARTIFACT
from scorebox.settings import get_settings
from service import http
from service.front import Front
from service.models import (
    Following,
    Pinned,
    Serving,
    check_name,
    count_refusal,
    load_predictor,
    registry_engine,
    serving,
)
from service.predict import Predictor
from service.predlog import PredictionLog
from service.routes import routes

log = logging.getLogger(__name__)

settings = get_settings()


def _front(app: Any) -> Front:
    return Front(
        app,
        lambda: routes(bentoml.get_current_service(), _bentoml_schema),
        settings.api_token.get_secret_value() if settings.api_token else None,
        settings.service_max_body_bytes,
        settings.service_body_timeout,
    )


def _bentoml_schema() -> dict[str, Any]:
    """BentoML's own schema of the service (``Scorebox`` below, a ``bentoml.Service`` by the time
    a request asks)."""
    service: Any = Scorebox
    return dict(service.schema())


http.install(settings.service_header_timeout, _front)
# Values per batch the service will hold at once: rows x features, about 80 MB of floats.
MAX_CELLS = 10_000_000


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when the `bentoml serve` process that started it dies
    (even by SIGKILL), so no orphan keeps answering on the port with an old model."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        log.warning("cannot tie this worker's life to its parent (not Linux?)")
        return
    if os.getppid() != parent or not _is_bentoml(parent):
        # The parent died before the request took effect, or before this worker got here (it
        # was reparented, so getppid() no longer names `bentoml serve`).
        os.kill(os.getpid(), signal.SIGTERM)


def _is_bentoml(pid: int) -> bool:
    """Whether process ``pid`` runs BentoML (a worker's parent is `bentoml serve`; a check on
    PID 1 would be wrong where `bentoml serve` itself is PID 1, as in a container)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc to ask: keep the worker
    return b"bentoml" in command


def _check_servable(catalog: Catalog, resolved: Resolved) -> None:
    """The version is one of the served model's (an alias may point at another model's), its
    signature and the file the service will load verified."""
    check_name(resolved.tag, settings.model_name, f"{settings.model_name}:{resolved.ref}")
    version = catalog.local(resolved.tag)
    version.read(ONNX_ARTIFACT if version.has(ONNX_ARTIFACT) else ARTIFACT)


# Resolved and checked when the module loads (in `bentoml serve` itself, before any worker
# starts): an alias or `latest` becomes one exact version, imported from the registry when this
# machine's store lacks it; a missing model is one clear line rather than BentoML's attempt to
# pull it from its cloud, and a version of another model, not signed by a trusted key, or whose
# files are not the ones signed, stops the server (each worker would fail to start, again and
# again).
REGISTRY = registry_engine(settings.database_url)
CATALOG = Catalog.from_settings(settings, REGISTRY)
try:
    RESOLVED = CATALOG.resolve(settings.model_name, settings.model_tag)
    _check_servable(CATALOG, RESOLVED)
except ScoreboxError as exc:
    # BentoML prints a traceback for any other error while it imports this module.
    raise SystemExit(f"scorebox service: {exc}") from None


@bentoml.service(name="scorebox", workers=settings.service_workers, traffic={"timeout": 60})
class Scorebox:
    """Predictions from the registered scorebox model."""

    model_ref = bentoml.models.BentoModel(RESOLVED.tag)

    def __init__(self) -> None:
        _die_with_parent()
        self.max_records = settings.service_max_records
        self.auth = settings.api_token is not None
        # Every model call runs on this one thread, whose OpenMP/BLAS pools are limited to one
        # thread (OpenMP's limit is per calling thread): with SCOREBOX_SERVICE_WORKERS processes,
        # more would fight over the cores (seen here: 2 workers fell from ~650 to 62 req/s).
        self.scoring = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="scoring",
            initializer=threadpool_limits,
            initargs=(1,),
        )
        resolved = CATALOG.resolve(settings.model_name, settings.model_tag)
        try:
            predictor = load_predictor(CATALOG, resolved.tag, settings.model_name)
        except ScoreboxError as exc:
            count_refusal(exc)
            raise
        self.current = self._serving(predictor)
        self.ref = resolved.ref
        self.pinned = Pinned(CATALOG, settings.model_name, settings.service_pinnable)
        self.following: Following | None = None
        if REGISTRY is not None and Following.wanted(resolved):
            self.following = Following(
                CATALOG,
                resolved,
                settings.model_name,
                settings.model_poll_seconds,
                self._switch,
                lambda: self.current.predictor,
            )
            self.following.start()
        self.prediction_log: PredictionLog | None = None
        if settings.log_predictions > 0 and settings.database_url.startswith("postgresql"):
            self.prediction_log = PredictionLog(
                settings.database_url,
                settings.log_predictions,
                max_value_chars=settings.log_max_value_chars,
                max_bytes=settings.log_buffer_bytes,
                retention_days=settings.log_retention_days,
            )
        log.info("serving %s (%s)", resolved.tag, resolved.ref)

    @bentoml.on_shutdown  # type: ignore[untyped-decorator]  # BentoML's SDK has no hints
    async def _write_the_log(self) -> None:
        """Write the prediction log's buffered rows before the worker stops."""
        if self.prediction_log is not None:
            await self.prediction_log.close()

    def _serving(self, predictor: Predictor) -> Serving:
        return serving(predictor, self.max_records, self.scoring, settings.drift_every_seconds)

    def max_rows_for(self, predictor: Predictor) -> int:
        """Rows one Arrow batch may hold for ``predictor``'s features."""
        return max(1, min(settings.service_max_rows, MAX_CELLS // len(predictor.info.features)))

    def _switch(self, predictor: Predictor) -> None:
        self.current = self._serving(predictor)  # one assignment: requests see old or new

    @property
    def predictor(self) -> Predictor:
        """The version serving now (a request takes it once and keeps it)."""
        return self.current.predictor

    def describe(self) -> dict[str, Any]:
        """The served model's tag, task, features, classes, metrics and training fingerprint,
        and where the tag came from (an alias or latest is followed)."""
        predictor = self.current.predictor
        info = predictor.info
        following = self.following
        return {
            "tag": predictor.tag,
            "ref": self.ref,
            "follows": following is not None,
            "switches": following.switches if following else 0,
            "switch_error": following.error if following else None,
            "task": info.task,
            "features": [f.to_dict() for f in info.features],
            "classes": info.classes,
            "metrics": info.metrics,
            "metrics_undefined": info.metrics_undefined,
            "training_rows": info.training_rows,
            "fingerprint": info.fingerprint,
            "artifact_sha256": info.artifact_sha256,
            "estimator": info.estimator,
            "left_out": info.left_out,
            "compiled": predictor.compiled,
            "compiled_note": info.compiled_note,
        }
