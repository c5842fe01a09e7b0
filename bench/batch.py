"""Batch scoring benchmark: a table of the example's shape scored end to end (PostgreSQL ->
worker -> service -> PostgreSQL) against, in the same run, two plain in-process pipelines a
careful engineer would write, each in two processes taking half the id range in 50k-row chunks:

- scikit-learn: reading with ADBC into Arrow, predict_proba in-process on one thread, the
  probabilities' JSON text built in Python, ADBC binary COPY into a temporary table and
  INSERT ... ON CONFLICT into the predictions table;
- compiled: the same model as the service serves it (the version's ONNX artifact and scoring
  parameters, scorebox.compiled.CompiledModel: ONNX Runtime on one intra-op and one inter-op
  thread, OpenMP/BLAS pools limited to one thread), the JSON text built with Arrow compute, and a
  plain binary COPY (ADBC ingest) into the emptied predictions table: no staging, no upsert.

The headline alternates the three in the same run; each ratio is the median of the per-round
ratios. Every run also records the CPU seconds of each group of processes (psutil): the worker's
process tree, the service's, the PostgreSQL backends of the benchmark's database, PostgreSQL's
shared background processes, and the whole machine (which other work may share).

Also: `--mode new` on a table where 1% of the rows are new, how throughput scales with worker and
service processes, the worker's peak memory on a small and a large table, and the cost of each
stage per row (for the model of many machines in BENCHMARKS.md).

    python bench/batch.py [--rows 1000000] [--large-rows 10000000] [--chunk-size 50000]
    python bench/batch.py --headline-only [--rounds 3] [--large-rounds 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import psutil
import pyarrow as pa
from _common import prepare
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from scorebox import ledger
from scorebox.db import Tables, make_engine
from scorebox.seed import example_frame, seed
from scorebox.settings import Settings
from scorebox_cli.processes import child_env, serving, working
from worker.celery_app import chunk_sender, make_app
from worker.client import ServiceClient
from worker.jobs import cancel_job, get_job, submit_job

MiB = 2**20


def _seed(settings: Settings, name: str, rows: int) -> None:
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        have = conn.execute(text(f"SELECT to_regclass('{name}') IS NOT NULL")).scalar()
        if have and conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar() == rows:
            return
        conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))
        seed(conn, name, id_column="id", target_column="target", rows=rows)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'VACUUM ANALYZE "{name}"'))
    engine.dispose()


def _truncate(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE predictions"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("CHECKPOINT"))
    engine.dispose()


class PeakRss:
    """Samples the RSS of each process of a tree every 50 ms; ``peak`` is the largest any one
    process reached (a pool's processes each hold one chunk at a time). The tree is listed
    again once a second: listing it reads every process of the machine, which every 50 ms cost
    the job a fifth of a core."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        listed: list[psutil.Process] = []
        samples = 0
        while not self._stop.is_set():
            if samples % 20 == 0:
                with contextlib.suppress(psutil.Error):
                    listed = [self.root, *self.root.children(recursive=True)]
            samples += 1
            for process in listed:
                with contextlib.suppress(psutil.Error):
                    self.peak = max(self.peak, process.memory_info().rss)
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# --- CPU a group of processes spent -----------------------------------------------------------

# PostgreSQL's processes shared by every database of the server (other users' work included).
_PG_BACKGROUND = ("checkpointer", "background writer", "walwriter", "autovacuum")


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _pg_background() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if process.info["name"] == "postgres" and any(k in line for k in _PG_BACKGROUND):
            found.append(process)
    return found


def _busy(times: Any) -> float:
    """Seconds every core was busy (Linux counts guest time inside user time)."""
    return float(sum(getattr(times, k, 0.0) for k in _BUSY))


_BUSY = ("user", "nice", "system", "irq", "softirq", "steal")


def _service_pid(url: str) -> int:
    """The `bentoml serve` process listening on ``url``'s port."""
    port = str(urlsplit(url).port)
    for process in psutil.process_iter(["cmdline"]):
        line = process.info["cmdline"] or []
        if "serve" in line and "--port" in line and line[line.index("--port") + 1] == port:
            return int(process.pid)
    raise RuntimeError(f"no bentoml serve process on port {port}")


class CpuMeter:
    """CPU seconds (user + system) each group of processes spent between start and stop,
    sampled every 0.5 s (a process seen at start counts from what it had then; one that appears
    later, from zero). Groups: ``processes`` (name -> a function listing them now), PostgreSQL's
    backends connected to this database (but the benchmark's own, named ``bench-*``), its shared
    background processes (every database's), Redis, this process (submitting, polling and this
    meter), and the whole machine (other work on it included)."""

    def __init__(self, database_url: str, processes: dict[str, Any]) -> None:
        import psycopg

        url = make_url(database_url).set(drivername="postgresql")
        self._conn = psycopg.connect(
            url.render_as_string(False), application_name="bench-meter", autocommit=True
        )
        self._groups = dict(processes) | {
            "postgres": self._backends,
            "pg background": self._background,
            "redis": self._redis,
            "bench": lambda: [psutil.Process()],
        }
        self._samples = 0
        self._listed: dict[str, list[psutil.Process]] = {}
        self._shared: dict[str, list[psutil.Process]] = {}
        self._first: dict[tuple[int, float], float] = {}
        self._last: dict[tuple[int, float], tuple[str, float]] = {}
        self._started = False
        self._sample()
        self._started = True
        self._machine = psutil.cpu_times()
        self._began = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _backends(self) -> list[psutil.Process]:
        pids = self._conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND application_name NOT LIKE 'bench-%'"
        ).fetchall()
        found = []
        for (pid,) in pids:
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(pid))
        return found

    def _background(self) -> list[psutil.Process]:
        return _pg_background()

    def _redis(self) -> list[psutil.Process]:
        if "redis" not in self._shared:
            self._shared["redis"] = [
                p for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"
            ]
        return self._shared["redis"]

    def _sample(self, refresh: bool = False) -> None:
        # Listing processes costs ms (psutil reads every /proc entry for a tree): the groups are
        # listed again every 2 s and at the end; in between, only their times are read.
        if refresh or self._samples % 4 == 0:
            self._listed = {name: find() for name, find in self._groups.items()}
        self._samples += 1
        for name, processes in self._listed.items():
            for process in processes:
                try:
                    key = (process.pid, process.create_time())
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                seconds = times.user + times.system
                if key not in self._first:
                    self._first[key] = seconds if not self._started else 0.0
                self._last[key] = (name, seconds)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def stop(self) -> dict[str, float]:
        """CPU seconds by group, with ``machine`` (every core's busy time) and ``wall``."""
        self._stop.set()
        self._thread.join()
        self._sample(refresh=True)
        wall = time.perf_counter() - self._began
        machine = psutil.cpu_times()
        self._conn.close()
        spent = dict.fromkeys(self._groups, 0.0)
        for key, (name, seconds) in self._last.items():
            spent[name] += seconds - self._first[key]
        busy = _busy(machine) - _busy(self._machine)
        return spent | {"machine": busy, "wall": wall}


