"""Liveness and readiness of a worker, as files whose age a probe reads for nothing.

``celery inspect ping`` costs seconds of CPU a probe and fails while the broker blips; instead the
worker keeps two files in its temporary directory (``$TMPDIR``, else /tmp):

- ``scorebox-worker.live`` is touched every few seconds by a timer of the worker's own event loop,
  so it ages when that loop hangs (a probe: the file is younger than a few minutes);
- ``scorebox-worker.ready`` is touched by a thread of its own each time the database and the broker
  both answered, so it ages while either is away (a probe: the file is younger than 20 seconds).

The same thread announces the worker in Redis (``scorebox:consumers:<queue>:<worker>``, expiring
after :data:`ANNOUNCED` seconds), so `scorebox score` can say within seconds that no worker reads a
job's queue.

The probes are shell ``test`` commands (deploy/kubernetes/base/worker.yaml).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine, text

from scorebox.db import make_engine
from scorebox.errors import one_line
from scorebox.settings import Settings

log = logging.getLogger(__name__)

LIVE = "scorebox-worker.live"
READY = "scorebox-worker.ready"
INTERVAL = 5.0
# How long an announcement lasts: a few checks, so one slow check does not hide a worker.
ANNOUNCED = 20
_CONSUMER = "scorebox:consumers:{queue}:{worker}"


def consumers(broker: redis.Redis[bytes], queue: str) -> int:
    """How many workers announced in the last :data:`ANNOUNCED` seconds that they read ``queue``."""
    pattern = _CONSUMER.format(queue=queue, worker="*")
    return sum(1 for _ in broker.scan_iter(match=pattern, count=1000))


def folder() -> Path:
    """Where the files are: the process's temporary directory (an emptyDir in a pod)."""
    return Path(tempfile.gettempdir())


def touch(name: str) -> None:
    """Set the file's modification time to now."""
    (folder() / name).touch()


def answers(engine: Engine, broker: redis.Redis[bytes]) -> bool:
    """Whether the database and the broker both answer now."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        broker.ping()
    except Exception as exc:
        # Any failure means "not ready"; the next check tries again.
        log.warning("worker not ready: %s", one_line(exc, 300))
        return False
    return True


class Readiness(threading.Thread):
    """Touches the readiness file each ``interval`` seconds that ``check`` passes."""

    def __init__(self, check: Callable[[], bool], interval: float = INTERVAL) -> None:
        super().__init__(name="scorebox-readiness", daemon=True)
        self.check = check
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            if self.check():
                touch(READY)
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        """Stop after the current check; the file is removed so a stopping worker is unready."""
        self.stopped.set()
        (folder() / READY).unlink(missing_ok=True)


def start(
    consumer: Any, settings: Settings, queue: str, interval: float = INTERVAL
) -> list[Readiness]:
    """Touch the liveness file now and every ``interval`` seconds from ``consumer``'s timer (which
    the worker's event loop runs), and start the readiness thread, which also announces that
    this worker reads ``queue`` (on a Redis broker; the embedded broker of `scorebox demo` has no
    pods to probe). Returns the threads started."""
    touch(LIVE)
    consumer.timer.call_repeatedly(interval, touch, (LIVE,), priority=0)
    if not settings.redis_url.startswith(("redis://", "rediss://")):
        return []
    engine = make_engine(settings.database_url, connect_timeout=3)
    broker = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
    key = _CONSUMER.format(queue=queue, worker=f"{socket.gethostname()}:{os.getpid()}")

    def check() -> bool:
        if not answers(engine, broker):
            return False
        try:
            broker.set(key, "1", ex=ANNOUNCED)
        except redis.RedisError:
            return False
        return True

    readiness = Readiness(check, interval)
    readiness.start()
    return [readiness]
