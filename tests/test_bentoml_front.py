"""What the service's front (service/http.py) relies on in BentoML and uvicorn, checked against
the installed releases, so that an upgrade that changes any of it fails here, loudly and by
name, rather than leaving the service without its front, its deadlines or its head limit.

Why a wrapper of ``uvicorn.Config`` rather than BentoML's ``add_asgi_middleware``: BentoML puts a
service's own middleware inside its stack (metrics, OpenTelemetry, access log, timeout,
concurrency; ``_bentoml_impl/server/app.py``), so every request would pass through all of them
before the front could answer; the front answers before them (checked below too).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import h11
import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service import http


@pytest.fixture
def installed() -> Iterator[list[Any]]:
    """http.install() for one test, uvicorn.Config restored after; yields the apps the front
    wrapped."""
    original = uvicorn.Config
    wrapped: list[Any] = []

    def front(app: Any) -> Any:
        wrapped.append(app)
        return ("front", app)

    http.install(3.0, front)
    try:
        yield wrapped
    finally:
        uvicorn.Config = original  # type: ignore[misc]


def test_bentoml_builds_its_server_through_uvicorn_config_at_serve_time() -> None:
    from _bentoml_impl.worker import service as worker

    source = inspect.getsource(worker.main.callback)  # a click command
    assert "import uvicorn" in source and "uvicorn.Config(" in source, (
        "BentoML's worker (_bentoml_impl.worker.service.main) no longer looks up uvicorn.Config "
        "when it serves: service/http.py's install() would not install the front, the head "
        "deadline or the head size limit"
    )
    assert "app=asgi_app" in source, "BentoML no longer passes its ASGI app as app=..."
    assert "http=" not in source, "BentoML now chooses uvicorn's HTTP protocol itself"


def test_the_wrapped_config_puts_the_front_and_the_deadline_protocol_in_place(
    installed: list[Any],
) -> None:
    def bentoml_app(scope: Any, receive: Any, send: Any) -> None: ...

    config = uvicorn.Config(app=bentoml_app, workers=1, log_config=None)
    assert config.app == ("front", bentoml_app) and installed == [bentoml_app]
    assert config.http is http.DeadlineH11Protocol
    assert config.h11_max_incomplete_event_size == http.MAX_HEAD_BYTES
    positional = uvicorn.Config(bentoml_app, log_config=None)
    assert positional.app == ("front", bentoml_app)
    http.install(3.0, lambda app: ("again", app))  # a second install wraps nothing twice
    assert uvicorn.Config(app=bentoml_app, log_config=None).app == ("front", bentoml_app)


def test_uvicorn_h11_protocol_still_has_what_the_deadline_reads() -> None:
    parameters = inspect.signature(uvicorn.Config.__init__).parameters
    assert "h11_max_incomplete_event_size" in parameters, "uvicorn dropped the head size limit"
    # The deadline protocol overrides these hooks and reads these attributes of a connection.
    for hook in ("connection_made", "data_received", "connection_lost"):
        assert callable(getattr(H11Protocol, hook, None)), f"uvicorn's H11Protocol has no {hook}"
    source = inspect.getsource(H11Protocol)
    for attribute in ("self.conn = h11.Connection", "self.transport", "self.loop"):
        assert attribute in source, f"uvicorn's H11Protocol no longer sets {attribute}"
    assert hasattr(h11, "IDLE") and hasattr(h11.Connection, "their_state")


def test_a_service_middleware_would_run_inside_bentomls_own_stack() -> None:
    """The reason the front is not installed with add_asgi_middleware (see the module's text)."""
    from _bentoml_impl.server.app import ServiceAppFactory

    source = inspect.getsource(ServiceAppFactory.middlewares.fget)
    own = source.index("self.service.middlewares")
    for theirs in ("RunnerTrafficMetricsMiddleware", "OpenTelemetryMiddleware"):
        assert source.index(theirs) < own, f"BentoML now runs {theirs} after a service's own"
