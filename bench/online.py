"""Online serving benchmark: single-row requests at 1 and 32 concurrent clients against the scorebox
service, a plain BentoML service over the same model, and the model's own predict in-process.

    python bench/online.py [--seconds 10] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bentoml
import httpx
import pandas as pd
import pyarrow as pa
from _common import Load, load, median_ms, prepare
from threadpoolctl import threadpool_limits

from scorebox.processes import serving
from scorebox.seed import example_frame


@contextmanager
def _server(target: str, env: dict[str, str], log: Path) -> Iterator[str]:
    with serving(env, log, target=target) as url:
        yield url


def _batch_formats(url: str, frame: pd.DataFrame, names: list[str]) -> dict[str, float]:
    """Rows/s for 1000-row batches sent as JSON records and as an Arrow stream."""
    batch = frame.sample(1000, replace=True, random_state=0).reset_index(drop=True)
    as_json = json.dumps({"records": batch[names].to_dict("records")}).encode()
    table = pa.Table.from_pandas(batch[names], preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    as_arrow = sink.getvalue().to_pybytes()
    rates = {}
    with httpx.Client(timeout=60) as client:
        for fmt, path, body in [
            ("JSON records (/predict)", "/predict", as_json),
            ("Arrow (/v1/predict/arrow)", "/v1/predict/arrow", as_arrow),
        ]:
            client.post(url + path, content=body).raise_for_status()
            began = time.perf_counter()
            for _ in range(20):
                client.post(
                    url + path, content=body, headers={"content-type": "application/json"}
                ).raise_for_status()
            rates[fmt] = 20 * len(batch) / (time.perf_counter() - began)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", default="cpu_count", help="scorebox service processes")
    args = parser.parse_args()

    settings, tag = prepare()
    frame = example_frame()
    names = [c for c in frame.columns if c not in ("id", "target")]
    rows = frame[names].to_numpy()

    # (b) in-process: the model's own predict_proba on one row, one thread.
    pipeline = bentoml.sklearn.load_model(tag)
    with threadpool_limits(1):
        timings = []
        for i in range(2000):
            one = pd.DataFrame(rows[i % len(rows)][None, :], columns=names)
            start = time.perf_counter()
            pipeline.predict_proba(one)
            timings.append(time.perf_counter() - start)
    in_process = median_ms(timings[200:])

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOX_")} | {
        "SCOREBOX_DATABASE_URL": settings.database_url,
        "SCOREBOX_MODEL_NAME": settings.model_name,
        "SCOREBOX_SERVICE_WORKERS": str(args.workers),
        "BENCH_MODEL_TAG": tag,
    }
    ours = [
        json.dumps({"records": [dict(zip(names, r, strict=False))]}).encode() for r in rows.tolist()
    ]
    plain = [json.dumps({"input": [r]}).encode() for r in rows.tolist()]
    logs = Path(os.environ["BENTOML_HOME"])
    results: dict[str, dict[int, Load]] = {}
    for name, target, bodies, path in [
        ("scorebox", ".", ours, "/predict"),
        ("plain BentoML", "bench.plain_service:Plain", plain, "/predict"),
    ]:
        with _server(target, env, logs / f"{name}.log") as url:
            load(url + path, bodies, 4, 2)  # warm up
            results[name] = {c: load(url + path, bodies, c, args.seconds) for c in (1, 32)}
            if name == "scorebox":
                batch_rates = _batch_formats(url, frame, names)

    print(f"\nonline benchmark: {args.seconds:.0f} s a run, scorebox workers={args.workers}")
    print(f"in-process predict_proba, one row: p50 {in_process:.2f} ms\n")
    print(f"{'server':<15} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, runs in results.items():
        for clients, run in runs.items():
            print(
                f"{name:<15} {clients:>7} {run.rps:>8.0f} {run.percentile(0.5):>8.2f} "
                f"{run.percentile(0.99):>8.2f} {run.errors:>7}"
            )
    print("\n1000-row batches, one client, scorebox:")
    for fmt, rate in batch_rates.items():
        print(f"  {fmt:<28} {rate:>9,.0f} rows/s")
    ours32, plain32 = results["scorebox"][32], results["plain BentoML"][32]
    ours1 = results["scorebox"][1]
    print(f"\nscorebox / plain req/s at 32 clients: {ours32.rps / max(plain32.rps, 1e-9):.2f}x")
    print(
        f"scorebox p50 at 1 client: {ours1.percentile(0.5):.2f} ms = "
        f"{ours1.percentile(0.5) / (in_process + 1):.2f}x (in-process p50 + 1 ms)"
    )


if __name__ == "__main__":
    main()
