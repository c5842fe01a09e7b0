"""The ASGI app uvicorn runs in each service worker: it answers scorebox's own routes itself and
hands the rest (``/livez``, ``/readyz``, ``/metrics``) to BentoML's app.

Answering here, in front of BentoML's middleware stack (request metrics, tracing, access log,
timeouts), is what keeps a prediction near the cost of the HTTP server itself; scorebox counts
its own requests (``scorebox_requests_total``) instead. For every request, before anything else:

- a request carrying both Content-Length and Transfer-Encoding (request smuggling's favourite
  shape), or two Content-Lengths, is refused with 400;
- with SCOREBOX_API_TOKEN set, every path but the health checks needs
  ``Authorization: Bearer <token>`` (compared in constant time), else 401;
- a body is counted as it arrives, whatever the headers claim: over the limit is 413 (before it
  is read when Content-Length says so), slower than the deadline is 408.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from prometheus_client import Counter, Histogram

from scorebox.errors import RequestRefusedError

HEALTH_PATHS = frozenset({"/livez", "/readyz", "/healthz"})

requests_total = Counter(
    "scorebox_requests",
    "Requests scorebox answered itself, by route and status",
    ["route", "status"],
)
request_seconds = Histogram(
    "scorebox_request_seconds",
    "Time to answer a request, by route",
    ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)


@dataclass
class Answer:
    """What a route returns: status, body and media type (JSON when ``body`` is not bytes)."""

    status: int
    body: Any
    media_type: str = "application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class Request:
    """What a route may look at."""

    method: str
    path: str
    headers: dict[bytes, bytes]
    body: bytes
    base_url: str


Route = Callable[[Request], Awaitable[Answer]]


def _json(payload: Any) -> bytes:
    try:
        return msgspec.json.encode(payload)
    except (msgspec.EncodeError, UnicodeEncodeError):
        # Text that is not valid Unicode (a lone surrogate a client sent), escaped instead.
        return json.dumps(payload, ensure_ascii=True).encode()


async def send_answer(send: Any, answer: Answer, close: bool = False) -> None:
    """Send ``answer`` as an ASGI response."""
    body = answer.body if isinstance(answer.body, bytes) else _json(answer.body)
    headers = [
        (b"content-type", answer.media_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *answer.headers,
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Front:
    """Routes by (method, path) to scorebox's handlers; BentoML's app gets everything else."""

    def __init__(
        self,
        app: Any,
        make_routes: Callable[[], dict[tuple[str, str], Route]],
        token: str | None,
        max_body_bytes: int,
        body_deadline: float,
    ) -> None:
        self.app = app
        self._make_routes = make_routes
        self._routes: dict[tuple[str, str], Route] | None = None
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.body_deadline = body_deadline

    @property
    def routes(self) -> dict[tuple[str, str], Route]:
        """The routes, made on first use (the service exists once BentoML's startup ran)."""
        if self._routes is None:
            self._routes = self._make_routes()
            self.paths = {p: sorted(m for m, q in self._routes if q == p) for _, p in self._routes}
        return self._routes

    def _check(self, scope: dict[str, Any]) -> dict[bytes, bytes]:
        names = [name for name, _ in scope["headers"]]
        if b"transfer-encoding" in names and b"content-length" in names:
            raise RequestRefusedError(
                400, "a request may not carry both Content-Length and Transfer-Encoding"
            )
        if names.count(b"content-length") > 1:
            raise RequestRefusedError(400, "more than one Content-Length header")
        headers = dict(scope["headers"])
        if not headers.get(b"content-type", b"").isascii():
            raise RequestRefusedError(400, "the Content-Type header is not ASCII")
        if self.token is not None and scope["path"] not in HEALTH_PATHS:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            # The scheme is case-insensitive (RFC 9110); the token is compared in constant time.
            if scheme.lower() != b"bearer" or not secrets.compare_digest(given.strip(), self.token):
                raise RequestRefusedError(401, "missing or wrong bearer token")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                raise RequestRefusedError(400, "bad Content-Length")
            if int(length) > self.max_body_bytes:
                raise self._too_large()
        return headers

    def _too_large(self) -> RequestRefusedError:
        return RequestRefusedError(
            413, f"request body over {self.max_body_bytes} bytes (SCOREBOX_SERVICE_MAX_BODY_BYTES)"
        )

    async def _read(self, receive: Any) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise RequestRefusedError(400, "the client went away before sending its body")
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(body)
            if not message.get("more_body", False):
                return b"".join(chunks) if len(chunks) != 1 else chunks[0]

    async def _body(self, receive: Any) -> bytes:
        try:
            return await asyncio.wait_for(self._read(receive), self.body_deadline)
        except TimeoutError:
            raise RequestRefusedError(
                408, f"request body not received within {self.body_deadline:.0f} s"
            ) from None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        key = (scope["method"], scope["path"])
        route = self.routes.get(key)
        try:
            headers = self._check(scope)
            if route is None and scope["path"] in self.paths:
                allowed = ", ".join(self.paths[scope["path"]]).encode()
                error = {"error": f"{scope['method']} is not allowed here"}
                await send_answer(send, Answer(405, error, headers=[(b"allow", allowed)]))
                return
            if route is None:
                await self.app(scope, receive, send)
                return
            body = await self._body(receive) if scope["method"] == "POST" else b""
        except RequestRefusedError as refused:
            if refused.status == 401:
                await send_answer(
                    send,
                    Answer(
                        401, {"error": refused.error}, headers=[(b"www-authenticate", b"Bearer")]
                    ),
                )
            else:
                await send_answer(
                    send, Answer(refused.status, {"error": refused.error}), close=True
                )
            return
        host = headers.get(b"host", b"localhost").decode("latin-1")
        answer = await route(
            Request(scope["method"], scope["path"], headers, body, f"http://{host}")
        )
        await send_answer(send, answer)
        requests_total.labels(route=scope["path"], status=str(answer.status)).inc()
        request_seconds.labels(route=scope["path"]).observe(time.perf_counter() - started)
