"""A job's drift as the dashboard shows it: its done chunks' counts, added up once and kept.

A done chunk never changes (its counts are written in the same fenced transaction that marks it
done), so the counts of a job are kept between pages and only chunks done since are read (a
range of at most a thousand chunk numbers at a time) and added, in a thread. And since a chunk
that counts rows also counts them on its job (``rows_scored``, ``rows_failed``, same
transaction), a job whose two numbers did not move has no new chunk: its page reads no chunk.
A count runs as a task of its own: a page waits for it a bounded time, then shows what is known
(the last whole count, or how far the first one got) and the count goes on for the next refresh.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
import numpy as np

from dashboard import queries
from scorebox.profile import SCORE, Drift, bin_labels, drift

log = logging.getLogger(__name__)

BATCH = 1000  # the most chunk numbers one read spans
KEPT = 64  # jobs whose counts are kept
# A chunk's counts, each feature's array left unparsed: numpy parses a feature's arrays of many
# chunks at once, four times faster than making a Python int of every count.
_decode = msgspec.json.Decoder(dict[str, msgspec.Raw] | None).decode
_NOT_COUNTS = bytes(range(256)).translate(None, b"0123456789, ")


def add_up(texts: Iterable[str]) -> dict[str, np.ndarray]:
    """The counts of chunks given as JSON texts (``{"feature": [count, ...], ...}``), added up;
    ValueError says what is wrong with them."""
    arrays: dict[str, list[bytes]] = {}
    try:
        for text in texts:
            for name, raw in (_decode(text) or {}).items():
                arrays.setdefault(name, []).append(bytes(raw))
    except msgspec.DecodeError as exc:
        raise ValueError(f"a chunk's counts are unreadable ({exc})") from None
    total = {}
    for name, found in arrays.items():
        # "[1, 2][3, 4]" -> "1, 2,3, 4": any bracket left, or anything but digits, commas and
        # spaces, means something other than flat arrays of whole numbers.
        inner = b"".join(found).replace(b"][", b",")[1:-1]
        bins = found[0].count(b",") + 1
        if (
            inner.translate(None, _NOT_COUNTS) != inner
            or inner.count(b",") != len(found) * bins - 1
            or any(a.count(b",") != bins - 1 for a in found)
        ):
            raise ValueError(f"the chunks' counts of {name!r} are not arrays of whole numbers")
        values = np.fromstring(inner.decode(), dtype=np.int64, sep=",")
        if len(values) != len(found) * bins:  # an empty place: "1,,2"
            raise ValueError(f"the chunks' counts of {name!r} are not arrays of whole numbers")
        total[name] = values.reshape(len(found), bins).sum(axis=0)
    return total


def _spans(numbers: np.ndarray, span: int) -> Iterator[np.ndarray]:
    """Sorted ``numbers`` in runs each within ``span`` consecutive numbers."""
    start = 0
    while start < len(numbers):
        end = int(np.searchsorted(numbers, numbers[start] + span))
        yield numbers[start:end]
        start = end


@dataclass(frozen=True)
class Judged:
    """A feature's (or the score's) drift as the pages show it: how many rows its PSI needs to
    be judged, and whether it has them (both the Drift's own, judged at the job's threshold)."""

    drift: Drift

    @property
    def needed(self) -> int:
        return self.drift.needed

    @property
    def judged(self) -> bool:
        return self.drift.judged


@dataclass(frozen=True)
class JobDrift:
    """What the pages show of a job's drift."""

    items: list[Judged]  # features by PSI, largest first, then the score
    warn: float

    @property
    def rows(self) -> int:
        return max((j.drift.rows for j in self.items), default=0)

    @property
    def needed(self) -> int:
        """Rows for every item to be judged."""
        return max((j.needed for j in self.items), default=0)

    @property
    def flagged(self) -> list[Judged]:
        """Items judged and past the warning threshold, largest PSI first."""
        found = [j for j in self.items if j.drift.drifted(self.warn)]
        return sorted(found, key=lambda j: -j.drift.psi)

    @property
    def top(self) -> Judged | None:
        """The item whose bins are worth a look: the largest PSI, judged ones first."""
        return max(self.items, key=lambda j: (j.judged, j.drift.psi), default=None)


def judge(profile: Mapping[str, Any], counts: Mapping[str, np.ndarray], warn: float) -> JobDrift:
    """A job's drift from training's ``profile`` and its counts (call it off the event loop:
    the rows each layout needs are found by simulation the first time); ValueError when the
    profile cannot be read (the job's row is the database's, not signed)."""
    try:
        layouts = {**profile["features"], SCORE: profile.get("score")}
        items = []
        for d in drift(profile, counts, warn):
            bin_labels(layouts[d.name])  # what the page will draw of it
            items.append(Judged(d))
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ValueError(f"the job's training profile is unreadable ({exc!r})") from None
    return JobDrift(items, warn)


