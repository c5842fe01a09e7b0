"""Batch scoring benchmark: a synthetic table scored end to end (PostgreSQL -> worker -> service ->
PostgreSQL) against, in the same run, (a) the in-process limit: COPY read, the model's predict
in-process, COPY + upsert write; and (b) the naive way: pandas.read_sql, JSON posts of 1000 rows to
the plain BentoML service, DataFrame.to_sql.

    python bench/batch.py [--rows 1000000] [--naive-rows 200000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bentoml
import httpx
import numpy as np
import pandas as pd
import psutil
import pyarrow.csv as pacsv
from _common import prepare
from sqlalchemy import text
from threadpoolctl import threadpool_limits

from scorebox.db import make_engine
from scorebox.processes import serving, working
from scorebox.seed import seed
from scorebox.settings import Settings
from worker.celery_app import chunk_sender, make_app
from worker.client import ServiceClient
from worker.jobs import get_job, submit_job


def _seed_table(settings: Settings, name: str, rows: int) -> None:
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))
        seed(conn, name, id_column="id", target_column="target", rows=rows)
        conn.execute(text(f'ANALYZE "{name}"'))
    engine.dispose()


def _reset_predictions(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE predictions"))
    engine.dispose()


class PeakRss:
    """Samples the summed RSS of a process tree every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def scorebox_run(
    settings: Settings, env: dict[str, str], table: str, logs: Path
) -> tuple[float, int]:
    """Rows/s of a scorebox job over ``table`` and the worker's peak RSS."""
    _reset_predictions(settings)
    engine = make_engine(settings.database_url)
    app = make_app(settings)
    client = ServiceClient(settings.service_url, None, 60)
    with working(env, logs / f"worker-{table}.log", concurrency=2) as process:
        rss = PeakRss(process.pid)
        began = time.perf_counter()
        job_id = submit_job(
            engine,
            settings,
            client,
            chunk_sender(app),
            table=table,
        )
        while (job := get_job(engine, settings, job_id))["status"] in ("queued", "running"):
            time.sleep(0.2)
        elapsed = time.perf_counter() - began
        peak = rss.stop()
    assert job["status"] == "succeeded", job
    client.close()
    app.close()
    engine.dispose()
    return job["rows_scored"] / elapsed, peak


def in_process_limit(settings: Settings, tag: str, table: str, names: list[str]) -> float:
    """COPY read in 10k-row chunks, predict_proba in-process, COPY into a temp table + upsert."""
    _reset_predictions(settings)
    pipeline = bentoml.sklearn.load_model(tag)
    engine = make_engine(settings.database_url)
    began = time.perf_counter()
    rows = 0
    with engine.connect() as conn, threadpool_limits(1):
        raw = conn.connection.driver_connection
        assert raw is not None
        cur = raw.cursor()
        cur.execute(
            "CREATE TEMP TABLE staging (row_id bigint, model_tag text, predicted_label text,"
            " probability float8, probabilities json)"
        )
        bounds = cur.execute(f'SELECT min(id), max(id) FROM "{table}"').fetchone()
        assert bounds is not None
        cols = ", ".join(names)
        for lo in range(bounds[0], bounds[1] + 1, 10_000):
            buffer = io.BytesIO()
            query = (
                f'COPY (SELECT id, {cols} FROM "{table}" WHERE id BETWEEN {lo} AND {lo + 9_999}'
                " ORDER BY id) TO STDOUT (FORMAT csv, HEADER)"
            )
            with cur.copy(query) as copy:
                for block in copy:
                    buffer.write(block)
            buffer.seek(0)
            batch = pacsv.read_csv(buffer).to_pandas()
            proba = pipeline.predict_proba(batch[names])
            labels = np.where(proba[:, 1] > proba[:, 0], "1", "0")
            with cur.copy("COPY staging FROM STDIN") as copy:
                for i, row_id in enumerate(batch["id"].tolist()):
                    copy.write_row(
                        (
                            row_id,
                            tag,
                            labels[i],
                            proba[i].max(),
                            json.dumps({"0": proba[i, 0], "1": proba[i, 1]}),
                        )
                    )
            cur.execute(
                "INSERT INTO predictions"
                " (row_id, model_tag, predicted_label, probability, probabilities)"
                " SELECT * FROM staging ON CONFLICT (row_id, model_tag) DO UPDATE SET"
                " predicted_label = excluded.predicted_label, probability = excluded.probability,"
                " probabilities = excluded.probabilities"
            )
            cur.execute("TRUNCATE staging")
            raw.commit()
            rows += len(batch)
    engine.dispose()
    return rows / (time.perf_counter() - began)


