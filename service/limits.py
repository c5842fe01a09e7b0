"""Refuse oversized request bodies with 413 before reading them."""

from __future__ import annotations

from typing import Any

from service.auth import send_json


class BodyLimit:
    """Answer 413 to a request whose Content-Length exceeds ``max_bytes``, unread; a body sent
    without a length is cut off at ``max_bytes`` the same way."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Any) -> None:
        error = f"request body over {self.max_bytes} bytes (SCOREBOX_SERVICE_MAX_BODY_BYTES)"
        await send_json(send, 413, {"error": error}, (b"connection", b"close"))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send)
            return
        if length is not None:
            await self.app(scope, receive, send)
            return
        # No length given (chunked): read up to the limit here, then hand the body on.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Any:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)
