"""Data profiles and drift: how a feature's values spread, at training and in each batch job.

A profile counts, per feature, the rows in a few bins of the encoded value (what the model sees:
numbers, dates as days, booleans as 0/1, categories as codes): a bin for missing values, then
quantile bins of the training values (numbers, dates, booleans) or the most frequent categories
and "other", then a bin for categories never seen in training. Training stores the bin edges
and its shares with the model; a batch job counts the rows each chunk scored into the same bins
(no second pass over the table) and the counts of its chunks add up to the job's profile. Drift
is the population stability index (PSI) of the job's shares against training's, per feature and
for the model's own score. A PSI is judged only from enough rows (``rows_needed``): a few rows
drawn from training's own distribution already differ from it by a large PSI.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from scorebox.features import Feature

QUANTILE_BINS = 10
TOP_CATEGORIES = 20
# Shares below this count as this much, so an empty bin gives a finite PSI.
FLOOR = 1e-4
SCORE = "__score__"
# A PSI is judged from a sample only when a sample of that size drawn from training's own
# distribution would pass the warning threshold at most this often.
FALSE_ALARMS = 0.05
_TRIALS = 4000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def probability_edges(bins: int = QUANTILE_BINS) -> list[float]:
    """Equal bins of [0, 1] for probabilities: their quantiles pile up near 0 and 1."""
    return [round(float(e), 6) for e in np.linspace(0, 1, bins + 1)[1:-1]]


def quantile_edges(values: np.ndarray, bins: int = QUANTILE_BINS) -> list[float]:
    """The inner edges of ``bins`` quantile bins of the finite ``values`` (repeats merged)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return []
    inner = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
    return [float(v) for v in np.unique(inner)]


def _feature_layout(feature: Feature, values: np.ndarray) -> dict[str, Any]:
    """How a feature's values are binned, learnt from the training values."""
    if feature.kind == "category":
        codes = values[np.isfinite(values)].astype(np.int64)
        counts = np.bincount(codes, minlength=len(feature.categories))
        order = np.argsort(-counts, kind="stable")[:TOP_CATEGORIES]
        top = [int(c) for c in order if counts[c] > 0]
        return {"kind": "category", "top": top, "labels": [feature.categories[c] for c in top]}
    if feature.kind == "bool":
        return {"kind": "bool", "edges": [0.5]}
    return {"kind": feature.kind, "edges": quantile_edges(values)}


def _bins(layout: Mapping[str, Any]) -> int:
    """Bins of a layout: missing, the value bins, never seen."""
    if layout["kind"] == "category":
        return 1 + len(layout["top"]) + 1 + 1
    return 1 + len(layout["edges"]) + 1 + 1


def _count(layout: Mapping[str, Any], values: np.ndarray, unseen: int = 0) -> np.ndarray:
    """Rows of ``values`` (one encoded column) in each bin of ``layout``; ``unseen`` of the
    missing values were categories never seen in training."""
    counts = np.zeros(_bins(layout), dtype=np.int64)
    present = np.isfinite(values)
    counts[0] = int((~present).sum()) - unseen
    counts[-1] = unseen
    kept = values[present]
    if layout["kind"] == "category":
        position = np.full(max(int(kept.max()) + 1 if len(kept) else 0, 1), len(layout["top"]))
        for rank, code in enumerate(layout["top"]):
            if code < len(position):
                position[code] = rank
        index = 1 + position[kept.astype(np.int64)]
    else:
        index = 1 + np.searchsorted(np.asarray(layout["edges"], dtype=np.float64), kept, "right")
    counts += np.bincount(index, minlength=len(counts))[: len(counts)]
    return counts


def score_kind(task: str, classes: Sequence[Any]) -> str:
    """Which number a row is judged by (for drift, compare and their charts): ``value``, the
    predicted value (regression); ``second``, the second class's probability (two classes);
    ``top``, the predicted class's probability (more classes). The one rule every caller
    follows, whatever form its predictions have."""
    if task == "regression":
        return "value"
    return "second" if len(classes) == 2 else "top"


