"""The prediction log's retention: rows logged longer ago than SCOREBOX_LOG_RETENTION_DAYS are
deleted in small batches, each its own short statement, so pruning never holds the table.

A DELETE takes only row locks and the table's ROW EXCLUSIVE lock, which the service's COPY and
the dashboard's reads share; each batch is one statement with a lock timeout, so a pruner never
waits in line behind a schema change (and never makes others wait behind it). Batches walk the
primary key (ids grow with time, give or take the seconds a row waits in a service's buffer),
so no batch reads again what an earlier one deleted: a batch takes the next ``batch`` ids and
deletes those logged before the cut-off; a batch with none to delete ends the pass. The cut-off is
the database's clock, never a process's. One process at a time prunes a table (an advisory lock
keyed by the table), so replicas of the service never delete the same rows.

The service runs this in the background while it logs (service/predlog.py); ``scorebox log
prune`` runs it once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from scorebox.db import PREDICTION_LOG_TABLE

# The advisory lock's first key (the second is the table's OID, so each schema's log is its own).
_LOCK_CLASS = 0x5C0B_1065

_BATCH = f"""
WITH chunk AS (
    SELECT id, logged_at FROM {PREDICTION_LOG_TABLE} WHERE id > $1 ORDER BY id LIMIT $2
), gone AS (
    DELETE FROM {PREDICTION_LOG_TABLE} AS log USING chunk
    WHERE log.id = chunk.id AND chunk.logged_at < now() - make_interval(secs => $3)
    RETURNING log.id
)
SELECT (SELECT max(id) FROM chunk) AS last, (SELECT count(*) FROM gone) AS deleted
"""
_LOCK = f"SELECT pg_try_advisory_lock({_LOCK_CLASS}, '{PREDICTION_LOG_TABLE}'::regclass::oid::int)"
_UNLOCK = f"SELECT pg_advisory_unlock({_LOCK_CLASS}, '{PREDICTION_LOG_TABLE}'::regclass::oid::int)"


@dataclass(frozen=True)
class Pruned:
    """What a pass did: rows deleted, and whether another process held the table's pruning."""

    deleted: int
    busy: bool = False


async def prune(
    connection: Any, older_than_seconds: float, batch: int = 5_000, pause: float = 0.0
) -> Pruned:
    """Delete the log rows logged more than ``older_than_seconds`` ago, ``batch`` ids at a time,
    on ``connection`` (asyncpg, outside a transaction); ``pause`` seconds between batches."""
    if not await connection.fetchval(_LOCK):
        return Pruned(0, busy=True)
    try:
        await connection.execute("SET lock_timeout = '2s'")
        await connection.execute("SET statement_timeout = '60s'")
        last, deleted = 0, 0
        while True:
            row = await connection.fetchrow(_BATCH, last, batch, older_than_seconds)
            if row["last"] is None or row["deleted"] == 0:
                return Pruned(deleted)
            last, deleted = row["last"], deleted + row["deleted"]
            if pause:
                await asyncio.sleep(pause)
    finally:
        await connection.execute("RESET lock_timeout; RESET statement_timeout")
        await connection.fetchval(_UNLOCK)
