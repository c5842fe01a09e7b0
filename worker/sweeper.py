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

from sqlalchemy import Engine

from scorebox import ledger
from scorebox.db import Tables

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
    with engine.begin() as conn:
        resent = ledger.due_again(conn, tables, queue, lease, _lock_key(queue))
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
