"""Watching a model in production, with real PostgreSQL, Redis, `bentoml serve` and `celery
worker`: drift of a batch job against the training profile, computed per chunk and merged."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, text

from scorebox.processes import BIN, working
from scorebox.settings import Settings
from tests.scoring import env_for, wait_for
from worker.client import ServiceClient
from worker.jobs import submit_job

SHIFTED = "mean_radius"


def _psi(train: np.ndarray, now: np.ndarray) -> float:
    """PSI as the README defines it, written here from scratch: deciles of the training values,
    a bin for missing values (none here), shares floored at 1e-4."""
    edges = np.unique(np.quantile(train, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]))
    expected = np.histogram(np.searchsorted(edges, train, "right"), np.arange(len(edges) + 2))[0]
    actual = np.histogram(np.searchsorted(edges, now, "right"), np.arange(len(edges) + 2))[0]
    e = np.maximum(np.r_[0, expected / len(train), 0], 1e-4)
    a = np.maximum(np.r_[0, actual / len(now), 0], 1e-4)
    return float(np.sum((a - e) * np.log(a / e)))


def _drift_lines(scoring: Settings, job_id: int) -> dict[str, str]:
    done = subprocess.run(
        [str(BIN / "scorebox"), "drift", str(job_id)],
        env=env_for(scoring),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()[2:]
    return {line.split()[0]: line for line in lines}


def test_a_shifted_feature_and_only_it_is_flagged_with_the_psi_computed_here(
    scoring: Settings,
    engine: Engine,
    client: ServiceClient,
    enqueue: Callable[[int, int, str], None],
    tmp_path: Path,
) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE shifted AS SELECT * FROM features"))
        conn.execute(text("ALTER TABLE shifted ADD PRIMARY KEY (id)"))
        conn.execute(text(f"UPDATE shifted SET {SHIFTED} = {SHIFTED} * 1.3 + 2"))
        train = np.array(conn.execute(text(f"SELECT {SHIFTED} FROM features")).scalars().all())
        now = np.array(conn.execute(text(f"SELECT {SHIFTED} FROM shifted")).scalars().all())
    with working(env_for(scoring), tmp_path / "worker.log"):
        same = submit_job(engine, scoring, client, enqueue)
        moved = submit_job(engine, scoring, client, enqueue, table="shifted")
        assert wait_for(engine, scoring, same)["status"] == "succeeded"
        assert wait_for(engine, scoring, moved)["status"] == "succeeded"

    # The training table itself: the same rows, so every PSI is zero.
    unchanged = _drift_lines(scoring, same)
    assert len(unchanged) == 31  # 30 features and the score
    assert not [name for name, line in unchanged.items() if line.endswith("drifted")]
    features = {name: line for name, line in unchanged.items() if name != "(score)"}
    assert all(float(line.split()[2]) == 0.0 for line in features.values()), features
    # The score's reference is the holdout's scores; the whole table's stay close to it.
    assert float(unchanged["(score)"].split()[2]) < 0.2

    lines = _drift_lines(scoring, moved)
    flagged = {name for name, line in lines.items() if line.endswith("drifted")} - {"(score)"}
    assert flagged == {SHIFTED}
    expected = _psi(train, now)
    assert expected > 0.2
    assert abs(float(lines[SHIFTED].split()[2]) - expected) < 5e-4, (lines[SHIFTED], expected)
    # Every chunk counted its rows once: the job's profile covers each scored row.
    with engine.connect() as conn:
        chunks = conn.execute(
            text("SELECT count(*) FROM scorebox_chunks WHERE job_id = :j AND profile IS NOT NULL"),
            {"j": moved},
        ).scalar()
    assert chunks == 6
    assert f"job {moved}: drift of 569 scored rows" in subprocess.run(
        [str(BIN / "scorebox"), "drift"], env=env_for(scoring), capture_output=True, text=True
    ).stdout
    shown = subprocess.run(
        [str(BIN / "scorebox"), "jobs", "show", str(moved)],
        env=env_for(scoring),
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert f"drift: {SHIFTED}: PSI {expected:.3f} > 0.2 (SCOREBOX_DRIFT_WARN)" in shown