# --- the baseline: the plain in-process pipeline --------------------------------------------


def _own_cpu(conn: Any) -> tuple[float, float]:
    """CPU seconds of this process and of its connection's PostgreSQL backend so far."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        backend = psutil.Process(cur.fetchone()[0]).cpu_times()
    conn.commit()
    mine = psutil.Process().cpu_times()
    return mine.user + mine.system, backend.user + backend.system


def _ready(conn: Any, out: Any, go: Any) -> tuple[float, float]:
    """Say this process is ready (imports done, model loaded, connected) and wait for the
    start: a pipeline is timed from there, as a job is timed on workers and a service already
    started. Returns the CPU spent so far (this process's, its backend's)."""
    started = _own_cpu(conn)
    out.put("ready")
    go.wait()
    return started


def _finish(conn: Any, started: tuple[float, float], stages: dict[str, float]) -> None:
    ended = _own_cpu(conn)
    stages["cpu"], stages["cpu postgres"] = (b - a for a, b in zip(started, ended, strict=True))


def _baseline_half(
    uri: str, tag: str, table: str, lo: int, hi: int, chunk: int, out: Any, go: Any
) -> None:
    import adbc_driver_postgresql.dbapi as adbc
    import bentoml
    from threadpoolctl import threadpool_limits

    pipeline = bentoml.sklearn.load_model(tag)
    names = [f.name for f in pipeline.steps[0][1].features_]
    stages = dict.fromkeys(("read", "predict", "json", "copy", "upsert"), 0.0)
    with adbc.connect(uri) as conn, threadpool_limits(1):
        started = _ready(conn, out, go)
        for start in range(lo, hi + 1, chunk):
            began = time.perf_counter()
            with conn.cursor() as cur:
                cur.execute(
                    f'SELECT id, {", ".join(names)} FROM "{table}" WHERE id >= $1 AND id <= $2 '
                    "ORDER BY id",
                    (start, min(start + chunk - 1, hi)),
                )
                batch = cur.fetch_arrow_table()
            read = time.perf_counter()
            proba = pipeline.predict_proba(batch.select(names))
            predicted = time.perf_counter()
            labels = np.where(proba[:, 1] > proba[:, 0], "1", "0")
            texts = [json.dumps({"0": p0, "1": p1}) for p0, p1 in proba.tolist()]
            staged = pa.table(
                {
                    "row_id": pa.compute.cast(batch.column("id"), pa.string()),
                    "predicted_label": labels,
                    "probability": proba.max(axis=1),
                    "probabilities": texts,
                }
            )
            built = time.perf_counter()
            with conn.cursor() as cur:
                cur.adbc_ingest("staging", staged, mode="replace", temporary=True)
                copied = time.perf_counter()
                cur.execute(
                    "INSERT INTO predictions (source_table, model_tag, row_id, predicted_label, "
                    "probability, probabilities) SELECT 'baseline', $1, row_id, predicted_label, "
                    "probability, CAST(probabilities AS json) FROM staging ORDER BY row_id "
                    "ON CONFLICT (source_table, model_tag, row_id) DO UPDATE SET "
                    "predicted_label = excluded.predicted_label, "
                    "probability = excluded.probability, "
                    "probabilities = excluded.probabilities",
                    (tag,),
                )
            conn.commit()
            done = time.perf_counter()
            for stage, seconds in zip(
                stages,
                (read - began, predicted - read, built - predicted, copied - built, done - copied),
                strict=True,
            ):
                stages[stage] += seconds
        _finish(conn, started, stages)
    out.put(stages)


def _compiled_half(
    uri: str, tag: str, table: str, lo: int, hi: int, chunk: int, out: Any, go: Any
) -> None:
    """The same pipeline with the model the service serves: the version's ONNX artifact and
    scoring parameters run by scorebox.compiled.CompiledModel (one intra-op and one inter-op
    thread), the JSON text built by Arrow compute, and a plain binary COPY into the (empty)
    predictions table."""
    import adbc_driver_postgresql.dbapi as adbc
    import bentoml
    import pyarrow.compute as pc
    from threadpoolctl import threadpool_limits

    from scorebox.compiled import ONNX_ARTIFACT, CompiledModel, Scoring
    from scorebox.encoding import label_text

    model = bentoml.models.get(tag)
    metadata = dict(model.info.metadata)
    compiled = CompiledModel(
        Path(model.path, ONNX_ARTIFACT).read_bytes(), Scoring.from_dict(metadata["scoring"])
    )
    names = [f["name"] for f in metadata["features"]]
    keys = [label_text(c) for c in metadata["classes"]]
    labels = pa.array(keys, pa.string())
    stages = dict.fromkeys(("read", "predict", "json", "copy"), 0.0)
    with adbc.connect(uri) as conn, threadpool_limits(1):
        started = _ready(conn, out, go)
        for start in range(lo, hi + 1, chunk):
            began = time.perf_counter()
            with conn.cursor() as cur:
                # Integer bounds written into the query: ADBC reads a query without parameters
                # by binary COPY, the faster path (worker/store.py).
                cur.execute(
                    f'SELECT id, {", ".join(names)} FROM "{table}" '
                    f"WHERE id >= {start} AND id <= {min(start + chunk - 1, hi)} ORDER BY id"
                )
                batch = cur.fetch_arrow_table()
            read = time.perf_counter()
            matrix = np.column_stack(
                [batch.column(n).to_numpy().astype(np.float64, copy=False) for n in names]
            )
            proba = compiled.predict_proba(matrix)
            predicted = time.perf_counter()
            pieces: list[Any] = []
            for k, key in enumerate(keys):
                pieces += [
                    ("{" if k == 0 else ", ") + json.dumps(key) + ": ",
                    pc.cast(pa.array(proba[:, k]), pa.string()),
                ]
            rows = batch.num_rows
            staged = pa.table(
                {
                    "row_id": pc.cast(batch.column("id"), pa.string()),
                    "predicted_label": labels.take(pa.array(proba.argmax(axis=1))),
                    "probability": proba.max(axis=1),
                    "probabilities": pc.binary_join_element_wise(*pieces, "}", ""),
                    "source_table": pa.repeat(pa.scalar("baseline", pa.string()), rows),
                    "model_tag": pa.repeat(pa.scalar(tag, pa.string()), rows),
                }
            )
            built = time.perf_counter()
            with conn.cursor() as cur:
                cur.adbc_ingest("predictions", staged, mode="append")
            conn.commit()
            done = time.perf_counter()
            for stage, seconds in zip(
                stages,
                (read - began, predicted - read, built - predicted, done - built),
                strict=True,
            ):
                stages[stage] += seconds
        _finish(conn, started, stages)
    out.put(stages)


BASELINES = {"sklearn": _baseline_half, "compiled": _compiled_half}


def baseline(
    settings: Settings, tag: str, table: str, rows: int, kind: str = "sklearn"
) -> tuple[float, dict[str, float]]:
    """Rows/s of an in-process pipeline (``kind``: sklearn or compiled) in two processes, timed
    from when both are ready (imported, model loaded, connected), its time per row by stage
    (µs, both processes, wall) and CPU µs a row by group."""
    _truncate(settings)
    uri = make_url(settings.database_url).set(drivername="postgresql").render_as_string(False)
    context = multiprocessing.get_context("spawn")
    queue: Any = context.Queue()
    go = context.Event()
    half = rows // 2
    halves = [(1, half), (half + 1, rows)]
    processes = [
        context.Process(target=BASELINES[kind], args=(uri, tag, table, lo, hi, 50_000, queue, go))
        for lo, hi in halves
    ]
    for process in processes:
        process.start()
    for _ in processes:
        assert queue.get() == "ready"
    meter = CpuMeter(settings.database_url, {})
    began = time.perf_counter()
    go.set()
    stages = [queue.get() for _ in processes]
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - began
    cpu = meter.stop()
    # The pipeline's own processes and backends, as each counted itself before it ended.
    cpu["pipeline"] = sum(s.pop("cpu") for s in stages)
    cpu["postgres"] = sum(s.pop("cpu postgres") for s in stages)
    per_row = {k: 1e6 * sum(s[k] for s in stages) / rows for k in stages[0]}
    return rows / elapsed, per_row | {f"cpu {k}": 1e6 * v / rows for k, v in cpu.items()}


def _new_rows(rows: int) -> dict[str, str]:
    """Ways 1% of a scored table becomes new: rows appended after the last job (the usual way),
    or predictions missing here and there."""
    others = ", ".join(c for c in example_frame().columns if c != "id")
    return {
        "1% rows appended": (
            f"INSERT INTO bench_big SELECT id + {rows}, {others} FROM bench_big "
            f"WHERE id <= {rows // 100}"
        ),
        "1% of predictions deleted, scattered": (
            f"DELETE FROM predictions WHERE CAST(row_id AS bigint) % 100 = 0 "
            f"AND CAST(row_id AS bigint) <= {rows}"
        ),
    }


# --- scorebox jobs ---------------------------------------------------------------------------


PATHS = ("sklearn", "compiled", "scorebox")


def _headline(
    settings: Settings,
    base_env: dict[str, str],
    logs: Path,
    table: str,
    rows: int,
    rounds: int,
) -> dict[str, list[dict[str, Any]]]:
    """Both in-process pipelines and a scorebox job on the same table, alternating ``rounds``
    times: single runs on this shared machine move by a fifth from one to the next. The job
    runs as the scale table finds best on 2 cores: 2 worker processes, 1 service worker. Each
    run: rows/s and CPU µs a row by group (``cpu <group>``)."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in PATHS}
    env = base_env | {"SCOREBOX_SERVICE_WORKERS": "1"}
    with serving(env, logs / "service-headline.log") as url:
        env["SCOREBOX_SERVICE_URL"] = url
        scoring = settings.model_copy(
            update={"service_url": url, "redis_url": env["SCOREBOX_REDIS_URL"]}
        )
        with ServiceClient(url, None, 60) as client:
            served = client.describe()["tag"]
        for n in range(rounds):
            for kind in ("sklearn", "compiled"):
                rate, measured = baseline(settings, served, table, rows, kind)
                runs[kind].append({"rows/s": rate} | measured)
                print(f"round {n + 1} {table} {kind}: {rate:,.0f} rows/s {measured}", flush=True)
            rate, _, _, cpu = job(scoring, env, table, logs, concurrency=2)
            measured = {f"cpu {k}": 1e6 * v / rows for k, v in cpu.items()}
            runs["scorebox"].append({"rows/s": rate} | measured)
            print(f"round {n + 1} {table} scorebox: {rate:,.0f} rows/s {measured}", flush=True)
    return runs


