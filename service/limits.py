"""Request bodies with bounded cost: counted as they arrive, whatever the headers claim.

A body over the limit is refused with 413 (before it is read when Content-Length says so); a
request that carries both Content-Length and Transfer-Encoding (request smuggling's favourite
shape) is refused with 400; a body that trickles in slower than the deadline allows gets 408.
"""

from __future__ import annotations

import asyncio
from typing import Any

from service.auth import send_json


class _Refused(Exception):
    def __init__(self, status: int, error: str) -> None:
        self.status = status
        self.error = error


class BodyLimit:
    """Read each request body here, counting bytes received, and hand it on whole."""

    def __init__(self, app: Any, max_bytes: int, deadline: float = 60.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.deadline = deadline

    def _too_large(self) -> _Refused:
        return _Refused(
            413, f"request body over {self.max_bytes} bytes (SCOREBOX_SERVICE_MAX_BODY_BYTES)"
        )

    async def _read(self, receive: Any) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Refused(400, "the client went away before sending its body")
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                raise self._too_large()
            chunks.append(body)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [name for name, _ in scope["headers"]]
        try:
            if b"transfer-encoding" in headers and b"content-length" in headers:
                raise _Refused(
                    400, "a request may not carry both Content-Length and Transfer-Encoding"
                )
            if headers.count(b"content-length") > 1:
                raise _Refused(400, "more than one Content-Length header")
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
                raise self._too_large() if length.isdigit() else _Refused(400, "bad Content-Length")
            try:
                body = await asyncio.wait_for(self._read(receive), self.deadline)
            except TimeoutError:
                raise _Refused(
                    408, f"request body not received within {self.deadline:.0f} s"
                ) from None
        except _Refused as refused:
            await send_json(
                send, refused.status, {"error": refused.error}, (b"connection", b"close")
            )
            return
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def replayed() -> Any:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)