def score_of(
    task: str, classes: Sequence[Any], probabilities: np.ndarray | None, values: Any
) -> np.ndarray:
    """The number each row is judged by (:func:`score_kind`), from a probability matrix (a
    column a class) or predicted values."""
    kind = score_kind(task, classes)
    if kind == "value" or probabilities is None:
        return np.asarray(values, dtype=np.float64)
    if kind == "second":
        return np.asarray(probabilities[:, 1], dtype=np.float64)
    return np.asarray(probabilities.max(axis=1), dtype=np.float64)


def reference(
    features: Sequence[Feature], matrix: np.ndarray, scores: np.ndarray, probability: bool = False
) -> dict[str, Any]:
    """Training's profile: each feature's layout and shares, and the holdout score's."""
    profile: dict[str, Any] = {"rows": len(matrix), "features": {}}
    for j, feature in enumerate(features):
        layout = _feature_layout(feature, matrix[:, j])
        counts = _count(layout, matrix[:, j])
        profile["features"][feature.name] = layout | {"shares": _shares(counts)}
    edges = probability_edges() if probability else quantile_edges(scores)
    score_layout = {"kind": "number", "edges": edges}
    profile["score"] = score_layout | {"shares": _shares(_count(score_layout, scores))}
    return profile


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [float(c) / total if total else 0.0 for c in counts]


def count_chunk(
    profile: Mapping[str, Any],
    names: Sequence[str],
    matrix: np.ndarray,
    unseen: Counter[str],
    scores: np.ndarray | None,
) -> dict[str, list[int]]:
    """One chunk's counts in training's bins (``matrix``: its encoded rows, columns ``names``)."""
    counts: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        layout = profile["features"].get(name)
        if layout is not None:
            counts[name] = _count(layout, matrix[:, j], unseen.get(name, 0)).tolist()
    if scores is not None and "score" in profile:
        counts[SCORE] = _count(profile["score"], scores).tolist()
    return counts


def merge(chunks: Iterable[Mapping[str, Sequence[int]] | None]) -> dict[str, np.ndarray]:
    """The job's counts: its chunks' added up."""
    total: dict[str, np.ndarray] = {}
    for counts in chunks:
        for name, values in (counts or {}).items():
            array = np.asarray(values, dtype=np.int64)
            total[name] = total[name] + array if name in total else array
    return total


def _psis(expected: Sequence[float], counts: np.ndarray) -> np.ndarray:
    """PSI of each row of ``counts`` (one sample's counts a row) against the ``expected`` shares."""
    totals = counts.sum(axis=-1, keepdims=True)
    observed = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    e = np.maximum(np.asarray(expected, dtype=np.float64), FLOOR)
    o = np.maximum(observed, FLOOR)
    return np.sum((o - e) * np.log(o / e), axis=-1)


def psi(expected: Sequence[float], counts: np.ndarray) -> float:
    """Population stability index of ``counts`` against the ``expected`` shares."""
    return float(_psis(expected, np.asarray(counts)))


def rows_needed(shares: Sequence[float], warn: float) -> int:
    """The fewest rows from which a PSI against training's ``shares`` is judged at ``warn``
    (to within 5%, rounded up).

    With fewer, samples drawn from training's own distribution (so, no drift at all) would pass
    ``warn`` more often than FALSE_ALARMS (one time in twenty): a few rows leave most bins empty,
    and an empty bin alone adds its share times log(share / 1e-4). Found by drawing 4,000 samples
    a size with a fixed seed, starting from the chi-square approximation of PSI (n PSI ~ chi2
    with a degree of freedom less than the bins), which alone falls short by 30-40% when bins
    are uneven. Training's shares are taken as exact, to the 1e-4 PSI floors them at."""
    return _rows_needed(tuple(round(float(s), 4) for s in shares), float(warn))