@dataclass(frozen=True)
class Counted:
    """What is known of a job's counts now."""

    profile: dict[str, Any] | None  # training's profile; None: the job's model has none
    drift: JobDrift | None  # None until a count ended
    counts: dict[str, np.ndarray]  # the job's rows in each bin, by feature
    chunks: int  # done chunks in ``drift``
    counting: tuple[int, int] | None = None  # (added, of) while the first count runs
    error: str | None = None


@dataclass
class _Job:
    created: datetime
    profile: dict[str, Any] | None
    seen: np.ndarray  # chunk numbers already added
    working: dict[str, np.ndarray] = field(default_factory=dict)
    shown: Counted | None = None
    version: int | None = None  # the job's rows done when the shown count started
    task: asyncio.Task[None] | None = None
    progress: tuple[int, int] | None = None
    error: str | None = None


class JobCounts:
    """Counts of the jobs pages looked at lately (KEPT of them), read from ``pool``."""

    def __init__(self, pool: Any, warn: float, batch: int = BATCH, kept: int = KEPT) -> None:
        self.pool, self.warn, self.batch, self.kept = pool, warn, batch, kept
        self._jobs: OrderedDict[int, _Job] = OrderedDict()
        # Counts take turns (a batch at a time) at the pool and the CPU: pages keep the rest.
        self._reads = asyncio.Semaphore(2)
        self._threads = asyncio.Semaphore(2)

    async def get(self, jobs: Sequence[Mapping[str, Any]], wait: float) -> list[Counted]:
        """What is known of each job's counts after waiting at most ``wait`` seconds for counts
        of chunks done since the last look."""
        entries = [await self._entry(job) for job in jobs]
        running = [e.task for e in entries if e.task is not None]
        if running and wait > 0:
            await asyncio.wait(running, timeout=wait)  # the counts go on after a timeout
        return [self._known(e) for e in entries]

    async def _entry(self, job: Mapping[str, Any]) -> _Job:
        def kept() -> _Job | None:
            entry = self._jobs.get(job["id"])
            return entry if entry is not None and entry.created == job["created_at"] else None

        entry = kept()  # an id may come again: its creation tells
        if entry is None:
            async with self._reads, self.pool.acquire() as conn:
                text = await queries.job_reference(conn, job["id"])
            entry = kept()  # another page may have made it meanwhile
            if entry is None:
                reference = json.loads(text) if text else None
                profile = reference.get("profile") if isinstance(reference, dict) else None
                seen = np.zeros(job["chunks_total"], bool)
                entry = self._jobs[job["id"]] = _Job(job["created_at"], profile or None, seen)
        self._jobs.move_to_end(job["id"])
        while len(self._jobs) > self.kept:
            self._jobs.popitem(last=False)
        version = job["rows_scored"] + job["rows_failed"]
        if entry.profile is not None and entry.task is None and entry.version != version:
            entry.task = asyncio.create_task(self._count(job["id"], entry, version))
        return entry

    def _known(self, entry: _Job) -> Counted:
        if entry.profile is None:
            return Counted(None, None, {}, 0)
        shown = entry.shown or Counted(entry.profile, None, {}, 0)
        first = entry.shown is None and entry.task is not None
        counting = (entry.progress or (0, 0)) if first else None
        return Counted(
            shown.profile, shown.drift, shown.counts, shown.chunks, counting, entry.error
        )

    async def _count(self, job_id: int, entry: _Job, version: int) -> None:
        """Add the chunks done since the last count, then show the new whole."""
        try:
            async with self._reads, self.pool.acquire() as conn:
                done = np.sort(np.asarray(await queries.done_chunks(conn, job_id), dtype=np.int64))
            if len(done) and done[-1] >= len(entry.seen):
                entry.seen = np.concatenate([entry.seen, np.zeros(done[-1] + 1, bool)])
            new = done[~entry.seen[done]]
            entry.progress, entry.error = (len(done) - len(new), len(done)), None
            for part in _spans(new, self.batch):
                first, last = int(part[0]), int(part[-1])
                async with self._reads, self.pool.acquire() as conn:
                    read = await queries.chunk_counts(conn, job_id, first, last)
                wanted = set(part.tolist())  # the range may hold chunks added before
                texts = [text for n, text in read if n in wanted]
                async with self._threads:
                    counts = await asyncio.to_thread(add_up, texts)
                for name, values in counts.items():
                    known = entry.working.get(name)
                    entry.working[name] = values if known is None else known + values
                entry.seen[part] = True
                entry.progress = (entry.progress[0] + len(part), len(done))
            assert entry.profile is not None
            # Sums are replaced, never changed in place: a copy of the dict is a snapshot.
            counted = dict(entry.working)
            async with self._threads:
                found = await asyncio.to_thread(judge, entry.profile, counted, self.warn)
            entry.shown = Counted(entry.profile, found, counted, int(entry.seen.sum()))
            entry.version = version
        except (ValueError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Said on the page; the next page tries again from the chunks added so far.
            entry.error = f"drift cannot be shown now: {exc}"
            log.warning("job %s: %s", job_id, entry.error)
        finally:
            entry.task = None
