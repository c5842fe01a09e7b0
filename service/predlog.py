"""The prediction log: a sample of online requests (SCOREBOX_LOG_PREDICTIONS, a rate from 0 to 1)
written to PostgreSQL without slowing them down, in bounded memory, kept for a while.

A request only appends its records and answers to a buffer on the event loop (or counts them as
dropped when the buffer is full); a task on the same loop writes what gathered every
``interval`` seconds with asyncpg's binary COPY, on a connection of its own. When the database
is away the service keeps answering: the batch that could not be written is dropped and
counted, and the task reconnects with a growing pause.

What a client sends is logged as sent, with one exception, so that no request can make the log
(or this process, while rows wait) hold more than a few hundred characters of any value: a text
value longer than SCOREBOX_LOG_MAX_VALUE_CHARS that is not one of its feature's known categories
(the model scored it as missing) is logged as its first that many characters and ``…``. The
buffer is bounded by rows and by bytes (SCOREBOX_LOG_BUFFER_BYTES, what the rows' JSON takes).
Another task deletes what is older than SCOREBOX_LOG_RETENTION_DAYS (scorebox/retention.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
from prometheus_client import Counter, Gauge

from scorebox.db import PREDICTION_LOG_TABLE, asyncpg_arguments
from scorebox.retention import prune

log = logging.getLogger(__name__)

logged = Counter("scorebox_prediction_log_written", "Predictions written to the prediction log")
dropped = Counter(
    "scorebox_prediction_log_dropped",
    "Sampled predictions not logged (buffer full or database away), by reason",
    ["reason"],
)
cut = Counter(
    "scorebox_prediction_log_values_cut",
    "Text values logged cut to SCOREBOX_LOG_MAX_VALUE_CHARS (unseen and longer than that)",
)
pruned = Counter(
    "scorebox_prediction_log_pruned",
    "Log rows this process deleted past SCOREBOX_LOG_RETENTION_DAYS",
)
buffered = Gauge("scorebox_prediction_log_buffered", "Predictions waiting to be logged")
buffered_bytes = Gauge(
    "scorebox_prediction_log_buffered_bytes", "Bytes of predictions waiting to be logged"
)

_encode = msgspec.json.Encoder().encode
# What a buffered row costs beyond its JSON: the tuple, two str objects, its share of the rest.
ROW_OVERHEAD = 160
ELLIPSIS = "…"

Row = tuple[datetime, str, str, str, str]


def _capped(record: Any, text: Mapping[str, frozenset[str]], limit: int) -> tuple[Any, int]:
    """``record`` with each long text value that is not a known category cut to ``limit``
    characters and an ellipsis; and how many were cut."""
    long = [
        name
        for name, known in text.items()
        if isinstance(value := record.get(name), str) and len(value) > limit and value not in known
    ]
    if not long:
        return record, 0
    shorter = dict(record)
    for name in long:
        shorter[name] = shorter[name][:limit] + ELLIPSIS
    return shorter, len(long)


class PredictionLog:
    """A sampled, buffered, asynchronous writer of predictions to the log table, which also
    deletes the rows past their retention."""

    def __init__(
        self,
        database_url: str,
        rate: float,
        *,
        max_value_chars: int = 256,
        max_bytes: int = 16 * 2**20,
        retention_days: float = 7.0,
        capacity: int = 20_000,
        interval: float = 0.25,
        batch: int = 5_000,
        batch_bytes: int = 4 * 2**20,
    ) -> None:
        self.arguments = asyncpg_arguments(database_url, "scorebox-service-log")
        # A sampled log may lose its last fraction of a second in a database crash; not waiting
        # for each commit's WAL flush is worth that.
        self.arguments["server_settings"]["synchronous_commit"] = "off"
        self.rate = rate
        self.max_value_chars = max_value_chars
        self.max_bytes = max_bytes
        self.retention = retention_days * 86_400
        # A minute between prunes, or a tenth of the retention when that is shorter.
        self.prune_every = max(1.0, min(60.0, self.retention / 10))
        self.capacity = capacity
        self.interval = interval
        self.batch = batch
        self.batch_bytes = batch_bytes
        self._pending: deque[tuple[Row, int]] = deque()
        self._bytes = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._connection: Any = None
        self._pause = 0.0

    @property
    def pending_bytes(self) -> int:
        """What the rows waiting or being written take, as counted against the bound."""
        return self._bytes

    def offer(
        self,
        tag: str,
        text: Mapping[str, frozenset[str]],
        request_id: str,
        records: list[Any],
        answers: list[Any],
    ) -> None:
        """Sample a request's records for the log: cheap, never waits, never raises. ``text``
        names the model's text features, each with the values it knows (kept whole)."""
        if self.rate < 1.0 and random.random() >= self.rate:
            return
        if len(self._pending) + len(records) > self.capacity:
            dropped.labels(reason="buffer full").inc(len(records))
            return
        now = datetime.now(UTC)
        rows, size, shortened = [], 0, 0
        # As JSON text at once: strings cost the garbage collector nothing while they wait,
        # where thousands of buffered dicts would be scanned again and again.
        for record, answer in zip(records, answers, strict=True):
            kept, n = _capped(record, text, self.max_value_chars) if text else (record, 0)
            shortened += n
            features, prediction = _encode(kept), _encode(answer)
            cost = len(features) + len(prediction) + ROW_OVERHEAD
            size += cost
            if self._bytes + size > self.max_bytes:
                dropped.labels(reason="buffer full").inc(len(records))
                return
            rows.append(((now, tag, request_id, features.decode(), prediction.decode()), cost))
        self._pending.extend(rows)
        self._bytes += size
        if shortened:
            cut.inc(shortened)
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks.append(loop.create_task(self._run()))
            if self.retention > 0:
                self._tasks.append(loop.create_task(self._prune_forever()))

    def _take(self) -> tuple[list[Row], int]:
        """The next rows to write (at most ``batch`` rows and about ``batch_bytes`` bytes) and
        what they cost; they count against the bound until they are written or dropped."""
        taken: list[Row] = []
        size = 0
        while self._pending and len(taken) < self.batch and (not taken or size < self.batch_bytes):
            row, cost = self._pending.popleft()
            taken.append(row)
            size += cost
        return taken, size

    async def _write_next(self) -> bool:
        """Take the next rows off the buffer and write them; whether they were written."""
        rows, size = self._take()
        try:
            return await self._write(rows)
        finally:
            self._bytes -= size

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval + self._pause)
            buffered.set(len(self._pending))
            buffered_bytes.set(self._bytes)
            while self._pending:
                if not await self._write_next():
                    break

    async def close(self) -> None:
        """Stop the tasks, write what is still buffered (once: rows that cannot be written are
        dropped and counted) and close the connection; the service calls this as it stops."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        while self._pending:
            if not await self._write_next():
                dropped.labels(reason="database error").inc(len(self._pending))
                self._pending.clear()
                self._bytes = 0
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _write(self, rows: list[Row]) -> bool:
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
                _one_line(exc),
                self._pause,
            )
            return False
        self._pause = 0.0
        logged.inc(len(rows))
        return True

    async def _prune_forever(self) -> None:
        """Delete rows past the retention every ``prune_every`` seconds, on a connection of its
        own (a pass may take a while; writes go on meanwhile); after a failure, ten times later."""
        wait = self.prune_every
        while True:
            await asyncio.sleep(wait)
            wait = self.prune_every
            try:
                import asyncpg

                connection = await asyncpg.connect(**self.arguments)
                try:
                    done = await prune(connection, self.retention)
                finally:
                    await connection.close()
            except Exception as exc:  # the database away, or no DELETE grant: said, tried later
                wait = self.prune_every * 10
                log.warning(
                    "prediction log: cannot delete rows past SCOREBOX_LOG_RETENTION_DAYS (%s); "
                    "next try in %.0f s",
                    _one_line(exc),
                    wait,
                )
                continue
            if done.deleted:
                pruned.inc(done.deleted)
                log.info("prediction log: %d rows past their retention deleted", done.deleted)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


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
