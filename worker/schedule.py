"""The outcome of the last scheduled run (SCOREBOX_SCHEDULE_CRON), kept in Redis beside the
queue: a run that could not even record a job (no grant to insert one, the database away) is
still visible in `scorebox jobs list`."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from scorebox.settings import Settings

_KEY = "scorebox:schedule:{queue}"


def _client(settings: Settings) -> redis.Redis[bytes] | None:
    if not settings.redis_url.startswith(("redis://", "rediss://")):
        return None  # the embedded broker of `scorebox demo` has no schedule
    return redis.Redis.from_url(settings.redis_url, socket_timeout=5)


def record(settings: Settings, queue: str | None, job_id: int | None, error: str | None) -> None:
    """Keep the last scheduled run's job id or error, under the deployment's ``queue``."""
    client = _client(settings)
    if client is not None:
        outcome = {"at": time.time(), "job_id": job_id, "error": error}
        with client:
            client.set(_KEY.format(queue=queue or "unknown"), json.dumps(outcome))


def last(settings: Settings, queue: str) -> dict[str, Any] | None:
    """The last scheduled run's outcome, if there was one (and Redis answers)."""
    client = _client(settings)
    if client is None:
        return None
    try:
        with client:
            stored = client.get(_KEY.format(queue=queue))
    except redis.RedisError:
        return None
    return json.loads(stored) if stored else None
