"""The dashboard's charts: drawn by matplotlib on the server, sent as inline SVG (no JavaScript).

Every text a chart draws is literal: names and categories come from users' tables, and matplotlib
would otherwise read a ``$...$`` in them as mathematics (and fail on most). Text is written as
SVG text, so a page can be searched and read aloud. Each chart is its own ``Figure`` (no pyplot
state), so charts can be drawn in several threads at once.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import matplotlib
from matplotlib.dates import AutoDateLocator, DateFormatter
from matplotlib.figure import Figure

from scorebox.profile import SCORE, Drift

matplotlib.rcParams["text.parse_math"] = False
matplotlib.rcParams["svg.fonttype"] = "none"

SCORE_LABEL = "(model score)"
_RED, _BLUE, _GREY = "#c0392b", "#2e86c1", "#aab7b8"
_LABEL_CHARS = 28


def label(name: str) -> str:
    """How a feature is named on the page (the model's score has no column name)."""
    return SCORE_LABEL if name == SCORE else name


def _short(text: str) -> str:
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def drift_bars(found: Sequence[Drift], judged: Sequence[bool], warn: float, limit: int = 20) -> str:
    """PSI of each feature (the largest ``limit``) and of the model's score, with the warning
    threshold; a bar is red past it, grey when there are too few rows to judge it."""
    shown = [(d, j) for d, j in zip(found, judged, strict=True) if d.name != SCORE][:limit]
    shown += [(d, j) for d, j in zip(found, judged, strict=True) if d.name == SCORE]
    shown.reverse()  # barh draws upwards: the largest at the top, the score at the bottom
    figure = Figure(figsize=(8, 0.32 * len(shown) + 1.3))
    axis = figure.subplots()
    positions = range(len(shown))
    values = [d.psi for d, _ in shown]
    colors = [(_RED if d.psi > warn else _BLUE) if j else _GREY for d, j in shown]
    axis.barh(positions, values, color=colors)
    axis.set_yticks(list(positions), [_short(label(d.name)) for d, _ in shown])
    axis.axvline(warn, color="#555", linestyle="--", linewidth=1)
    # Named above the plot, where no bar can hide it.
    axis.text(warn, 1.01, f"warn at {warn:g}", transform=axis.get_xaxis_transform(), ha="center")
    axis.set_xlim(0, max([*values, warn]) * 1.15)
    axis.set_xlabel("population stability index (PSI) against training")
    return _svg(figure)


def shares(labels: Sequence[str], then: Sequence[float], now: Sequence[float], title: str) -> str:
    """One feature's share of rows in each bin: training against the job."""
    figure = Figure(figsize=(8, 3.2))
    axis = figure.subplots()
    positions = range(len(labels))
    axis.bar([p - 0.2 for p in positions], then, width=0.4, label="training", color="#7f8c8d")
    if len(now):
        axis.bar([p + 0.2 for p in positions], now, width=0.4, label="this job", color=_RED)
    axis.set_xticks(
        list(positions), [_short(t) for t in labels], rotation=45, ha="right", fontsize=8
    )
    axis.set_ylabel("share of rows")
    axis.set_title(title)
    axis.legend()
    return _svg(figure)


def volume(points: Sequence[tuple[datetime, int]], now: datetime) -> str:
    """Logged predictions a minute, from the first logged minute (at least an hour back) to
    ``now``, in UTC."""
    start = min([now - timedelta(hours=1), *(minute for minute, _ in points)])
    end = max([now, *(minute + timedelta(minutes=1) for minute, _ in points)])
    figure = Figure(figsize=(8, 2.6))
    axis: Any = figure.subplots()
    if points:
        axis.bar(
            [p[0] for p in points],
            [p[1] for p in points],
            width=timedelta(minutes=1),
            align="edge",
            color=_BLUE,
        )
    axis.set_xlim(start, end)
    axis.xaxis.set_major_locator(AutoDateLocator(minticks=4, maxticks=10))
    axis.xaxis.set_major_formatter(DateFormatter("%H:%M"))
    axis.set_xlabel(f"UTC, {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}")
    axis.set_ylabel("predictions / minute")
    axis.set_ylim(bottom=0)
    return _svg(figure)