def naive(settings: Settings, plain_url: str, table: str, names: list[str]) -> float:
    """pandas.read_sql the table, POST 1000-row JSON batches, DataFrame.to_sql the results."""
    engine = make_engine(settings.database_url)
    began = time.perf_counter()
    frame = pd.read_sql(text(f'SELECT * FROM "{table}" ORDER BY id'), engine)
    out = []
    with httpx.Client(timeout=60) as client:
        for start in range(0, len(frame), 1000):
            batch = frame.iloc[start : start + 1000]
            response = client.post(
                f"{plain_url}/predict", json={"input": batch[names].to_numpy().tolist()}
            )
            response.raise_for_status()
            proba = np.array(response.json())
            out.append(pd.DataFrame({"row_id": batch["id"], "probability": proba.max(axis=1)}))
    pd.concat(out).to_sql("naive_predictions", engine, if_exists="replace", index=False)
    engine.dispose()
    return len(frame) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=100_000)
    parser.add_argument("--naive-rows", type=int, default=200_000)
    args = parser.parse_args()

    settings, tag = prepare()
    names = [
        n
        for n in pd.read_sql(
            text("SELECT * FROM features LIMIT 1"), make_engine(settings.database_url)
        ).columns
        if n not in ("id", "target")
    ]
    tables = {
        "big": ("bench_big", args.rows),
        "small": ("bench_small", args.small_rows),
        "naive": ("bench_naive", args.naive_rows),
    }
    for name, rows in tables.values():
        _seed_table(settings, name, rows)
    logs = Path(os.environ["BENTOML_HOME"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOX_")} | {
        "SCOREBOX_DATABASE_URL": settings.database_url,
        "SCOREBOX_MODEL_NAME": settings.model_name,
        "SCOREBOX_REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
        "BENCH_MODEL_TAG": tag,
    }
    limit = in_process_limit(settings, tag, tables["big"][0], names)
    with serving(env, logs / "plain.log", target="bench.plain_service:Plain") as plain_url:
        naive_rate = naive(settings, plain_url, tables["naive"][0], names)
    with serving(env, logs / "service.log") as url:
        env["SCOREBOX_SERVICE_URL"] = url
        scoring = settings.model_copy(
            update={"service_url": url, "redis_url": env["SCOREBOX_REDIS_URL"]}
        )
        big_rate, big_rss = scorebox_run(scoring, env, tables["big"][0], logs)
        small_rate, small_rss = scorebox_run(scoring, env, tables["small"][0], logs)

    print(f"\nbatch benchmark (chunk size {settings.chunk_size:,})")
    rows = [
        ("in-process limit (COPY, predict, upsert)", args.rows, limit),
        ("naive (read_sql, JSON 1000 rows, to_sql)", args.naive_rows, naive_rate),
        ("scorebox job", args.rows, big_rate),
        ("scorebox job", args.small_rows, small_rate),
    ]
    print(f"{'path':<42} {'rows':>10} {'rows/s':>10}")
    for label, count, rate in rows:
        print(f"{label:<42} {count:>10,} {rate:>10,.0f}")
    print(f"\nscorebox / naive: {big_rate / naive_rate:.2f}x")
    print(f"scorebox / in-process limit: {big_rate / limit:.0%}")
    mib = 2**20
    print(
        f"worker peak RSS: {big_rss / mib:,.0f} MiB at {args.rows:,} rows, "
        f"{small_rss / mib:,.0f} MiB at {args.small_rows:,} rows ({big_rss / small_rss:.2f}x)"
    )


if __name__ == "__main__":
    main()
