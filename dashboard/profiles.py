"""A job's drift as the dashboard shows it: each feature's PSI, judged only from enough rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from scorebox.profile import SCORE, Drift, bin_labels, drift, rows_needed


@dataclass(frozen=True)
class Judged:
    """A feature's (or the score's) drift, and how many rows its PSI needs to be judged."""

    drift: Drift
    needed: int

    @property
    def judged(self) -> bool:
        return self.drift.rows >= self.needed


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
        found = [j for j in self.items if j.judged and j.drift.psi > self.warn]
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
        found = drift(profile, counts)
        items = []
        for d in found:
            bin_labels(layouts[d.name])  # what the page will draw of it
            items.append(Judged(d, rows_needed(layouts[d.name]["shares"], warn)))
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
