"""Recovering chunks whose worker died or stalled, or whose message the broker lost.

Every worker process runs :func:`sweep` on a timer in a thread of its own (not in a task slot,
so a backlog never delays recovery). An advisory lock lets one worker of a deployment sweep at a
time; locked chunk rows are skipped, never waited on; and a chunk is sent again at most once per
lease: a running chunk whose lease expired goes back to pending, and a pending chunk is sent
again only when nothing claimed it for a whole lease.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Engine, func, literal, or_, select, text, tuple_, update

from scorebox.db import Tables, utcnow
from worker.jobs import ACTIVE

log = logging.getLogger(__name__)


def _lock_key(queue: str) -> int:
    return zlib.crc32(f"scorebox-sweep:{queue}".encode()) - 2**31


def sweep(
    engine: Engine,
    tables: Tables,
    queue: str,
    lease: float,
    enqueue: Callable[[int, int, str], None],
) -> int:
    """Send again the chunks of this queue's active jobs that need it; return how many."""
    chunks, jobs = tables.chunks, tables.jobs
    with engine.begin() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            got = conn.execute(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _lock_key(queue)}
            ).scalar()
            if not got:
                return 0
        now = func.clock_timestamp() if postgres else literal(utcnow())
        stale = (
            now - func.make_interval(0, 0, 0, 0, 0, 0, lease)
            if postgres
            else literal(utcnow() - timedelta(seconds=lease))
        )
        due = (
            select(chunks.c.job_id, chunks.c.chunk_no)
            .where(
                chunks.c.job_id.in_(
                    select(jobs.c.id).where(jobs.c.status.in_(ACTIVE), jobs.c.queue == queue)
                ),
                or_(
                    (chunks.c.status == "running") & (chunks.c.lease_expires_at < now),
                    (chunks.c.status == "pending") & (chunks.c.updated_at < stale),
                ),
            )
            .with_for_update(skip_locked=True)
        )
        resent = conn.execute(
            update(chunks)
            .where(tuple_(chunks.c.job_id, chunks.c.chunk_no).in_(due))
            .values(status="pending", lease_token=None, updated_at=now)
            .returning(chunks.c.job_id, chunks.c.chunk_no)
        ).all()
    for job_id, chunk_no in resent:
        enqueue(job_id, chunk_no, queue)
    if resent:
        log.warning("sweep: queued %d chunk(s) of %s again", len(resent), queue)
    return len(resent)


class Sweeper(threading.Thread):
    """Runs ``sweep_once`` every ``interval`` seconds until stopped; errors are logged, never
    fatal (the database may be away for a while)."""

    def __init__(self, sweep_once: Callable[[], int], interval: float) -> None:
        super().__init__(name="scorebox-sweeper", daemon=True)
        self.sweep_once = sweep_once
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.sweep_once()
            except Exception:
                log.exception("sweep failed; trying again in %s s", self.interval)

    def stop(self) -> None:
        """Stop after the current sweep."""
        self.stopped.set()
