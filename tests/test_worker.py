"""Batch scoring with real processes: PostgreSQL, Redis, `bentoml serve` and `celery worker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, text

from scorebox.db import Tables
from scorebox.seed import seed
from scorebox.settings import Settings
from scorebox_cli.processes import BIN, free_port, serving, working
from tests.conftest import TrainedModel, process_env
from tests.scoring import (
    assert_exactly_once,
    env_for,
    expected_from_model,
    predictions,
    wait_for,
)
from worker.celery_app import chunk_sender, deployment_queue, make_app
from worker.chunks import claim, run_chunk
from worker.client import ServiceClient
from worker.jobs import cancel_job, get_job, resume_job, submit_job
from worker.store import make_store, predictions_of


def test_job_scores_every_row_like_the_model_itself(
    scoring: Settings, engine: Engine, trained: TrainedModel, tmp_path: Path
) -> None:
    with working(env_for(scoring), tmp_path / "worker.log"):
        done = subprocess.run(
            [str(BIN / "scorebox"), "score", "--wait"],
            env=env_for(scoring),
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "succeeded - 569 scored, 0 failed of 569 rows" in done.stdout
    job_id = int(done.stdout.split("job ")[1].split()[0])
    job = get_job(engine, scoring, job_id)
    assert job["model_tag"] == trained.tag and job["chunks_total"] == 6
    assert_exactly_once(engine, scoring, job_id, 569)
    got = predictions(engine)
    expected = expected_from_model(scoring, trained)
    assert got["row_id"].tolist() == expected["row_id"].tolist()
    probabilities = got["probabilities"].map(lambda p: p["1"])
    np.testing.assert_allclose(probabilities.to_numpy(), expected["p1"].to_numpy(), rtol=1e-9)
    labels = np.where(expected["p1"] > 0.5, "1", "0")
    assert got["predicted_label"].tolist() == labels.tolist()
    assert (got["job_id"] == job_id).all()


def test_new_mode_scores_only_rows_without_a_prediction(
    scoring: Settings,
    engine: Engine,
    client: ServiceClient,
    enqueue: Callable[[int, int, str], None],
    tmp_path: Path,
) -> None:
    with working(env_for(scoring), tmp_path / "worker.log"):
        first = submit_job(engine, scoring, client, enqueue)
        assert wait_for(engine, scoring, first)["status"] == "succeeded"
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM predictions WHERE CAST(row_id AS int) % 10 = 0"))
            before = dict(
                conn.execute(text("SELECT CAST(row_id AS int), scored_at FROM predictions")).all()
            )
        second = submit_job(engine, scoring, client, enqueue, mode="new")
        job = wait_for(engine, scoring, second)
    assert (job["status"], job["rows_total"], job["rows_scored"]) == ("succeeded", 56, 56)
    after = predictions(engine)
    assert len(after) == 569
    rescored = after[after["job_id"] == second]["row_id"]
    assert sorted(rescored) == [i for i in range(1, 570) if i % 10 == 0]
    kept = after[after["job_id"] == first]
    assert all(before[r] == s for r, s in zip(kept["row_id"], kept["scored_at"], strict=True))


def test_chunk_delivered_twice_leaves_the_same_rows(
    scoring: Settings, engine: Engine, client: ServiceClient
) -> None:
    job_id = submit_job(engine, scoring, client, lambda job, chunk, queue: None)
    tables = Tables.build(scoring.predictions_table)
    store = make_store(engine, tables)
    assert run_chunk(store, engine, tables, client, job_id, 0, 60) == "done"
    first = predictions(engine)
    assert run_chunk(store, engine, tables, client, job_id, 0, 60) == "skipped"
    store.close()
    assert predictions(engine).equals(first)
    assert get_job(engine, scoring, job_id)["rows_scored"] == 100


def test_job_run_again_updates_predictions_already_there(
    scoring: Settings, engine: Engine, client: ServiceClient
) -> None:
    """Chunks are copied straight into the table; a chunk some of whose rows have a prediction
    of the model already is written again as an upsert, whether the first such row comes first
    or half-way through the chunk."""
    tables = Tables.build(scoring.predictions_table)
    store = make_store(engine, tables)
    first = submit_job(engine, scoring, client, lambda job, chunk, queue: None)
    for chunk in range(get_job(engine, scoring, first)["chunks_total"]):
        assert run_chunk(store, engine, tables, client, first, chunk, 60) == "done"
    right = predictions(engine).set_index("row_id")["probability"]
    with engine.begin() as conn:
        # Chunk 0 (ids 1-100): its first half without a prediction, the rest wrong; chunk 2
        # (ids 201-300): none; the others: all there, wrong.
        conn.execute(text("DELETE FROM predictions WHERE CAST(row_id AS int) <= 50"))
        conn.execute(text("DELETE FROM predictions WHERE CAST(row_id AS int) BETWEEN 201 AND 300"))
        conn.execute(text("UPDATE predictions SET probability = -1, job_id = NULL"))
    second = submit_job(engine, scoring, client, lambda job, chunk, queue: None)
    for chunk in range(get_job(engine, scoring, second)["chunks_total"]):
        assert run_chunk(store, engine, tables, client, second, chunk, 60) == "done"
    store.close()
    after = predictions(engine).set_index("row_id")
    assert len(after) == 569 and (after["job_id"] == second).all()
    np.testing.assert_allclose(after["probability"], right.loc[after.index], rtol=1e-12)
    assert_exactly_once(engine, scoring, second, 569)


def test_rows_inserted_into_a_running_jobs_range_are_scored_and_counted(
    scoring: Settings, engine: Engine, client: ServiceClient
) -> None:
    table = scoring.feature_table
    with engine.begin() as conn:
        row = conn.execute(text(f"SELECT * FROM {table} WHERE id = 5")).mappings().one()
        conn.execute(text(f"DELETE FROM {table} WHERE id = 5"))
    job_id = submit_job(engine, scoring, client, lambda job, chunk, queue: None)
    assert get_job(engine, scoring, job_id)["rows_total"] == 568
    with engine.begin() as conn:  # back while the job runs, inside chunk 0's id range
        columns = ", ".join(f'"{c}"' for c in row)
        values = ", ".join(f":{i}" for i in range(len(row)))
        conn.execute(
            text(f"INSERT INTO {table} ({columns}) VALUES ({values})"),
            {str(i): v for i, v in enumerate(row.values())},
        )
    tables = Tables.build(scoring.predictions_table)
    store = make_store(engine, tables)
    chunks = get_job(engine, scoring, job_id)["chunks_total"]
    for chunk in range(chunks):
        assert run_chunk(store, engine, tables, client, job_id, chunk, 60) == "done"
    store.close()
    job = get_job(engine, scoring, job_id)
    assert (job["status"], job["rows_scored"], job["rows_total"]) == ("succeeded", 569, 569)


def test_worker_whose_lease_expired_writes_nothing(
    scoring: Settings, engine: Engine, client: ServiceClient
) -> None:
    job_id = submit_job(engine, scoring, client, lambda job, chunk, queue: None)
    tables = Tables.build(scoring.predictions_table)
    stalled = claim(engine, tables, job_id, 0, lease=0.2)
    assert stalled is not None
    time.sleep(0.5)
    taken_over = claim(engine, tables, job_id, 0, lease=60)
    assert taken_over is not None and taken_over.token != stalled.token
    store = make_store(engine, tables)
    rows = store.read(stalled.job, stalled.id_lo, stalled.id_hi)
    _, result = client.score(rows.table)
    scored = predictions_of(rows.keys, result)
    assert store.write(stalled.lease, scored) is False
    assert predictions(engine).empty
    assert store.write(taken_over.lease, scored) is True
    store.close()
    assert len(predictions(engine)) == 100
    assert get_job(engine, scoring, job_id)["rows_scored"] == 100


@pytest.mark.slow
def test_killed_worker_loses_nothing_and_scores_each_row_once(
    scoring: Settings, engine: Engine, client: ServiceClient, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE features"))
        seed(conn, "features", id_column="id", target_column="target", rows=200_000)
    settings = scoring.model_copy(update={"chunk_size": 5_000})
    env = env_for(settings, SCOREBOX_CHUNK_LEASE_SECONDS="3", SCOREBOX_SWEEP_SECONDS="1")
    app = make_app(settings)
    enqueue = chunk_sender(app)
    log = tmp_path / "worker.log"
    with working(env, log, concurrency=1) as process:
        job_id = submit_job(engine, settings, client, enqueue)
        while get_job(engine, settings, job_id)["rows_scored"] < 20_000:
            time.sleep(0.05)
        for _ in range(400):  # kill it while it holds a chunk, most likely
            with engine.connect() as conn:
                if conn.execute(
                    text("SELECT 1 FROM scorebox_chunks WHERE status = 'running'")
                ).first():
                    break
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    killed_at = get_job(engine, settings, job_id)
    assert killed_at["status"] == "running" and killed_at["rows_scored"] < 200_000
    # No beat: the new worker's own sweeper sends the dead worker's chunk again.
    with working(env, log, concurrency=2):
        job = wait_for(engine, settings, job_id, timeout=240)
    app.close()
    assert job["status"] == "succeeded", job
    assert_exactly_once(engine, settings, job_id, 200_000)
    with engine.connect() as conn:
        attempts = [r[0] for r in conn.execute(text("SELECT attempt FROM scorebox_chunks"))]
    # Only the chunk the dead worker held (if it held one when the signal landed) ran twice.
    assert max(attempts) <= 2 and attempts.count(2) <= 2


@pytest.mark.slow
def test_service_down_then_up_finishes_and_down_too_long_fails(
    scoring: Settings,
    engine: Engine,
    client: ServiceClient,
    enqueue: Callable[[int, int, str], None],
    trained: TrainedModel,
    tmp_path: Path,
) -> None:
    port = free_port()
    down = scoring.model_copy(update={"service_url": f"http://127.0.0.1:{port}"})
    with working(env_for(down), tmp_path / "worker.log"):
        job_id = submit_job(engine, scoring, client, enqueue)
        time.sleep(3)
        assert get_job(engine, scoring, job_id)["rows_scored"] == 0
        service_env = process_env(trained.settings)
        with serving(service_env, tmp_path / "serve.log", port=port):
            job = wait_for(engine, scoring, job_id)
    assert job["status"] == "succeeded"
    assert_exactly_once(engine, scoring, job_id, 569)

    with working(env_for(down, SCOREBOX_SERVICE_RETRIES="2"), tmp_path / "worker2.log"):
        failing = submit_job(engine, scoring, client, enqueue)
        job = wait_for(engine, scoring, failing)
    assert job["status"] == "failed"
    assert f"127.0.0.1:{port}" in job["error"] and "gave up after 2 retries" in job["error"]
    assert len(predictions(engine)) == 569  # what the first job wrote stays


def test_rows_the_service_refuses_are_recorded_and_the_rest_scored(
    scoring: Settings,
    engine: Engine,
    client: ServiceClient,
    enqueue: Callable[[int, int, str], None],
    tmp_path: Path,
) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE features SET mean_area = 'Infinity' WHERE id IN (7, 300)"))
        conn.execute(text("UPDATE features SET mean_radius = NULL WHERE id = 8"))
    with working(env_for(scoring), tmp_path / "worker.log"):
        job = wait_for(engine, scoring, submit_job(engine, scoring, client, enqueue))
    assert (job["status"], job["rows_scored"], job["rows_failed"]) == (
        "succeeded_with_errors",
        567,
        2,
    )
    with engine.connect() as conn:
        failed = conn.execute(text("SELECT row_id, reason FROM scorebox_failed_rows")).all()
    assert sorted(failed) == [
        ("300", "infinite value in mean_area"),
        ("7", "infinite value in mean_area"),
    ]
    assert 8 in predictions(engine)["row_id"].tolist()  # NULL is imputed, not a failure


@pytest.mark.slow
def test_job_for_a_version_the_service_cannot_load_fails_instead_of_mixing(
    scoring: Settings,
    engine: Engine,
    client: ServiceClient,
    enqueue: Callable[[int, int, str], None],
    tmp_path: Path,
) -> None:
    job_id = submit_job(engine, scoring, client, lambda job, chunk, queue: None)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE scorebox_jobs SET model_tag = 'served:older' WHERE id = :j"), {"j": job_id}
        )
    with working(env_for(scoring), tmp_path / "worker.log"):
        for chunk in range(6):
            enqueue(job_id, chunk, deployment_queue(scoring))
        job = wait_for(engine, scoring, job_id)
    assert job["status"] == "failed"
    # The job is pinned to a version the service cannot load: it fails, nothing is mixed.
    assert "409 to /v1/predict/arrow: cannot serve served:older: " in job["error"]
    assert predictions(engine).empty


@pytest.mark.slow
def test_cancelled_job_writes_nothing_more_and_can_resume(
    scoring: Settings,
    engine: Engine,
    client: ServiceClient,
    enqueue: Callable[[int, int, str], None],
    tmp_path: Path,
) -> None:
    job_id = submit_job(engine, scoring, client, enqueue)
    assert cancel_job(engine, scoring, job_id) is True
    assert cancel_job(engine, scoring, job_id) is False
    with working(env_for(scoring), tmp_path / "worker.log"):
        time.sleep(3)
        assert get_job(engine, scoring, job_id)["status"] == "cancelled"
        assert predictions(engine).empty
        assert resume_job(engine, scoring, enqueue, job_id) == 6
        job = wait_for(engine, scoring, job_id)
    assert job["status"] == "succeeded"
    assert_exactly_once(engine, scoring, job_id, 569)


@pytest.mark.slow
def test_jobs_cli_lists_shows_and_explains_unknown_ids(
    scoring: Settings, engine: Engine, client: ServiceClient
) -> None:
    job_id = submit_job(engine, scoring, client, lambda job, chunk, queue: None)
    env = env_for(scoring)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "scorebox", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = run("jobs", "list")
    assert listed.returncode == 0 and f"{job_id}" in listed.stdout and "queued" in listed.stdout
    shown = run("jobs", "show", str(job_id))
    assert "queued - 0 scored, 0 failed of 569 rows" in shown.stdout
    missing = run("jobs", "show", "99999")
    assert missing.returncode == 1 and "no job with id 99999" in missing.stderr
    wrong_model = run("score", "--model", "served:nope")
    assert wrong_model.returncode == 1 and "no model served:nope" in wrong_model.stderr


def test_schedule_runs_new_rows_job_on_cron(scoring: Settings) -> None:
    app = make_app(scoring.model_copy(update={"schedule_cron": "*/15 6-18 * * 1-5"}))
    entry = app.conf.beat_schedule["score-new-rows"]
    assert entry["task"] == "scorebox.score_new_rows"
    assert entry["schedule"].minute == set(range(0, 60, 15))
    assert entry["schedule"].day_of_week == {1, 2, 3, 4, 5}
    # Beat's task goes to this deployment's queue, named when it is sent.
    assert app.amqp.router.route({}, entry["task"])["queue"].name == deployment_queue(scoring)


@pytest.mark.slow
def test_a_job_no_worker_reads_is_said_within_seconds_and_any_url_of_the_database_works(
    scoring: Settings, engine: Engine, client: ServiceClient, tmp_path: Path
) -> None:
    env = env_for(scoring)
    # Another spelling of the same database: localhost instead of 127.0.0.1.
    other_url = scoring.database_url.replace("@127.0.0.1:", "@localhost:")
    assert other_url != scoring.database_url

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "scorebox"), *args],
            env=env | extra,
            capture_output=True,
            text=True,
            timeout=120,
        )

    began = time.monotonic()
    alone = run("score")
    assert alone.returncode == 0, alone.stderr
    assert time.monotonic() - began < 30
    job_id = int(alone.stdout.split()[1])
    warning = next(line for line in alone.stderr.splitlines() if "no worker has read" in line)
    assert f"queue {deployment_queue(scoring)}" in warning and "celery -A worker worker" in warning
    # A job recorded with a queue name of old (derived from the URL's text), then cancelled.
    stale = submit_job(engine, scoring, client, lambda job, chunk, queue: None)
    assert cancel_job(engine, scoring, stale)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE scorebox_jobs SET queue = 'scorebox.served.0ld0ld00' WHERE id = :j"),
            {"j": stale},
        )
    with working(env, tmp_path / "worker.log"):
        assert wait_for(engine, scoring, job_id)["status"] == "succeeded"
        waited = run("score", "--wait", SCOREBOX_DATABASE_URL=other_url)
        resumed = run("jobs", "resume", str(stale), SCOREBOX_DATABASE_URL=other_url)
        assert wait_for(engine, scoring, stale)["status"] == "succeeded"
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert resumed.returncode == 0 and "6 chunk(s) queued again" in resumed.stdout
    assert "no worker has read" not in waited.stderr + resumed.stderr
    assert_exactly_once(engine, scoring, job_id, 569)
    assert get_job(engine, scoring, stale)["queue"] == deployment_queue(scoring)

    with engine.begin() as conn:  # 20,000 jobs: the list stays short and says how to see all
        conn.execute(
            text(
                "INSERT INTO scorebox_jobs (table_name, model_tag, mode, status, queue) "
                "SELECT 'features', 'served:x', 'all', 'failed', 'q' FROM generate_series(1, 20000)"
            )
        )
    began = time.monotonic()
    listed = run("jobs", "list")
    assert listed.returncode == 0 and time.monotonic() - began < 15
    assert len(listed.stdout.strip().splitlines()) == 21  # the header and 20 jobs (a pipe: TSV)
    assert "20 newest of 20,003 jobs; --all lists every one" in listed.stderr
    every = run("jobs", "list", "--all")
    assert len(every.stdout.strip().splitlines()) == 20_004


def test_a_chunks_predictions_and_failed_rows_are_in_the_keys_byte_order() -> None:
    """One lock order for every write (the predictions table's own, bytewise), whatever order
    the source table's collation read the keys in."""
    import pyarrow as pa

    keys = pa.array(["b", "B", "ä", "a", "Z", "é", "10", "9"])
    errors = [None, None, "bad", None, None, "bad", None, None]
    result = pa.table(
        {
            "error": pa.array(errors, pa.string()),
            "predicted_label": pa.array(["0"] * 8),
            "probability": pa.array([0.5] * 8),
            "p:0": pa.array([0.5] * 8),
            "p:1": pa.array([0.5] * 8),
        }
    )
    scored = predictions_of(keys, result)
    written = scored.table.column("row_id").to_pylist()
    assert written == sorted(written, key=str.encode) == ["10", "9", "B", "Z", "a", "b"]
    assert [key for key, _ in scored.failed] == ["ä", "é"]


def test_integer_keys_are_written_as_text_in_byte_order_too() -> None:
    import pyarrow as pa

    keys = pa.array([9, 10, 100, 2], pa.int64())
    result = pa.table(
        {
            "error": pa.array([None, None, "bad", None], pa.string()),
            "predicted_value": pa.array([1.0, 2.0, 3.0, 4.0]),
        }
    )
    scored = predictions_of(keys, result)
    assert scored.table.column("row_id").type == pa.string()
    assert scored.table.column("row_id").to_pylist() == ["10", "2", "9"]
    assert scored.failed == [("100", "bad")]


def test_drift_counts_an_evenly_spread_sample_of_a_large_chunk(trained: TrainedModel) -> None:
    """A large chunk's drift is counted on 5,000 of its rows, spread over it; the counts say how
    many, and their shares are those of every row, within sampling error."""
    import pyarrow as pa

    from scorebox.profile import psi
    from scorebox.seed import example_frame
    from worker.chunks import DRIFT_SAMPLE_ROWS, chunk_profile

    info = trained.info
    reference = {
        "task": info.task,
        "classes": info.classes,
        "features": [f.to_dict() for f in info.features],
        "profile": info.profile,
    }
    frame = example_frame()
    rows = frame.iloc[np.random.default_rng(0).integers(0, len(frame), 60_000)]
    table = pa.table({f.name: rows[f.name].to_numpy(float) for f in info.features})
    p = np.random.default_rng(1).random(len(rows))
    result = pa.table(
        {"error": pa.nulls(len(rows), pa.string()), "probability": np.maximum(p, 1 - p)}
        | {"p:0": 1 - p, "p:1": p}
    )
    sampled = chunk_profile(reference, table, result)
    every = chunk_profile(reference, table, result, sample=len(rows))
    assert sampled is not None and every is not None
    for name, counts in sampled.items():
        assert sum(counts) == DRIFT_SAMPLE_ROWS, name
        assert sum(every[name]) == len(rows)
        shares = (np.asarray(every[name]) / len(rows)).tolist()
        assert psi(shares, np.asarray(counts)) < 0.02, name