def _ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Medians of the per-round ratios of the job's rows/s to each pipeline's."""
    return {
        kind: float(
            np.median(
                [
                    ours["rows/s"] / theirs["rows/s"]
                    for ours, theirs in zip(runs["scorebox"], runs[kind], strict=True)
                ]
            )
        )
        for kind in ("sklearn", "compiled")
    }


def _report(title: str, rows: int, runs: dict[str, list[dict[str, Any]]]) -> None:
    """The headline's rows/s, ratios and CPU µs a row by group (medians over rounds)."""
    ratios = _ratios(runs)
    print(f"\n{title}: {rows:,} rows, {len(runs['scorebox'])} alternating rounds")
    for kind in PATHS:
        rates = [r["rows/s"] for r in runs[kind]]
        listed = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"  {kind:<9} rows/s: {listed} (median {np.median(rates):,.0f})")
    print(
        f"  scorebox / scikit-learn pipeline {ratios['sklearn']:.2f}x, scorebox / compiled "
        f"pipeline {ratios['compiled']:.2f}x (medians of per-round ratios; goal >= 1.5x compiled)"
    )
    print("  CPU us a row, median over rounds (wall = elapsed us a row; machine = all cores busy):")
    for kind in PATHS:
        keys = [k for k in runs[kind][0] if k.startswith("cpu ")]
        print(
            f"  {kind:<9} "
            + ", ".join(f"{k[4:]} {np.median([r[k] for r in runs[kind]]):.2f}" for k in keys)
        )


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def stage_costs(
    settings: Settings, base_env: dict[str, str], logs: Path, table: str, chunks: int
) -> dict[str, dict[str, float]]:
    """CPU µs a row of each stage of a chunk, by where it is spent (this process doing the
    worker's work, the service's processes, this worker's PostgreSQL backend): ``chunks``
    chunks of a job run one after another here, as a worker process runs them, against a
    service of one worker. The hop is split into the worker's Arrow IPC encoding, the HTTP
    exchange (the service's whole work) and the decoding of the answer."""
    from dataclasses import replace

    import bentoml
    from threadpoolctl import threadpool_limits

    from scorebox.compiled import ONNX_ARTIFACT, CompiledModel, Scoring
    from service.arrow import read_table, write_table
    from worker.chunks import chunk_profile, claim
    from worker.client import ARROW_MEDIA_TYPE
    from worker.store import make_store, predictions_of

    _truncate(settings)
    costs: dict[str, dict[str, float]] = {}

    def add(stage: str, where: str, seconds: float) -> None:
        costs.setdefault(stage, {}).setdefault(where, 0.0)
        costs[stage][where] += seconds

    env = base_env | {"SCOREBOX_SERVICE_WORKERS": "1"}
    with serving(env, logs / "service-stages.log") as url, threadpool_limits(1):
        scoring = settings.model_copy(update={"service_url": url})
        engine = make_engine(settings.database_url, application_name="bench-stages")
        tables = Tables.build(settings.predictions_table)
        store = make_store(engine, tables, "bench-stages-store")
        client = ServiceClient(url, None, 60)
        queued: list[int] = []
        job_id = submit_job(engine, scoring, client, lambda _, n, __: queued.append(n), table=table)
        service = _tree(_service_pid(url))
        connection = store._connect()  # type: ignore[attr-defined]
        with connection.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backend = [psutil.Process(cur.fetchone()[0])]
        connection.commit()
        model = bentoml.models.get(client.describe()["tag"])
        metadata = dict(model.info.metadata)
        compiled = CompiledModel(
            Path(model.path, ONNX_ARTIFACT).read_bytes(), Scoring.from_dict(metadata["scoring"])
        )
        names = [f["name"] for f in metadata["features"]]
        rows = 0
        for n in queued[:chunks]:
            mine = time.process_time()
            leased = claim(engine, tables, job_id, n, 600)
            assert leased is not None
            then, mine = mine, time.process_time()
            add("claim", "worker", mine - then)
            pg = _cpu(backend)
            read = store.read(leased.job, leased.id_lo, leased.id_hi)
            then, mine = mine, time.process_time()
            then_pg, pg = pg, _cpu(backend)
            add("read", "worker", mine - then)
            add("read", "postgres", pg - then_pg)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, read.table.schema) as writer:
                writer.write_table(read.table)
            body = sink.getvalue().to_pybytes()
            then, mine = mine, time.process_time()
            add("hop: Arrow IPC out", "worker", mine - then)
            served = _cpu(service)
            response = client._request(  # the request ServiceClient.score sends
                "POST",
                "/v1/predict/arrow",
                content=body,
                headers={
                    "content-type": ARROW_MEDIA_TYPE,
                    "x-scorebox-model": leased.job["model_tag"],
                },
            )
            then, mine = mine, time.process_time()
            then_served, served = served, _cpu(service)
            add("hop: HTTP, service", "worker", mine - then)
            add("hop: HTTP, service", "service", served - then_served)
            result = pa.ipc.open_stream(response.content).read_all()
            then, mine = mine, time.process_time()
            add("hop: Arrow IPC in", "worker", mine - then)
            scored = predictions_of(read.keys, result)
            then, mine = mine, time.process_time()
            add("predictions (JSON text, key order)", "worker", mine - then)
            profile = chunk_profile(leased.job.get("reference"), read.table, result)
            then, mine = mine, time.process_time()
            add("drift counts", "worker", mine - then)
            pg = _cpu(backend)
            assert store.write(leased.lease, replace(scored, profile=profile))
            then, mine = mine, time.process_time()
            then_pg, pg = pg, _cpu(backend)
            add("write", "worker", mine - then)
            add("write", "postgres", pg - then_pg)
            rows += read.table.num_rows
            # What the service does with the chunk, run here: of "hop: HTTP, service".
            mine = time.process_time()
            table = read_table(body, 10**7)
            matrix = np.column_stack(
                [table.column(n).to_numpy().astype(np.float64, copy=False) for n in names]
            )
            then, mine = mine, time.process_time()
            add("  of which: IPC in, the matrix (here)", "", mine - then)
            compiled.predict_proba(matrix)
            then, mine = mine, time.process_time()
            add("  of which: ONNX Runtime (here)", "", mine - then)
            write_table(result)
            then, mine = mine, time.process_time()
            add("  of which: IPC out (here)", "", mine - then)
        cancel_job(engine, scoring, job_id)
        store.close()
        client.close()
        engine.dispose()
    return {
        stage: {where: 1e6 * seconds / rows for where, seconds in spent.items()}
        for stage, spent in costs.items()
    }


