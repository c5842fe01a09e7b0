"""What the dashboard reads, with asyncpg, on a connection that cannot write."""

from __future__ import annotations

from typing import Any

from scorebox import ledger
from scorebox.db import ALIASES_TABLE, MODELS_TABLE, PREDICTION_LOG_TABLE

_VERSIONS = (
    "SELECT m.tag, m.name, m.created_at, m.created_by, CASE WHEN length(m.signature) <= $1 "
    "THEN m.signature END AS signature, coalesce(array_agg(a.alias ORDER BY a.alias) "
    f"FILTER (WHERE a.alias IS NOT NULL), '{{}}') AS aliases FROM {MODELS_TABLE} m "
    f"LEFT JOIN {ALIASES_TABLE} a ON a.tag = m.tag"
)


async def models(conn: Any, max_signature: int) -> list[dict[str, Any]]:
    """Registered versions, newest first, with their aliases and signatures (None when larger
    than ``max_signature``; the caller verifies them)."""
    rows = await conn.fetch(
        f"{_VERSIONS} GROUP BY m.tag ORDER BY m.created_at DESC, m.tag DESC LIMIT 50",
        max_signature,
    )
    return [dict(r) for r in rows]


async def model(conn: Any, tag: str, max_signature: int) -> dict[str, Any] | None:
    """Version ``tag`` as :func:`models` gives each, or None when it is not registered."""
    row = await conn.fetchrow(f"{_VERSIONS} WHERE m.tag = $2 GROUP BY m.tag", max_signature, tag)
    return None if row is None else dict(row)


async def signature(conn: Any, tag: str, max_signature: int) -> tuple[bool, str | None]:
    """(whether version ``tag`` is registered, its signature if not larger than the cap)."""
    row = await conn.fetchrow(
        f"SELECT CASE WHEN length(signature) <= $2 THEN signature END AS signature FROM "
        f"{MODELS_TABLE} WHERE tag = $1",
        tag,
        max_signature,
    )
    return (False, None) if row is None else (True, row["signature"])


async def archive(conn: Any, tag: str, max_bytes: int) -> bytes | None:
    """Version ``tag``'s archive, None when it is larger than ``max_bytes``."""
    return await conn.fetchval(
        f"SELECT artifact FROM {MODELS_TABLE} WHERE tag = $1 AND length(artifact) <= $2",
        tag,
        max_bytes,
    )


def _job(row: Any) -> dict[str, Any]:
    job = dict(row)
    seconds = float(job["seconds"] or 0)
    done = job["rows_scored"] + job["rows_failed"]
    job["rate"] = done / seconds if seconds > 0 else None
    job["progress"] = min(1.0, done / job["rows_total"]) if job["rows_total"] else 1.0
    return job


# The job ledger's statements are scorebox/ledger.py's (DASHBOARD_*), its one owner.


async def jobs(conn: Any, limit: int = 50) -> list[dict[str, Any]]:
    """Recent jobs with their progress and speed (rows a second since they started)."""
    return [_job(r) for r in await conn.fetch(ledger.DASHBOARD_JOBS, limit)]


async def job(conn: Any, job_id: int) -> dict[str, Any] | None:
    """One job as :func:`jobs` gives each, or None."""
    row = await conn.fetchrow(ledger.DASHBOARD_JOB, job_id)
    return None if row is None else _job(row)


async def failed_rows(conn: Any, job_id: int, limit: int = 50) -> list[dict[str, Any]]:
    """The first rows of a job that could not be scored, with the reason."""
    return [dict(r) for r in await conn.fetch(ledger.DASHBOARD_FAILED, job_id, limit)]


async def job_reference(conn: Any, job_id: int) -> str | None:
    """A job's model reference: its features and training profile (JSON text)."""
    return await conn.fetchval(ledger.DASHBOARD_REFERENCE, job_id)


async def done_chunks(conn: Any, job_id: int) -> list[int]:
    """The numbers of a job's done chunks that carry counts."""
    return await conn.fetchval(ledger.DASHBOARD_DONE_CHUNKS, job_id)


async def chunk_counts(conn: Any, job_id: int, first: int, last: int) -> list[tuple[int, str]]:
    """(chunk number, counts as JSON text) of a job's chunks ``first`` to ``last`` that carry
    counts (done ones)."""
    rows = await conn.fetch(ledger.DASHBOARD_CHUNK_COUNTS, job_id, first, last)
    return [(r[0], r[1]) for r in rows]


async def log_volume(conn: Any, hours: int = 24) -> tuple[list[tuple[Any, int]], Any]:
    """Logged predictions a minute over the last ``hours``, and the database's time now."""
    rows = await conn.fetch(
        f"SELECT date_trunc('minute', logged_at) AS minute, count(*) AS n, now() AS now FROM "
        f"{PREDICTION_LOG_TABLE} WHERE logged_at > now() - make_interval(hours => $1) "
        "GROUP BY 1 ORDER BY 1",
        hours,
    )
    now = rows[0]["now"] if rows else await conn.fetchval("SELECT now()")
    return [(r["minute"], int(r["n"])) for r in rows], now
