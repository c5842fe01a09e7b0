"""The prediction log: a sample of online requests (SCOREBOX_LOG_PREDICTIONS, a rate from 0 to 1)
written to PostgreSQL without slowing them down.

A request only appends its records and answers to a bounded buffer on the event loop (or counts
them as dropped when the buffer is full); a task on the same loop writes what gathered every
``interval`` seconds with asyncpg's binary COPY, on a connection of its own. When the database
is away the service keeps answering: the batch that could not be written is dropped and
counted, and the task reconnects with a growing pause.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import msgspec
from prometheus_client import Counter, Gauge

from scorebox.db import PREDICTION_LOG_TABLE, asyncpg_arguments

log = logging.getLogger(__name__)

logged = Counter("scorebox_prediction_log_written", "Predictions written to the prediction log")
dropped = Counter(
    "scorebox_prediction_log_dropped",
    "Sampled predictions not logged (buffer full or database away), by reason",
    ["reason"],
)
buffered = Gauge("scorebox_prediction_log_buffered", "Predictions waiting to be logged")

_encode = msgspec.json.Encoder().encode


def _text(value: Any) -> str:
    return _encode(value).decode()


class PredictionLog:
    """A sampled, buffered, asynchronous writer of predictions to the log table."""

    def __init__(
        self,
        database_url: str,
        rate: float,
        capacity: int = 20_000,
        interval: float = 0.25,
        batch: int = 5_000,
    ) -> None:
        self.arguments = asyncpg_arguments(database_url, "scorebox-service-log")
        # A sampled log may lose its last fraction of a second in a database crash; not waiting
        # for each commit's WAL flush is worth that.
        self.arguments["server_settings"]["synchronous_commit"] = "off"
        self.rate = rate
        self.capacity = capacity
        self.interval = interval
        self.batch = batch
        self._pending: deque[tuple[datetime, str, str, str, str]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._connection: Any = None
        self._pause = 0.0

    def offer(self, tag: str, request_id: str, records: list[Any], answers: list[Any]) -> None:
        """Sample a request's records for the log: cheap, never waits, never raises."""
        if self.rate < 1.0 and random.random() >= self.rate:
            return
        if len(self._pending) + len(records) > self.capacity:
            dropped.labels(reason="buffer full").inc(len(records))
            return
        now = datetime.now(UTC)
        # As JSON text at once: strings cost the garbage collector nothing while they wait,
        # where thousands of buffered dicts would be scanned again and again.
        for record, answer in zip(records, answers, strict=True):
            self._pending.append((now, tag, request_id, _text(record), _text(answer)))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval + self._pause)
            buffered.set(len(self._pending))
            while self._pending:
                taken = [
                    self._pending.popleft() for _ in range(min(self.batch, len(self._pending)))
                ]
                if not await self._write(taken):
                    break

    async def _write(self, taken: list[tuple[datetime, str, str, str, str]]) -> bool:
        rows = taken
        try:
            if self._connection is None or self._connection.is_closed():
                import asyncpg

                self._connection = await asyncpg.connect(**self.arguments)
            await self._connection.copy_records_to_table(
                PREDICTION_LOG_TABLE,
                records=rows,
                columns=["logged_at", "model_tag", "request_id", "features", "prediction"],
                timeout=10,
            )
        except Exception as exc:  # the database away, or anything else: drop, count, go on
            dropped.labels(reason="database error").inc(len(rows))
            self._pause = min(max(self._pause * 2, 0.5), 10.0)
            if self._connection is not None:
                self._connection.terminate()
                self._connection = None
            log.warning(
                "prediction log: %d predictions dropped (%s); next try in %.1f s",
                len(rows),
                " ".join(str(exc).split())[:200] or type(exc).__name__,
                self._pause,
            )
            return False
        self._pause = 0.0
        logged.inc(len(rows))
        return True


# Request ids made here: this process's start (microseconds, hex) and a counter.
_PREFIX = f"{time.time_ns() // 1000:x}{random.getrandbits(16):04x}"
_COUNTER = itertools.count(1)


def request_id(given: bytes | None) -> str:
    """The caller's ``x-request-id`` (printable, at most 64 characters) or a new one."""
    if given:
        text = given.decode("latin-1").strip()
        if 0 < len(text) <= 64 and text.isprintable():
            return text
    return f"{_PREFIX}-{next(_COUNTER)}"
