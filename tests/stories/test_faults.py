"""Faults with real processes, each ending with a count check: every row of the job has exactly
one prediction for the model tag and the jobs table's counts match the predictions table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, text

from scorebox.seed import seed
from scorebox.settings import Settings
from scorebox_cli.processes import free_port, serving, stop, working
from tests.conftest import PG_HOST, TrainedModel, process_env
from tests.scoring import assert_exactly_once, env_for, expected_from_model, predictions, wait_for
from tests.test_service import schemathesis
from worker.celery_app import chunk_sender, deployment_queue, make_app
from worker.client import ServiceClient
from worker.jobs import cancel_job, get_job, submit_job

pytestmark = pytest.mark.slow


def _big_table(engine: Engine, rows: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE features"))
        seed(conn, "features", id_column="id", target_column="target", rows=rows)


def _sender(settings: Settings):  # type: ignore[no-untyped-def]
    app = make_app(settings)
    return app, chunk_sender(app)


def _progress(engine: Engine, settings: Settings, job_id: int, rows: int) -> None:
    deadline = time.monotonic() + 120
    while get_job(engine, settings, job_id)["rows_scored"] < rows:
        assert time.monotonic() < deadline, get_job(engine, settings, job_id)
        time.sleep(0.05)


def test_service_stopped_mid_job_and_restarted_within_the_window(
    scoring: Settings, engine: Engine, client: ServiceClient, trained: TrainedModel, tmp_path: Path
) -> None:
    _big_table(engine, 60_000)
    port = free_port()
    settings = scoring.model_copy(
        update={"service_url": f"http://127.0.0.1:{port}", "chunk_size": 1_000}
    )
    app, enqueue = _sender(settings)
    service_env = process_env(trained.settings)
    with working(env_for(settings), tmp_path / "worker.log"):
        with serving(service_env, tmp_path / "serve.log", port=port):
            job_id = submit_job(engine, settings, client, enqueue)
            _progress(engine, settings, job_id, 5_000)
        stopped_at = get_job(engine, settings, job_id)["rows_scored"]
        time.sleep(3)
        assert get_job(engine, settings, job_id)["status"] == "running"
        with serving(service_env, tmp_path / "serve2.log", port=port):
            job = wait_for(engine, settings, job_id, timeout=240)
    app.close()
    assert stopped_at < 60_000
    assert job["status"] == "succeeded", job
    assert_exactly_once(engine, settings, job_id, 60_000)


@contextmanager
def _redis(port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A Redis server of this test's own, keeping nothing on disk."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 20
    while (
        subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout
        != b"PONG\n"
    ):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    try:
        yield process
    finally:
        stop(process)


def test_redis_restarted_mid_job_loses_no_row(
    scoring: Settings, engine: Engine, client: ServiceClient, tmp_path: Path
) -> None:
    """Redis keeps nothing on disk, so a restart drops every queued message. The chunks are in
    PostgreSQL: the sweeper queues the lost ones again once they have waited a lease."""
    _big_table(engine, 60_000)
    port = free_port()
    settings = scoring.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{port}/0", "chunk_size": 1_000}
    )
    env = env_for(settings, SCOREBOX_CHUNK_LEASE_SECONDS="3", SCOREBOX_SWEEP_SECONDS="1")
    app, enqueue = _sender(settings)
    with _redis(port, tmp_path / "redis.log"), working(env, tmp_path / "worker.log"):
        job_id = submit_job(engine, settings, client, enqueue)
        _progress(engine, settings, job_id, 5_000)
    # The worker is gone and Redis with it; the job is half done.
    assert get_job(engine, settings, job_id)["status"] == "running"
    with _redis(port, tmp_path / "redis.log"), working(env, tmp_path / "worker2.log"):
        job = wait_for(engine, settings, job_id, timeout=240)
    app.close()
    assert job["status"] == "succeeded", job
    assert_exactly_once(engine, settings, job_id, 60_000)


def test_database_connections_killed_mid_job_are_retried(
    scoring: Settings, engine: Engine, client: ServiceClient, database: str, tmp_path: Path
) -> None:
    _big_table(engine, 60_000)
    settings = scoring.model_copy(update={"chunk_size": 1_000})
    app, enqueue = _sender(settings)
    with working(env_for(settings), tmp_path / "worker.log"):
        job_id = submit_job(engine, settings, client, enqueue)
        killed = 0
        for round_ in range(3):
            _progress(engine, settings, job_id, 10_000 * (round_ + 1))
            with psycopg.connect(f"host={PG_HOST} user=postgres dbname=postgres") as admin:
                killed += len(
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid() "
                        "AND application_name NOT LIKE 'pytest%%'",
                        (database,),
                    ).fetchall()
                )
        job = wait_for(engine, settings, job_id, timeout=240)
    app.close()
    assert killed > 0
    assert job["status"] == "succeeded", job
    assert_exactly_once(engine, settings, job_id, 60_000)


def test_two_jobs_over_the_same_rows_at_once(
    scoring: Settings,
    engine: Engine,
    client: ServiceClient,
    trained: TrainedModel,
    tmp_path: Path,
) -> None:
    app, enqueue = _sender(scoring)
    with working(env_for(scoring), tmp_path / "worker.log", concurrency=4):
        first = submit_job(engine, scoring, client, enqueue)
        second = submit_job(engine, scoring, client, enqueue)
        jobs = [wait_for(engine, scoring, first), wait_for(engine, scoring, second)]
    app.close()
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]
    assert [j["rows_scored"] for j in jobs] == [569, 569]
    got = predictions(engine)
    assert got["row_id"].is_unique and len(got) == 569
    expected = expected_from_model(scoring, trained)
    assert got["probabilities"].map(lambda p: p["1"]).round(12).tolist() == (
        expected["p1"].round(12).tolist()
    )


@pytest.mark.slow
def test_two_jobs_over_text_keys_of_a_language_collation_never_deadlock(
    scoring: Settings, engine: Engine, client: ServiceClient, tmp_path: Path
) -> None:
    """Keys whose language order is not their byte order (case, accents): every write takes
    its rows' locks in one order, so jobs writing the same rows at once never wait on each
    other in a circle."""
    with engine.begin() as conn:
        for statement in (
            "CREATE TABLE collated AS SELECT f.* FROM features f, generate_series(1, 6)",
            "ALTER TABLE collated DROP COLUMN id",
            'ALTER TABLE collated ADD COLUMN id text COLLATE "en-US-x-icu"',
            "UPDATE collated SET id = (ARRAY['a', 'B', 'ä', 'Z', 'é'])[1 + floor(random() * 5)]"
            " || md5(random()::text)",
            "ALTER TABLE collated ADD PRIMARY KEY (id)",
        ):
            conn.execute(text(statement))
    app, enqueue = _sender(scoring)
    log = tmp_path / "worker.log"
    with working(env_for(scoring), log, concurrency=4):
        for _ in range(3):
            first = submit_job(engine, scoring, client, enqueue, table="collated")
            second = submit_job(engine, scoring, client, enqueue, table="collated")
            jobs = [wait_for(engine, scoring, first), wait_for(engine, scoring, second)]
            assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], jobs
    app.close()
    assert "deadlock detected" not in log.read_text()
    with engine.connect() as conn:
        counted = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT row_id) FROM predictions "
                "WHERE source_table LIKE '%collated'"
            )
        ).one()
    assert tuple(counted) == (569 * 6, 569 * 6)


# The README's grants, as written there (its "Security" section).
GRANTS = """
GRANT USAGE ON SCHEMA {schema} TO {role};
GRANT SELECT ON {schema}.features TO {role};
GRANT SELECT, INSERT, UPDATE ON {schema}.predictions TO {role};
GRANT SELECT, UPDATE ON {schema}.scorebox_jobs, {schema}.scorebox_chunks TO {role};
GRANT SELECT, INSERT, UPDATE ON {schema}.scorebox_failed_rows TO {role};
GRANT SELECT ON {schema}.scorebox_alembic_version TO {role};
"""
SCHEDULE_GRANTS = """
GRANT INSERT ON {schema}.scorebox_jobs, {schema}.scorebox_chunks TO {role};
GRANT USAGE ON SEQUENCE {schema}.scorebox_jobs_id_seq TO {role};
GRANT SELECT ON {schema}.scorebox_models TO {role};
"""


def test_worker_runs_with_only_the_grants_it_needs_and_a_schedule_with_its_own(
    scoring: Settings,
    engine: Engine,
    client: ServiceClient,
    schema: str,
    database: str,
    tmp_path: Path,
) -> None:
    role = f"worker_{schema}"
    admin = f"host={PG_HOST} user=postgres dbname={database}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE ROLE "{role}" LOGIN')
        c.execute(GRANTS.format(schema=f'"{schema}"', role=f'"{role}"'))
    try:
        restricted = scoring.model_copy(
            update={
                "database_url": scoring.database_url.replace("postgres@", f"{role}@"),
                "schedule_cron": "*/15 * * * *",
            }
        )
        env = env_for(restricted, SCOREBOX_SCHEDULE_CRON="*/15 * * * *")
        app, enqueue = _sender(scoring)
        with working(env, tmp_path / "worker.log"):
            job = wait_for(engine, scoring, submit_job(engine, scoring, client, enqueue))
            # The schedule's task, as beat sends it: without the grants to record a job it fails,
            # and `scorebox jobs list` says so.
            app.send_task("scorebox.score_new_rows", queue=deployment_queue(scoring))
            listed = _wait_listed(env, "failed")
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(SCHEDULE_GRANTS.format(schema=f'"{schema}"', role=f'"{role}"'))
                c.execute(f'DELETE FROM "{schema}".predictions WHERE CAST(row_id AS int) <= 10')
            app.send_task("scorebox.score_new_rows", queue=deployment_queue(scoring))
            scheduled = _wait_listed(env, ": job ")
        app.close()
        assert job["status"] == "succeeded", job
        assert_exactly_once(engine, scoring, job["id"], 569)
        assert "permission denied for table scorebox_jobs" in listed
        new_job = int(scheduled.rsplit(": job ", 1)[1].split()[0])
        assert wait_for(engine, scoring, new_job)["rows_scored"] == 10
        dsn = f"host={PG_HOST} user={role} dbname={database} options=-csearch_path={schema}"
        with psycopg.connect(dsn) as conn:
            for statement in (
                "DELETE FROM predictions",
                "DELETE FROM features",
                "DROP TABLE features",
                "DELETE FROM scorebox_jobs",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
                conn.rollback()
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP OWNED BY "{role}"')
            c.execute(f'DROP ROLE "{role}"')


def _wait_listed(env: dict[str, str], expected: str, timeout: float = 60) -> str:
    """`scorebox jobs list` output (stdout and stderr) once it mentions ``expected``."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(
            [sys.executable, "-m", "scorebox", "jobs", "list"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        listed = done.stdout + done.stderr
        if "last scheduled run" in listed and expected in listed.split("last scheduled run")[1]:
            return listed
        assert time.monotonic() < deadline, listed
        time.sleep(0.5)


def test_load_32_clients_mixed_rows_and_batches_no_5xx_flat_memory(
    service_url: str, trained: TrainedModel
) -> None:
    import json

    import httpx
    import psutil

    from scorebox.seed import example_frame

    frame = example_frame()
    names = trained.info.feature_names
    single = [json.dumps({"records": [r]}).encode() for r in frame[names].to_dict("records")]
    batch = json.dumps(
        {"records": frame[names].sample(1000, replace=True, random_state=1).to_dict("records")}
    ).encode()
    port = int(service_url.rsplit(":", 1)[1])
    server = next(
        p
        for p in psutil.process_iter(["cmdline"])
        if "--port" in (p.info["cmdline"] or []) and str(port) in (p.info["cmdline"] or [])
    )

    def rss() -> int:
        return sum(p.memory_info().rss for p in [server, *server.children(recursive=True)])

    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def client(k: int, stop_at: float) -> None:
        with httpx.Client(timeout=60) as http:
            i = k
            while time.monotonic() < stop_at:
                body = batch if i % 20 == 0 else single[i % len(single)]
                i += 32
                code = http.post(
                    f"{service_url}/predict",
                    content=body,
                    headers={"content-type": "application/json"},
                ).status_code
                with lock:
                    statuses[code] = statuses.get(code, 0) + 1

    def run(seconds: float) -> None:
        stop_at = time.monotonic() + seconds
        threads = [threading.Thread(target=client, args=(k, stop_at)) for k in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    run(15)  # warm-up: allocator arenas and caches grow to their working size first
    start_rss = rss()
    run(40)
    end_rss = rss()
    print(
        f"\nload: {statuses}, service RSS {start_rss / 2**20:.0f} MiB -> {end_rss / 2**20:.0f} MiB"
    )
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > 1000
    # Flat enough: after warm-up, 40 s more of load may not grow the service by a fifth (the
    # ten-minute soak is bench/soak.py's).
    assert end_rss < start_rss * 1.2, (start_rss, end_rss)


def test_schemathesis_with_many_examples(service_url: str) -> None:
    schemathesis(service_url, examples=300, seed=11)


def _in_write(database: str) -> list[tuple[int, str]]:
    """(worker process id, backend state) of worker connections busy writing predictions."""
    with psycopg.connect(f"host={PG_HOST} user=postgres dbname=postgres") as admin:
        rows = admin.execute(
            "SELECT application_name, state FROM pg_stat_activity WHERE datname = %s "
            "AND application_name LIKE 'scorebox-worker:%%' "
            "AND state IN ('active', 'idle in transaction') AND query ILIKE '%%predictions%%'",
            (database,),
        ).fetchall()
    return [(int(name.split(":")[1]), state) for name, state in rows]


def test_worker_stalled_inside_its_write_stops_no_one(
    scoring: Settings, engine: Engine, client: ServiceClient, database: str, tmp_path: Path
) -> None:
    """SIGSTOP a worker while it is inside its write transaction, for several leases: the other
    worker finishes the job within about two leases, an unrelated job finishes too, and the
    stalled worker writes nothing when it wakes."""
    _big_table(engine, 40_000)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE unrelated AS SELECT * FROM features WHERE id <= 2000"))
    lease = 4.0
    settings = scoring.model_copy(update={"chunk_size": 4_000})
    env = env_for(settings, SCOREBOX_CHUNK_LEASE_SECONDS=str(lease), SCOREBOX_SWEEP_SECONDS="1")
    app, enqueue = _sender(settings)
    stalled = None
    with (
        working(env, tmp_path / "a.log", concurrency=1),
        working(env, tmp_path / "b.log", concurrency=1),
    ):
        job_id = submit_job(engine, settings, client, enqueue)
        deadline = time.monotonic() + 60
        while stalled is None:
            assert time.monotonic() < deadline, "never caught a worker inside its write"
            for pid, _ in _in_write(database):
                os.kill(pid, signal.SIGSTOP)
                if any(p == pid and s == "idle in transaction" for p, s in _in_write(database)):
                    stalled = pid
                    break
                os.kill(pid, signal.SIGCONT)  # it had finished its statement; try again
            time.sleep(0.002)
        stopped_at = time.monotonic()
        other = submit_job(engine, settings, client, enqueue, table="unrelated")
        finished = wait_for(engine, settings, job_id, timeout=120)
        took = time.monotonic() - stopped_at
        unrelated = wait_for(engine, settings, other, timeout=60)
        time.sleep(3 * lease - min(took, 3 * lease))  # stay stopped for three leases in all
        os.kill(stalled, signal.SIGCONT)
        time.sleep(lease)  # the stalled worker wakes, finds its session gone, writes nothing
        after = get_job(engine, settings, job_id)
    app.close()
    assert finished["status"] == "succeeded", finished
    assert took < 2 * lease + 10, took
    assert unrelated["status"] == "succeeded"
    assert after["rows_scored"] == 40_000 and after["status"] == "succeeded"
    assert_exactly_once(engine, settings, job_id, 40_000)


def test_cancel_works_on_live_jobs_under_two_workers_of_two_processes(
    scoring: Settings, engine: Engine, client: ServiceClient, tmp_path: Path
) -> None:
    _big_table(engine, 20_000)
    settings = scoring.model_copy(update={"chunk_size": 250})
    env = env_for(settings)
    app, enqueue = _sender(settings)
    with working(env, tmp_path / "a.log"), working(env, tmp_path / "b.log"):
        for _ in range(20):
            job_id = submit_job(engine, settings, client, enqueue)
            _progress(engine, settings, job_id, 250)
            assert cancel_job(engine, settings, job_id) is True
        time.sleep(2)  # chunks in flight finish or are fenced off
    app.close()
    logs = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    assert "deadlock" not in logs.lower() and "Traceback" not in logs
    with engine.connect() as conn:
        statuses = {r[0] for r in conn.execute(text("SELECT status FROM scorebox_jobs"))}
        mismatched = conn.execute(
            text(
                "SELECT count(*) FROM scorebox_jobs j WHERE rows_scored <> (SELECT "
                "coalesce(sum(rows_scored), 0) FROM scorebox_chunks c "
                "WHERE c.job_id = j.id AND c.status = 'done')"
            )
        ).scalar()
    assert statuses == {"cancelled"}
    assert mismatched == 0
