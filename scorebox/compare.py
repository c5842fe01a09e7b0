"""Champion and challenger on real rows: two versions' predictions over the rows of one table that
both scored, compared. Agreement, how far the score distribution moved, and, where the table
holds the true labels, each version's metrics and the difference with a paired bootstrap
confidence interval. Written as Markdown with a PNG beside it."""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, Text, and_, cast, select

from scorebox.db import Tables, reflect
from scorebox.encoding import label_text
from scorebox.errors import ScoreboxError
from scorebox.modelinfo import ModelInfo
from scorebox.names import require_column, resolve_table
from scorebox.profile import probability_edges, quantile_edges, score_kind
from scorebox.profile import psi as profile_psi

BOOTSTRAP = 400
CONFIDENCE = 0.95
# Bootstrap resamples draw from at most this many rows (the interval barely narrows past it).
BOOTSTRAP_ROWS = 100_000


@dataclass
class Comparison:
    """What comparing two versions on one table found."""

    a: str
    b: str
    table: str
    task: str
    rows: int
    agreement: float
    score_name: str
    psi: float
    ks: float
    mean_a: float
    mean_b: float
    labels: str | None = None
    labelled_rows: int = 0
    excluded: int = 0  # rows left out because a or b trained on them
    training_rows_known: bool = False  # whether a and b said which rows they trained on
    only_training_rows: bool = False  # every row both scored was a training row: kept, flagged
    # metric -> (value for a, value for b, b - a, ci low, ci high)
    metrics: dict[str, tuple[float, float, float, float, float]] = field(default_factory=dict)
    report: Path | None = None
    plot: Path | None = None
    scores_a: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    scores_b: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)


def _keys(info: ModelInfo) -> list[str]:
    """The classes as the predictions table writes them (``true``, ``1``, ``Adelie``)."""
    return [label_text(c) for c in info.classes or []]


def _scores(frame: pd.DataFrame, suffix: str, info: ModelInfo) -> np.ndarray:
    """The number each row is judged by (scorebox/profile.py's score_kind)."""
    kind = score_kind(info.task, info.classes or [])
    if kind == "value":
        return frame[f"predicted_value{suffix}"].to_numpy(dtype=np.float64)
    if kind == "second":
        return _probability_matrix(frame, suffix, _keys(info))[:, 1]
    return frame[f"probability{suffix}"].to_numpy(dtype=np.float64)


def _probability_matrix(frame: pd.DataFrame, suffix: str, keys: list[str]) -> np.ndarray:
    """Every class's probability, a column a class in the model's order."""
    return np.array(
        [
            [p.get(k, np.nan) for k in keys]
            for p in map(_probabilities, frame[f"probabilities{suffix}"])
        ],
        dtype=np.float64,
    ).reshape(len(frame), len(keys))


def _probabilities(value: Any) -> dict[str, float]:
    return json.loads(value) if isinstance(value, str) else dict(value or {})


def psi(expected: np.ndarray, actual: np.ndarray, probability: bool = False) -> float:
    """Population stability index of ``actual`` against ``expected`` (scorebox/profile.py's):
    on ten equal bins of [0, 1] for probabilities, else on ``expected``'s quantile bins."""
    expected, actual = expected[np.isfinite(expected)], actual[np.isfinite(actual)]
    if not len(expected) or not len(actual):
        return float("nan")
    edges = np.asarray(probability_edges() if probability else quantile_edges(expected))
    e = np.bincount(np.searchsorted(edges, expected, side="right"), minlength=len(edges) + 1)
    a = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=len(edges) + 1)
    return profile_psi((e / e.sum()).tolist(), a)


def _metric_functions(info: ModelInfo) -> dict[str, Any]:
    """The metrics training reports for the task, each a function of (true labels, predicted
    labels, scores, probability matrix)."""
    from sklearn.metrics import (
        accuracy_score,
        log_loss,
        mean_absolute_error,
        r2_score,
        roc_auc_score,
        root_mean_squared_error,
    )

    if info.task == "regression":
        return {
            "rmse": lambda y, label, score, proba: root_mean_squared_error(y, score),
            "mae": lambda y, label, score, proba: mean_absolute_error(y, score),
            "r2": lambda y, label, score, proba: r2_score(y, score),
        }
    keys = _keys(info)
    if len(keys) == 2:
        roc_auc = lambda y, label, score, proba: roc_auc_score(y == keys[1], score)  # noqa: E731
    else:
        roc_auc = lambda y, label, score, proba: roc_auc_score(  # noqa: E731
            y, proba, multi_class="ovr", labels=keys
        )
    return {
        "roc_auc": roc_auc,
        "accuracy": lambda y, label, score, proba: accuracy_score(y, label),
        "log_loss": lambda y, label, score, proba: log_loss(y, proba, labels=keys),
    }


def _class_text(value: Any, known: set[str]) -> str:
    """A label as the predictions write its class: ``1.0`` is class ``1``, ``True`` is class
    ``1`` when the model knows ``1`` and not ``true``."""
    text = label_text(value)
    if text in known:
        return text
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float | Decimal) and value == int(value):
        return label_text(int(value))
    return text


