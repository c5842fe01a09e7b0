"""Bearer-token authentication as an ASGI middleware; only the health checks skip it."""

from __future__ import annotations

import json
import secrets
from typing import Any

HEALTH_PATHS = frozenset({"/livez", "/readyz", "/healthz"})


class BearerAuth:
    """Answer 401 to any HTTP request without ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in HEALTH_PATHS:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if secrets.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        await send_json(
            send, 401, {"error": "missing or wrong bearer token"}, (b"www-authenticate", b"Bearer")
        )


async def send_json(send: Any, status: int, payload: object, *headers: tuple[bytes, bytes]) -> None:
    """Answer an ASGI request with ``payload`` as JSON, from a middleware."""
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