@functools.lru_cache(maxsize=4096)
def _rows_needed(shares: tuple[float, ...], warn: float) -> int:
    expected = np.asarray(shares)
    bins = int(np.count_nonzero(expected))
    if bins < 2:
        return 1

    def judged(rows: int) -> bool:
        random = np.random.default_rng(0)  # the same draws for every size: a smooth search
        drawn = random.multinomial(rows, expected / expected.sum(), size=_TRIALS)
        return float(np.mean(_psis(shares, drawn) > warn)) <= FALSE_ALARMS

    # The chi-square quantile (Wilson and Hilferty's approximation) as the first guess.
    df = bins - 1
    quantile = df * (1 - 2 / (9 * df) + 1.645 * math.sqrt(2 / (9 * df))) ** 3
    low = high = max(1, math.ceil(quantile / warn))
    while not judged(high):
        low, high = high, high * 2
        if high > 2**30:
            return high
    while low == high or judged(low):
        low //= 2
        if low == 0:
            break
    while high - low > max(1, high // 20):
        middle = (low + high) // 2
        low, high = (low, middle) if judged(middle) else (middle, high)
    return high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if judged(middle) else (middle, high)
    return high


@dataclass(frozen=True)
class Drift:
    """One feature's (or the score's) drift in a job."""

    name: str
    kind: str
    psi: float
    rows: int
    missing_then: float
    missing_now: float
    unseen_now: float  # share of rows with a category never seen in training
    needed: int = 1  # the fewest rows from which its PSI is judged (rows_needed), when asked

    @property
    def judged(self) -> bool:
        """Whether enough rows were counted to judge its PSI."""
        return self.rows >= self.needed

    def drifted(self, warn: float) -> bool:
        """Past ``warn``, from enough rows to say so."""
        return self.judged and self.psi > warn


def drift(
    profile: Mapping[str, Any], merged: Mapping[str, np.ndarray], warn: float | None = None
) -> list[Drift]:
    """Every profiled feature's drift (then the score's), largest PSI first; with ``warn``, each
    says how many rows judge it at that threshold (found by simulation once per layout)."""
    found = []
    items = [*profile["features"].items(), (SCORE, profile.get("score"))]
    for name, layout in items:
        if layout is None or name not in merged:
            continue
        counts = merged[name]
        rows = int(counts.sum())
        found.append(
            Drift(
                name=name,
                kind=layout["kind"],
                psi=psi(layout["shares"], counts),
                rows=rows,
                missing_then=float(layout["shares"][0]),
                missing_now=float(counts[0]) / rows if rows else 0.0,
                unseen_now=float(counts[-1]) / rows if rows else 0.0,
                needed=1 if warn is None else rows_needed(layout["shares"], warn),
            )
        )
    features = sorted((d for d in found if d.name != SCORE), key=lambda d: -d.psi)
    return features + [d for d in found if d.name == SCORE]


def bin_labels(layout: Mapping[str, Any]) -> list[str]:
    """Readable names of a layout's bins, in order (dates as dates)."""
    if layout["kind"] == "category":
        return ["missing", *layout["labels"], "other", "never seen"]
    edges = [_edge(layout["kind"], e) for e in layout["edges"]]
    if not edges:
        return ["missing", "all", "never seen"]
    inner = [f"{a} to {b}" for a, b in itertools.pairwise(edges)]
    return ["missing", f"< {edges[0]}", *inner, f"≥ {edges[-1]}", "never seen"]


def _edge(kind: str, value: float) -> str:
    """A bin edge as a person reads it: a day (or a time) for dates, a number without exponent."""
    if kind in ("date", "datetime") and -719_000 < value < 2_900_000:  # years 1 to 9,900
        # A whole day belongs to the bin above an edge that falls inside it.
        days = math.ceil(value) if kind == "date" else value
        moment = _EPOCH + timedelta(days=days)
        if kind == "date" or moment == moment.replace(hour=0, minute=0, second=0, microsecond=0):
            return f"{moment:%Y-%m-%d}"
        return f"{moment:%Y-%m-%d %H:%M}"
    if value == 0 or 1e-3 <= abs(value) < 1e15:
        digits = max(4, math.floor(math.log10(abs(value))) + 1) if value else 4
        return f"{value:,.{digits}g}"
    return f"{value:.4g}"
