"""Online serving benchmark: single-record `POST /predict` with wrk at 1 and 32 connections,
against the floors measured in the same run (bench/floors.py: a BentoML `@bentoml.api` returning
a constant, a Starlette route mounted in BentoML returning a constant, a bare uvicorn app), a
plain BentoML service over the same model as BentoML's docs write it, and the model's own
predict on one row in-process (scikit-learn, and the compiled model); and scorebox with every
request written to the prediction log (SCOREBOX_LOG_PREDICTIONS=1.0), for what logging costs.

    python bench/online.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bentoml
import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
from _common import ROOT, Wrk, median_ms, prepare, wrk
from threadpoolctl import threadpool_limits

from scorebox.compiled import ONNX_ARTIFACT, CompiledModel, Scoring
from scorebox.seed import example_frame
from scorebox_cli.processes import child_env, free_port, serving, stop


@contextmanager
def _uvicorn(log: Path) -> Iterator[str]:
    """The bare ASGI floor under plain uvicorn with httptools (`pip install -e '.[bench]'`), two
    worker processes. (With h11, uvicorn writes the head and the body in two segments and
    Nagle's algorithm meets delayed ACKs: 44 ms a request, measured here.)"""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "bench.floors:bare", "--port", str(port)),
                *("--workers", "2", "--log-level", "warning", "--http", "httptools"),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.post(url, content=b"{}")
            break
        except httpx.TransportError:
            time.sleep(0.2)
    try:
        yield url
    finally:
        stop(process)


def _batch_formats(url: str, frame: pd.DataFrame, names: list[str]) -> dict[str, float]:
    """Rows/s for 1000-row batches sent as JSON records and as an Arrow stream."""
    batch = frame[names].sample(1000, replace=True, random_state=0).reset_index(drop=True)
    as_json = json.dumps({"records": batch.to_dict("records")}).encode()
    table = pa.Table.from_pandas(batch, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    as_arrow = sink.getvalue().to_pybytes()
    rates = {}
    with httpx.Client(timeout=60) as client:
        for fmt, path, body, kind in [
            ("JSON records (/predict)", "/predict", as_json, "application/json"),
            (
                "Arrow (/v1/predict/arrow)",
                "/v1/predict/arrow",
                as_arrow,
                "application/octet-stream",
            ),
        ]:
            headers = {"content-type": kind}
            client.post(url + path, content=body, headers=headers).raise_for_status()
            began = time.perf_counter()
            for _ in range(20):
                client.post(url + path, content=body, headers=headers).raise_for_status()
            rates[fmt] = 20 * len(batch) / (time.perf_counter() - began)
    return rates


def _in_process(tag: str, rows: np.ndarray, names: list[str]) -> dict[str, float]:
    """p50 of the model's own predict_proba on one row: scikit-learn (a DataFrame in, as a user
    would call it) and the compiled model (the encoded row in)."""
    model = bentoml.models.get(tag)
    pipeline = bentoml.sklearn.load_model(tag)
    scoring = Scoring.from_dict(dict(model.info.metadata)["scoring"])
    compiled = CompiledModel(Path(model.path, ONNX_ARTIFACT).read_bytes(), scoring)
    timings: dict[str, list[float]] = {"scikit-learn": [], "compiled (ONNX Runtime)": []}
    with threadpool_limits(1):
        for i in range(2000):
            one = pd.DataFrame(rows[i % len(rows)][None, :], columns=names)
            start = time.perf_counter()
            pipeline.predict_proba(one)
            timings["scikit-learn"].append(time.perf_counter() - start)
            start = time.perf_counter()
            compiled.predict_proba(rows[i % len(rows)][None, :])
            timings["compiled (ONNX Runtime)"].append(time.perf_counter() - start)
    return {name: median_ms(t[200:]) for name, t in timings.items()}


def _log_cost(
    env: dict[str, str], logs: Path, record: bytes, seconds: float, rounds: int = 3
) -> dict[str, list[float]]:
    """req/s at 32 connections without and with every request logged
    (SCOREBOX_LOG_PREDICTIONS=1.0), alternating, on one service process (two would split the
    connections unevenly from run to run, which moves req/s more than logging does)."""
    runs: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for key, rate in (("off", "0"), ("on", "1.0")):
            extra = {"SCOREBOX_LOG_PREDICTIONS": rate, "SCOREBOX_SERVICE_WORKERS": "1"}
            with serving(env | extra, logs / f"log-{key}.log") as url:
                wrk(url + "/predict", record, 4, 2)
                runs[key].append(round(wrk(url + "/predict", record, 32, seconds).rps))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    settings, tag = prepare()
    frame = example_frame()
    names = [c for c in frame.columns if c not in ("id", "target")]
    rows = frame[names].to_numpy()
    in_process = _in_process(tag, rows, names)

    env = child_env() | {
        "SCOREBOX_DATABASE_URL": settings.database_url,
        "SCOREBOX_MODEL_NAME": settings.model_name,
        "BENCH_MODEL_TAG": tag,
    }
    record = json.dumps({"records": [dict(zip(names, rows[0].tolist(), strict=True))]}).encode()
    plain = json.dumps({"input": [rows[0].tolist()]}).encode()
    logs = Path(os.environ["BENTOML_HOME"])
    servers = [
        ("scorebox /predict", ".", record, {}),
        ("BentoML @bentoml.api, constant", "bench.floors:ApiConstant", record, {}),
        ("Starlette route in BentoML, constant", "bench.floors:MountedConstant", record, {}),
        ("plain BentoML over the model", "bench.plain_service:Plain", plain, {}),
        ("bare uvicorn (httptools), constant", None, record, {}),
    ]
    results: dict[str, dict[int, Wrk]] = {}
    batch_rates: dict[str, float] = {}
    for name, target, body, extra in servers:
        context = (
            _uvicorn(logs / "uvicorn.log")
            if target is None
            else serving(env | extra, logs / f"{name.split()[0]}.log", target=target)
        )
        with context as url:
            wrk(url + "/predict", body, 4, 2)  # warm up
            results[name] = {c: wrk(url + "/predict", body, c, args.seconds) for c in (1, 32)}
            if target == ".":
                batch_rates = _batch_formats(url, frame, names)

    log_cost = _log_cost(env, logs, record, args.seconds)

    print(f"\nonline benchmark: wrk, {args.seconds:.0f} s a run, 2 server processes each")
    for name, p50 in in_process.items():
        print(f"in-process predict_proba, one row, {name}: p50 {p50:.3f} ms")
    print(f"\n{'server':<38} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
    for name, runs in results.items():
        for connections, run in runs.items():
            print(
                f"{name:<38} {connections:>5} {run.rps:>8.0f} {run.p50_ms:>7.2f} "
                f"{run.p99_ms:>7.2f} {run.errors:>6}"
            )
    print("\n1000-record batches, one client, scorebox:")
    for fmt, rate in batch_rates.items():
        print(f"  {fmt:<28} {rate:>9,.0f} rows/s")
    ours = results["scorebox /predict"]
    api = results["BentoML @bentoml.api, constant"]
    print(f"\nscorebox p50 at 1 connection: {ours[1].p50_ms:.2f} ms (target <= 1.0 ms)")
    print(f"scorebox req/s at 32 connections: {ours[32].rps:,.0f} (target >= 3000, 0 errors)")
    off, on = (float(np.median(log_cost[k])) for k in ("off", "on"))
    print(
        f"prediction log at 1.0, one service process, 32 connections, median of "
        f"{len(log_cost['off'])} alternating runs: {off:,.0f} req/s without, {on:,.0f} with: "
        f"{1 - on / off:.1%} fewer (target < 10%); runs: {log_cost}"
    )
    print(
        f"scorebox / BentoML @bentoml.api constant: {ours[32].rps / api[32].rps:.2f}x req/s "
        f"at 32, {ours[1].p50_ms / api[1].p50_ms:.2f}x p50 at 1"
    )


if __name__ == "__main__":
    main()
