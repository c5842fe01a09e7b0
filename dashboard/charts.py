"""The dashboard's charts: drawn by matplotlib on the server, sent as inline SVG (no JavaScript)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from scorebox.profile import Drift


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def drift_bars(found: Sequence[Drift], warn: float, limit: int = 20) -> str:
    """PSI of each feature (the largest ``limit``), with the warning threshold."""
    shown = [d for d in found if d.name != "__score__"][:limit]
    figure, axis = plt.subplots(figsize=(8, 0.32 * len(shown) + 1.2))
    names = [d.name for d in shown][::-1]
    values = [d.psi for d in shown][::-1]
    colors = ["#c0392b" if v > warn else "#2e86c1" for v in values]
    axis.barh(names, values, color=colors)
    axis.axvline(warn, color="#555", linestyle="--", linewidth=1, label=f"warn at {warn:g}")
    axis.set_xlabel("population stability index (PSI) against training")
    axis.legend(loc="lower right")
    return _svg(figure)


def shares(labels: Sequence[str], then: Sequence[float], now: Sequence[float], title: str) -> str:
    """One feature's share of rows in each bin: training against the job."""
    figure, axis = plt.subplots(figsize=(8, 3))
    positions = range(len(labels))
    axis.bar([p - 0.2 for p in positions], then, width=0.4, label="training", color="#7f8c8d")
    axis.bar([p + 0.2 for p in positions], now, width=0.4, label="this job", color="#c0392b")
    axis.set_xticks(list(positions), labels, rotation=45, ha="right", fontsize=8)
    axis.set_ylabel("share of rows")
    axis.set_title(title)
    axis.legend()
    return _svg(figure)


def volume(points: Sequence[tuple[Any, int]]) -> str:
    """Logged predictions per minute."""
    figure, axis = plt.subplots(figsize=(8, 2.6))
    if points:
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="#2e86c1")
    axis.set_ylabel("predictions / minute")
    axis.set_ylim(bottom=0)
    figure.autofmt_xdate()
    return _svg(figure)
