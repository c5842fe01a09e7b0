"""Drift of online traffic: the last rows ``/predict`` scored, kept in a ring buffer, and a PSI
per feature against the model's training profile, published as Prometheus gauges.

A request only copies its encoded rows into the buffer (a few microseconds); every ``every``
seconds the next request recomputes the gauges over the window (milliseconds, on 10,000 rows of
30 features), so the cost per request stays flat whatever the traffic.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
from prometheus_client import Gauge

from scorebox.modelinfo import ModelInfo
from scorebox.profile import count_chunk, drift

feature_psi = Gauge(
    "scorebox_feature_psi",
    "Population stability index of each feature over the last online rows against training",
    ["feature"],
)
window_rows = Gauge("scorebox_drift_window_rows", "Online rows in the drift window")


class OnlineDrift:
    """A rolling window of encoded rows and the PSI gauges computed from it."""

    def __init__(self, info: ModelInfo, window: int = 10_000, every: float = 10.0) -> None:
        self.profile = info.profile
        self.names = info.feature_names
        self.window = window
        self.every = every
        self.rows = np.full((window, len(self.names)), np.nan)
        self.next = 0
        self.filled = 0
        self.updated = time.monotonic()

    def add(self, matrix: np.ndarray) -> None:
        """Keep ``matrix``'s rows (the newest ``window`` of them); now and then, publish."""
        rows = matrix[-self.window :]
        where = (self.next + np.arange(len(rows))) % self.window
        self.rows[where] = rows
        self.next = int((self.next + len(rows)) % self.window)
        self.filled = min(self.window, self.filled + len(rows))
        if time.monotonic() - self.updated >= self.every:
            self.publish()

    def publish(self) -> dict[str, float]:
        """Set the gauges from the window; return them."""
        self.updated = time.monotonic()
        counts = count_chunk(self.profile, self.names, self.rows[: self.filled], Counter(), None)
        merged = {name: np.asarray(values) for name, values in counts.items()}
        found = {d.name: d.psi for d in drift(self.profile, merged)}
        for name, value in found.items():
            feature_psi.labels(feature=name).set(value)
        window_rows.set(self.filled)
        return found
