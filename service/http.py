"""The HTTP server under BentoML's uvicorn: a client must send a complete request head within a
deadline, so idle or trickling connections (slowloris) cannot pile up; and scorebox's own ASGI
app (service/front.py) answers in front of BentoML's.

BentoML builds ``uvicorn.Config`` in each worker after importing the service module and offers
no setting for either, so :func:`install` wraps ``uvicorn.Config``. Its supported hook,
``add_asgi_middleware``, would place the front inside BentoML's own middleware (metrics,
OpenTelemetry, access log, timeout), which every request would then pass first.
tests/test_bentoml_front.py checks each of these facts against the installed releases.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

# Bytes an incomplete request head may reach before it is refused (h11's default is 16 KiB).
MAX_HEAD_BYTES = 16 * 1024


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is late: a client has
    ``head_deadline`` seconds to send a complete head, from its first byte (or from connecting)."""

    head_deadline = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            self._cancel()
        elif self.conn.their_state is h11.IDLE:
            if self._head_timer is None:
                self._arm()
        else:
            self._cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._cancel()
        self._head_timer = self.loop.call_later(self.head_deadline, self._late)

    def _cancel(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _late(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def install(head_deadline: float, front: Callable[[Any], Any]) -> None:
    """Make every uvicorn server of this process use :class:`DeadlineH11Protocol` and run the
    ASGI app ``front(app)`` in front of BentoML's ``app``."""
    DeadlineH11Protocol.head_deadline = head_deadline
    original = uvicorn.Config
    if getattr(original, "scorebox", False):
        return

    class Config(original):  # type: ignore[misc, valid-type]
        scorebox = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["http"] = DeadlineH11Protocol
            kwargs.setdefault("h11_max_incomplete_event_size", MAX_HEAD_BYTES)
            if "app" in kwargs:
                kwargs["app"] = front(kwargs["app"])
            else:
                args = (front(args[0]), *args[1:])
            super().__init__(*args, **kwargs)

    uvicorn.Config = Config  # type: ignore[misc]