def _report_stages(costs: dict[str, dict[str, float]], chunks: int) -> None:
    print(f"\nCPU us a row by stage, {chunks} chunks run one after another in one process:")
    print(f"  {'stage':<38} {'worker':>7} {'service':>8} {'postgres':>9}")
    totals = dict.fromkeys(("worker", "service", "postgres"), 0.0)
    for stage, spent in costs.items():
        if "" in spent:  # measured here, part of the service's figure above
            print(f"  {stage:<38} {'':>7} {spent['']:>8.2f}")
            continue
        cells = [spent.get(k) for k in totals]
        for k, v in zip(totals, cells, strict=True):
            totals[k] += v or 0.0
        shown = " ".join(
            f"{'' if v is None else f'{v:.2f}':>{w}}" for v, w in zip(cells, (7, 8, 9), strict=True)
        )
        print(f"  {stage:<38} {shown}")
    print(
        f"  {'total':<38} {totals['worker']:>7.2f} {totals['service']:>8.2f} "
        f"{totals['postgres']:>9.2f}  = {sum(totals.values()):.2f}"
    )


def real_table(
    settings: Settings, base_env: dict[str, str], logs: Path, rows: int, concurrency: int
) -> float:
    """Rows/s of a job over the penguins example (text ids, categories, a date, a timestamp,
    a boolean, NULLs), with a model trained on it."""
    from training import train

    real = settings.model_copy(
        update={
            "model_name": "bench-penguins",
            "feature_table": "bench_penguins",
            "target_column": "Species",
            "id_column": "Penguin ID",
        }
    )
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text('DROP TABLE IF EXISTS "bench_penguins"'))
        seed(
            conn,
            "bench_penguins",
            id_column="Penguin ID",
            target_column="Species",
            rows=rows,
            example="penguins",
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text('VACUUM ANALYZE "bench_penguins"'))
    engine.dispose()
    train(real, make_engine(settings.database_url))
    env = base_env | {
        "SCOREBOX_MODEL_NAME": real.model_name,
        "SCOREBOX_ID_COLUMN": real.id_column,
        "SCOREBOX_SERVICE_WORKERS": "2",
    }
    with serving(env, logs / "service-penguins.log") as url:
        env["SCOREBOX_SERVICE_URL"] = url
        scoring = real.model_copy(
            update={"service_url": url, "redis_url": env["SCOREBOX_REDIS_URL"]}
        )
        rate, *_ = job(scoring, env, "bench_penguins", logs, concurrency=concurrency)
    return rate