def _labelled(
    engine: Engine, table: Any, id_column: str, labels: str, info: ModelInfo
) -> pd.DataFrame:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                cast(table.c[id_column], Text).label("row_id"), table.c[labels].label("y")
            ).where(table.c[labels].is_not(None))
        ).all()
    frame = pd.DataFrame(rows, columns=["row_id", "y"])
    if info.task == "regression":
        frame["y"] = pd.to_numeric(frame["y"], errors="coerce")
        return frame[frame["y"].notna()]
    known = {label_text(c) for c in info.classes}
    texts = [_class_text(v, known) for v in frame["y"]]
    if texts and not known.intersection(texts):
        raise ScoreboxError(
            f"the labels in {labels!r} (such as {texts[0]!r}) match none of the model's classes "
            f"({', '.join(sorted(known))}); is --labels the right column?"
        )
    frame["y"] = texts
    return frame


def compare(
    engine: Engine,
    predictions_table: str,
    a: str,
    b: str,
    info_a: ModelInfo,
    info_b: ModelInfo,
    table: str,
    id_column: str,
    labels: str | None = None,
    random_state: int = 0,
    trained: set[str] | None = None,
) -> Comparison:
    """Compare versions ``a`` and ``b`` on the rows of ``table`` both have predictions for,
    leaving out the rows either trained on (``trained``, ids as text) unless no other row is
    left (then they are kept and the result says so)."""
    if info_a.task != info_b.task:
        raise ScoreboxError(f"{a} is {info_a.task} and {b} is {info_b.task}: nothing to compare")
    predictions = Tables.build(predictions_table).predictions
    with engine.connect() as conn:
        name = resolve_table(conn, table, "--table")
        source = reflect(conn, name)
        columns = [str(c.name) for c in source.columns]
        if labels is not None:
            require_column(labels, columns, name, "the label column (--labels)")
        left, right = predictions.alias("a"), predictions.alias("b")
        picked = ["predicted_label", "predicted_value", "probability", "probabilities"]
        query = (
            select(
                left.c.row_id,
                *(left.c[c].label(f"{c}_a") for c in picked),
                *(right.c[c].label(f"{c}_b") for c in picked),
            )
            .select_from(
                left.join(
                    right,
                    and_(
                        left.c.row_id == right.c.row_id,
                        left.c.source_table == right.c.source_table,
                        right.c.model_tag == b,
                    ),
                )
            )
            .where(left.c.source_table == str(name), left.c.model_tag == a)
        )
        frame = pd.DataFrame(conn.execute(query).mappings().all())
    if frame.empty:
        raise ScoreboxError(
            f"no row of {name} has predictions from both {a} and {b}; score it with each "
            f"(`scorebox score --table {table} --model ...`)"
        )
    excluded, only_training_rows = 0, False
    if trained:
        learnt = frame["row_id"].isin(trained).to_numpy()
        if learnt.all():
            only_training_rows = True
        else:
            excluded = int(learnt.sum())
            frame = frame[~learnt].reset_index(drop=True)
    score_a, score_b = _scores(frame, "_a", info_a), _scores(frame, "_b", info_b)
    from scipy.stats import ks_2samp

    if info_a.task == "regression":
        spread = float(np.nanstd(score_a)) or 1.0
        agreement = float(np.mean(np.abs(score_a - score_b) <= 0.01 * spread))
        score_name = "predicted value"
    else:
        agreement = float(np.mean(frame["predicted_label_a"] == frame["predicted_label_b"]))
        score_name = (
            f"probability of {label_text(info_a.classes[1])}"
            if len(info_a.classes or []) == 2
            else "probability of the predicted class"
        )
    result = Comparison(
        a=a,
        b=b,
        table=str(name),
        task=info_a.task,
        rows=len(frame),
        agreement=agreement,
        score_name=score_name,
        psi=psi(score_a, score_b, probability=info_a.task == "classification"),
        ks=float(ks_2samp(score_a, score_b).statistic),
        mean_a=float(np.nanmean(score_a)),
        mean_b=float(np.nanmean(score_b)),
        labels=labels,
        excluded=excluded,
        only_training_rows=only_training_rows,
        training_rows_known=trained is not None,
        scores_a=score_a,
        scores_b=score_b,
    )
    if labels is not None:
        truth = _labelled(engine, source, id_column, labels, info_a)
        frame["score_a"], frame["score_b"] = score_a, score_b
        joined = frame.merge(truth, on="row_id")
        result.labelled_rows = len(joined)
        if joined.empty:
            raise ScoreboxError(f"no compared row of {name} has a label in {labels!r}")
        result.metrics = _metrics(joined, info_a, random_state)
    return result


