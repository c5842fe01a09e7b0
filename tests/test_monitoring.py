"""Watching a model in production, with real PostgreSQL, Redis, `bentoml serve` and `celery
worker`: drift of a batch job against the training profile, computed per chunk and merged, as
the CLI and the dashboard show it (tests/test_dashboard.py tests the dashboard's own cases)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, text

from scorebox.migrate import upgrade
from scorebox.seed import seed
from scorebox.settings import Settings
from scorebox_cli.processes import BIN, serving, working
from tests.conftest import TrainedModel, process_env
from tests.dashboards import Browser, dashboard, table_rows
from tests.scoring import env_for, wait_for
from worker.client import ServiceClient
from worker.jobs import get_job, submit_job

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


@pytest.mark.slow
def test_a_shifted_feature_and_only_it_is_flagged_with_the_psi_computed_here(
    scoring: Settings,
    engine: Engine,
    client: ServiceClient,
    enqueue: Callable[[int, int, str], None],
    tmp_path: Path,
    screenshots: Path,
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
    assert (
        f"job {moved}: drift of 569 scored rows"
        in subprocess.run(
            [str(BIN / "scorebox"), "drift"], env=env_for(scoring), capture_output=True, text=True
        ).stdout
    )
    shown = subprocess.run(
        [str(BIN / "scorebox"), "jobs", "show", str(moved)],
        env=env_for(scoring),
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert f"drift: {SHIFTED}: PSI {expected:.3f} > 0.2 (SCOREBOX_DRIFT_WARN)" in shown

    # The dashboard over these jobs, in a real browser.
    _dashboard_pages(scoring, engine, moved, expected, tmp_path, screenshots)


def _dashboard_pages(
    scoring: Settings, engine: Engine, job_id: int, psi: float, tmp_path: Path, screenshots: Path
) -> None:
    served = get_job(engine, scoring, job_id)["model_tag"]
    push = subprocess.run(
        [str(BIN / "scorebox"), "models", "push", served],
        env=env_for(scoring),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert push.returncode == 0, push.stderr
    alias = subprocess.run(
        [str(BIN / "scorebox"), "models", "alias", "champion", served],
        env=env_for(scoring),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert alias.returncode == 0, alias.stderr
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO scorebox_prediction_log (logged_at, model_tag, request_id, features, "
                "prediction) SELECT now() - make_interval(mins => g % 5), :t, 'r' || g, '{}', '{}' "
                "FROM generate_series(1, 40) g"
            ),
            {"t": served},
        )

    env = env_for(scoring, SCOREBOX_API_TOKEN="dash-token")
    with dashboard(env, tmp_path / "dashboard.log") as url:
        assert httpx.get(f"{url}/jobs").status_code == 401
        assert httpx.get(f"{url}/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        browser = Browser(screenshots)
        models = browser.dom(f"{url}/?token=dash-token")
        assert served in models and 'class="alias">champion<' in models
        assert "roc_auc" in models
        evaluation = httpx.get(
            f"{url}/models/{served}/evaluation.png", headers={"Authorization": "Bearer dash-token"}
        )
        assert evaluation.status_code == 200 and evaluation.content[:4] == b"\x89PNG"
        jobs = browser.dom(f"{url}/jobs?token=dash-token")
        assert f'href="/jobs/{job_id}"' in jobs and "shifted" in jobs and "succeeded" in jobs
        # The first look at a job adds up its chunks' counts and finds the rows each feature
        # needs; the page says so meanwhile, and comes back.
        deadline = time.monotonic() + 60
        page = browser.dom(f"{url}/jobs/{job_id}?token=dash-token")
        while "Adding up the counts" in page:
            assert time.monotonic() < deadline, page
            time.sleep(1)
            page = browser.dom(f"{url}/jobs/{job_id}?token=dash-token")
        shot = browser.screenshot(f"{url}/jobs/{job_id}?token=dash-token", "dashboard")
        print(f"\ndashboard screenshot: {shot}")
        flagged = {
            cells[0]: float(cells[2])
            for kind, cells in table_rows(page)
            if kind == "drifted" and cells[0] != "(model score)"
        }
        assert list(flagged) == [SHIFTED] and abs(flagged[SHIFTED] - psi) < 5e-4, flagged
        assert "<svg" in page and "569 scored, 0 failed of 569 rows" in page
        volume = browser.dom(f"{url}/log?token=dash-token")
        assert "40 online predictions logged in the last 24 hours" in volume and "<svg" in volume


def _records(engine: Engine, features: list[str], shift: str | None = None) -> list[dict]:
    with engine.connect() as conn:
        frame = pd.read_sql(text("SELECT * FROM features ORDER BY id"), conn)
    if shift is not None:
        frame[shift] = frame[shift] * 1.3 + 2
    return [{name: float(row[name]) for name in features} for _, row in frame.iterrows()]


def _metric(url: str, name: str, feature: str | None = None) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name) and (feature is None or f'feature="{feature}"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
def test_prediction_log_and_online_drift_gauges(
    settings: Settings, engine: Engine, trained: TrainedModel, tmp_path: Path
) -> None:
    upgrade(engine, settings.predictions_table)
    with engine.begin() as conn:
        seed(conn, settings.feature_table, id_column="id", target_column="target")
    env = process_env(
        settings,
        SCOREBOX_MODEL_NAME=trained.settings.model_name,
        SCOREBOX_LOG_PREDICTIONS="1.0",
        SCOREBOX_SERVICE_WORKERS="1",
        SCOREBOX_DRIFT_EVERY_SECONDS="1",
    )
    names = trained.info.feature_names
    sent = _records(engine, names, shift=SHIFTED)[:300]
    with serving(env, tmp_path / "serve.log") as url, httpx.Client(base_url=url) as client:
        answers = []
        for i, record in enumerate(sent):
            response = client.post(
                "/predict", json={"records": [record]}, headers={"x-request-id": f"r-{i}"}
            )
            assert response.status_code == 200 and response.headers["x-request-id"] == f"r-{i}"
            answers.append(response.json()["predictions"][0])
        deadline = time.monotonic() + 10
        while _count(engine) < len(sent):
            assert time.monotonic() < deadline, f"{_count(engine)} of {len(sent)} logged"
            time.sleep(0.1)
        with engine.connect() as conn:
            logged = conn.execute(
                text(
                    "SELECT request_id, model_tag, features, prediction "
                    "FROM scorebox_prediction_log ORDER BY id"
                )
            ).all()
        assert [row[0] for row in logged] == [f"r-{i}" for i in range(len(sent))]
        assert {row[1] for row in logged} == {trained.tag}
        assert [row[2] for row in logged] == sent
        assert [row[3] for row in logged] == answers

        # Online drift: the shifted feature's gauge, and no other, is past the threshold.
        time.sleep(1.1)
        client.post("/predict", json={"records": [sent[0]]})
        psi = {name: _metric(url, "scorebox_feature_psi", name) for name in names}
        assert {name for name, value in psi.items() if value > 0.2} == {SHIFTED}, psi

        # The log table away (renamed): answers go on, the sampled ones are counted as dropped.
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE scorebox_prediction_log RENAME TO away"))
        started = time.monotonic()
        for record in sent[:100]:
            assert client.post("/predict", json={"records": [record]}).status_code == 200
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 10
        while _metric(url, "scorebox_prediction_log_dropped_total") < 1:
            assert time.monotonic() < deadline, "nothing counted as dropped"
            time.sleep(0.2)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE away RENAME TO scorebox_prediction_log"))
        before = _count(engine)
        deadline = time.monotonic() + 20
        while _count(engine) == before:  # it reconnects and writes again
            client.post("/predict", json={"records": [sent[1]]})
            assert time.monotonic() < deadline, "logging never resumed"
            time.sleep(0.3)
    assert "prediction log: " in (tmp_path / "serve.log").read_text()


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM scorebox_prediction_log")).scalar_one())