def _wait(engine: Any, settings: Settings, job_id: int) -> None:
    """Until the job ends, asking for its status alone every 50 ms (get_job reads the whole row,
    the training profile included, and builds the tables' metadata: a fifth of a core when
    polled this often)."""
    jobs = Tables.build(settings.predictions_table).jobs
    query = select(jobs.c.status).where(jobs.c.id == job_id)
    with engine.connect() as conn:
        while conn.execute(query).scalar() in ("queued", "running"):
            conn.rollback()
            time.sleep(0.05)


def job(
    settings: Settings,
    env: dict[str, str],
    table: str,
    logs: Path,
    *,
    concurrency: int,
    mode: str = "all",
    truncate: bool = True,
) -> tuple[float, int, dict[str, Any], dict[str, float]]:
    """Rows/s of a scorebox job over ``table``, the worker's peak RSS, the job, and the CPU
    seconds of each group of processes while it ran (see CpuMeter)."""
    if truncate:
        _truncate(settings)
    engine = make_engine(settings.database_url, application_name="bench-poll")
    app = make_app(settings)
    client = ServiceClient(settings.service_url, None, 60)
    service = _service_pid(settings.service_url)
    # A log of its own: `working` waits for " ready." in the log, which an earlier worker's
    # lines in the same file would say at once (the job was timed from the worker's start).
    log = logs / f"worker-{table}.log"
    log.unlink(missing_ok=True)
    with working(env, log, concurrency=concurrency) as process:
        rss = PeakRss(process.pid)
        meter = CpuMeter(
            settings.database_url,
            {"worker": lambda: _tree(process.pid), "service": lambda: _tree(service)},
        )
        began = time.perf_counter()
        job_id = submit_job(engine, settings, client, chunk_sender(app), table=table, mode=mode)
        _wait(engine, settings, job_id)
        elapsed = time.perf_counter() - began
        cpu = meter.stop()
        peak = rss.stop()
    found = get_job(engine, settings, job_id)
    assert found["status"] == "succeeded", found
    with engine.connect() as conn:
        tables = Tables.build(settings.predictions_table)
        count, distinct = ledger.written(conn, tables, found["table_name"], found["model_tag"])
    if mode == "all":
        assert count == distinct == found["rows_total"] == found["rows_scored"], (count, found)
    client.close()
    app.close()
    engine.dispose()
    return found["rows_scored"] / elapsed, peak, found, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=100_000)
    parser.add_argument("--large-rows", type=int, default=10_000_000)
    parser.add_argument("--chunk-size", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=4, help="worker processes")
    parser.add_argument("--rounds", type=int, default=3, help="alternating headline runs")
    parser.add_argument(
        "--real-rows", type=int, default=300_000, help="penguins rows (0: skip the real table)"
    )
    parser.add_argument(
        "--large-rounds", type=int, default=1, help="alternating headline runs at --large-rows"
    )
    parser.add_argument(
        "--headline-only",
        action="store_true",
        help="only the alternating headline runs (at --rows, and at --large-rows if not 0)",
    )
    parser.add_argument(
        "--stages", type=int, default=0, help="chunks to cost stage by stage (0: none)"
    )
    args = parser.parse_args()

    settings, tag = prepare()
    settings = settings.model_copy(update={"chunk_size": args.chunk_size})
    for name, rows in (("bench_big", args.rows), ("bench_small", args.small_rows)):
        _seed(settings, name, rows)
    if args.large_rows:
        _seed(settings, "bench_large", args.large_rows)
    logs = Path(os.environ["BENTOML_HOME"])
    base_env = child_env() | {
        "SCOREBOX_DATABASE_URL": settings.database_url,
        "SCOREBOX_MODEL_NAME": settings.model_name,
        "SCOREBOX_REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
        "SCOREBOX_CHUNK_SIZE": str(args.chunk_size),
    }
    if args.stages:
        _report_stages(stage_costs(settings, base_env, logs, "bench_big", args.stages), args.stages)
    if args.rounds == 0:
        return
    headline = _headline(settings, base_env, logs, "bench_big", args.rows, args.rounds)
    _report("headline", args.rows, headline)
    if args.large_rows and args.large_rounds:
        large = _headline(
            settings, base_env, logs, "bench_large", args.large_rows, args.large_rounds
        )
        _report("headline", args.rows, headline)
        _report("large", args.large_rows, large)
    if args.headline_only:
        return
    limit, stages = baseline(settings, tag, "bench_big", args.rows)
    # On the large table too: a run of a few seconds is partly start-up, for both.
    limit_large = (
        baseline(settings, tag, "bench_large", args.large_rows)[0] if args.large_rows else 0
    )

    results: dict[str, Any] = {}
    scale: dict[tuple[int, int], float] = {}
    for service_workers in (2, 1):
        env = base_env | {"SCOREBOX_SERVICE_WORKERS": str(service_workers)}
        with serving(env, logs / f"service-{service_workers}.log") as url:
            env["SCOREBOX_SERVICE_URL"] = url
            scoring = settings.model_copy(
                update={"service_url": url, "redis_url": env["SCOREBOX_REDIS_URL"]}
            )
            for processes in (args.concurrency, 2, 1) if service_workers == 2 else (2, 1):
                rate, *_ = job(scoring, env, "bench_big", logs, concurrency=processes)
                scale[(processes, service_workers)] = rate
            if service_workers != 2:
                continue
            results["big"] = scale[(args.concurrency, 2)]
            # --mode new where 1% of the rows are new (the full run's predictions are there).
            full = args.rows / results["big"]
            results["new"] = {}
            for case, statement in _new_rows(args.rows).items():
                with make_engine(settings.database_url).begin() as conn:
                    conn.execute(text(statement))
                rate, _, found, _ = job(
                    scoring,
                    env,
                    "bench_big",
                    logs,
                    concurrency=args.concurrency,
                    mode="new",
                    truncate=False,
                )
                results["new"][case] = (found["rows_total"], found["rows_total"] / rate, full)
            with make_engine(settings.database_url).begin() as conn:  # back to its size
                conn.execute(text(f"DELETE FROM bench_big WHERE id > {args.rows}"))
            _, results["small_rss"], *_ = job(
                scoring, env, "bench_small", logs, concurrency=args.concurrency
            )
            if args.large_rows:
                results["large"], results["large_rss"], *_ = job(
                    scoring, env, "bench_large", logs, concurrency=args.concurrency
                )

    if args.real_rows:
        results["real"] = real_table(settings, base_env, logs, args.real_rows, args.concurrency)

    print(f"\nbatch benchmark: {args.rows:,} rows, chunks of {args.chunk_size:,}")
    _report("headline", args.rows, headline)
    print(f"{'path':<58} {'rows/s':>10}")
    print(f"{'in-process pipeline, 2 processes (ADBC, predict, JSON, upsert)':<58} {limit:>10,.0f}")
    print(
        f"{f'scorebox job, {args.concurrency} worker processes, 2 service workers':<58} "
        f"{results['big']:>10,.0f}"
    )
    print(f"scorebox / in-process pipeline: {results['big'] / limit:.2f}x (target >= 1.3x)")
    if args.real_rows:
        label = f"scorebox job, penguins ({args.real_rows:,} rows, text ids, categories)"
        print(f"{label:<58} {results['real']:>10,.0f}")
    print("\nin-process pipeline, time per row by stage (both processes):")
    print("  " + ", ".join(f"{k} {v:.2f} us" for k, v in stages.items()))
    for case, (new_rows, new_seconds, full_seconds) in results["new"].items():
        print(
            f"\n--mode new, {case}: {new_rows:,} rows, {new_seconds:.2f} s, "
            f"{new_seconds / full_seconds:.1%} of a full run ({full_seconds:.2f} s)"
        )
    print("\nscale (rows/s):")
    print(f"{'worker processes':>17} {'service workers':>16} {'rows/s':>10}")
    for (processes, service_workers), rate in sorted(scale.items()):
        print(f"{processes:>17} {service_workers:>16} {rate:>10,.0f}")
    small = results["small_rss"] / MiB
    line = f"\nworker process peak RSS: {small:,.0f} MiB at {args.small_rows:,} rows"
    if args.large_rows:
        large = results["large_rss"] / MiB
        line += f", {large:,.0f} MiB at {args.large_rows:,} rows ({large / small:.2f}x); "
        line += f"{args.large_rows:,} rows at {results['large']:,.0f} rows/s"
    print(line)
    if args.large_rows:
        print(
            f"\n{args.large_rows:,} rows: in-process pipeline {limit_large:,.0f} rows/s, scorebox "
            f"job {results['large']:,.0f} rows/s: {results['large'] / limit_large:.2f}x "
            "(target >= 1.3x)"
        )


if __name__ == "__main__":
    main()