def _metrics(
    joined: pd.DataFrame, info: ModelInfo, random_state: int
) -> dict[str, tuple[float, float, float, float, float]]:
    """Each metric for a and b on the labelled rows, b - a, and its bootstrap interval."""
    y = joined["y"].to_numpy()
    keys = _keys(info)
    outputs = [
        (
            joined[f"predicted_label_{side}"].to_numpy(),
            joined[f"score_{side}"].to_numpy(dtype=np.float64),
            _probability_matrix(joined, f"_{side}", keys) if keys else np.empty((len(y), 0)),
        )
        for side in ("a", "b")
    ]
    rng = np.random.default_rng(random_state)
    found = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a resample of a single class warns; it is skipped
        for metric, function in _metric_functions(info).items():
            measured = _metric(function, y, outputs[0], outputs[1], rng)
            if measured is not None:
                found[metric] = measured
    return found


Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]  # predicted labels, scores, probabilities


def _metric(
    function: Any, y: np.ndarray, a: Outputs, b: Outputs, rng: np.random.Generator
) -> tuple[float, float, float, float, float] | None:
    """One metric for a and b, b - a, and its bootstrap interval (None when undefined)."""
    try:
        value_a = float(function(y, *a))
        value_b = float(function(y, *b))
    except ValueError:  # e.g. ROC AUC on rows of a single class
        return None
    if not (math.isfinite(value_a) and math.isfinite(value_b)):
        return None
    size = min(len(y), BOOTSTRAP_ROWS)
    differences = []
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(y), size)
        try:
            differences.append(
                function(y[pick], *(o[pick] for o in b)) - function(y[pick], *(o[pick] for o in a))
            )
        except ValueError:
            continue
    finite = [d for d in differences if math.isfinite(d)]
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(finite, [tail, 1 - tail]) if finite else (math.nan, math.nan)
    return value_a, value_b, value_b - value_a, float(low), float(high)


def rows_left_out(result: Comparison) -> str:
    """Which rows were left out, in words."""
    if result.only_training_rows:
        return (
            "ALL OF THEM TRAINING ROWS of one version or both: its metrics flatter what it "
            "learnt; score rows neither trained on to compare fairly"
        )
    if result.excluded:
        return f"after leaving out {result.excluded:,} rows that one version or both trained on"
    if not result.training_rows_known:
        return "which rows the versions trained on is not known"
    return "none of them a training row of either version"


def write_report(result: Comparison, folder: Path) -> Path:
    """``compare-A-vs-B.md`` and its PNG in ``folder``; return the Markdown's path."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".scorebox-write-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ScoreboxError(
            f"cannot write the report into {str(folder)[:200]!r} (--out): "
            f"{exc.strerror or exc}; give a folder you can write"
        ) from None
    stem = f"compare-{result.a}-vs-{result.b}".replace(":", "_").replace("/", "_")
    lines = [
        f"# {result.b} against {result.a}",
        "",
        f"Table `{result.table}`: {result.rows:,} rows scored by both, {rows_left_out(result)}.",
        "",
        f"- agreement: **{result.agreement:.2%}**"
        + (
            " of rows get the same class"
            if result.task == "classification"
            else " of rows within 1% of the predictions' spread"
        ),
        f"- {result.score_name}: mean {result.mean_a:.4f} → {result.mean_b:.4f}; "
        f"PSI {result.psi:.4f}, Kolmogorov-Smirnov {result.ks:.4f}",
    ]
    if result.metrics:
        lines += [
            "",
            f"On {result.labelled_rows:,} rows labelled by `{result.labels}` "
            f"({CONFIDENCE:.0%} paired bootstrap interval of the difference, {BOOTSTRAP} "
            "resamples):",
            "",
            f"| metric | {result.a} | {result.b} | difference | interval |",
            "|---|---:|---:|---:|---|",
        ]
        for metric, (va, vb, diff, low, high) in result.metrics.items():
            lines.append(
                f"| {metric} | {va:.4f} | {vb:.4f} | {diff:+.4f} | [{low:+.4f}, {high:+.4f}] |"
            )
    plot = folder / f"{stem}.png"
    result.plot = plot
    lines += ["", f"![score distributions]({plot.name})", ""]
    report = folder / f"{stem}.md"
    report.write_text("\n".join(lines))
    result.report = report
    _plot_scores(result, plot)
    return report


def _plot_scores(result: Comparison, plot: Path) -> None:
    """The two score distributions, overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    score_a, score_b = result.scores_a, result.scores_b
    finite_a, finite_b = score_a[np.isfinite(score_a)], score_b[np.isfinite(score_b)]
    edges = np.histogram_bin_edges(np.concatenate([finite_a, finite_b]), bins=40).tolist()
    axis.hist(finite_a, bins=edges, alpha=0.5, label=result.a)
    axis.hist(finite_b, bins=edges, alpha=0.5, label=result.b)
    axis.set_xlabel(result.score_name)
    axis.set_ylabel("rows")
    axis.set_title(f"agreement {result.agreement:.2%}, PSI {result.psi:.3f}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(plot, dpi=100)
    plt.close(figure)
