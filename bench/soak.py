"""Memory soak: 32 clients against the scorebox service for ten minutes (single records, with a
1000-record batch every 20th request), resident memory sampled per process every 5 s. Writes the
curve to bench/results/soak.png and prints where each process started, levelled and ended.

    python bench/soak.py [--seconds 600]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib
import psutil
from _common import ROOT, load, prepare

from scorebox.seed import example_frame
from scorebox_cli.processes import child_env, serving

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MiB = 2**20
RESULTS = ROOT / "bench" / "results"


def _processes(port: int) -> dict[str, psutil.Process]:
    """The server's processes by role: the `bentoml serve` arbiter and each worker."""
    found: dict[str, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline", "environ"]):
        home = (process.info["environ"] or {}).get("BENTOML_HOME", "")
        if not home.endswith(f"bentoml-home-{port}"):
            continue
        cmdline = process.info["cmdline"] or []
        if "_bentoml_impl.worker.service" in " ".join(cmdline):
            found[f"worker {cmdline[cmdline.index('--worker-id') + 1]}"] = process
        else:
            found["arbiter"] = process
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--interval", type=float, default=5.0)
    args = parser.parse_args()

    settings, _ = prepare()
    frame = example_frame()
    names = [c for c in frame.columns if c not in ("id", "target")]
    records = frame[names].to_dict("records")
    batch = json.dumps(
        {"records": frame[names].sample(1000, replace=True, random_state=1).to_dict("records")}
    ).encode()
    bodies = [
        batch if i % 20 == 0 else json.dumps({"records": [records[i % len(records)]]}).encode()
        for i in range(len(records))
    ]
    env = child_env() | {
        "SCOREBOX_DATABASE_URL": settings.database_url,
        "SCOREBOX_MODEL_NAME": settings.model_name,
    }
    samples: dict[str, list[tuple[float, float]]] = {}
    with serving(env, Path(os.environ["BENTOML_HOME"]) / "soak.log") as url:
        processes = _processes(int(url.rsplit(":", 1)[1]))
        began = time.monotonic()
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                now = time.monotonic() - began
                for role, process in processes.items():
                    samples.setdefault(role, []).append((now, process.memory_info().rss / MiB))
                done.wait(args.interval)

        sampler = threading.Thread(target=sample)
        sampler.start()
        run = load(url + "/predict", bodies, 32, args.seconds)
        done.set()
        sampler.join()

    RESULTS.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for role, points in sorted(samples.items()):
        ax.plot([t / 60 for t, _ in points], [m for _, m in points], label=role)
    ax.set(
        title=f"scorebox service RSS, 32 clients, {run.requests:,} requests, {run.errors} errors",
        xlabel="minutes",
        ylabel="RSS (MiB)",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "soak.png", dpi=100)

    print(f"\nsoak: {args.seconds:.0f} s, {run.rps:,.0f} req/s, {run.errors} errors")
    print(f"{'process':<10} {'start':>8} {'at 20%':>8} {'end':>8} {'last half MiB/min':>18}")
    for role, points in sorted(samples.items()):
        start, end = points[0][1], points[-1][1]
        early = points[len(points) // 5][1]
        half = points[len(points) // 2 :]
        slope = (half[-1][1] - half[0][1]) / max((half[-1][0] - half[0][0]) / 60, 1e-9)
        print(f"{role:<10} {start:>8.0f} {early:>8.0f} {end:>8.0f} {slope:>18.2f}")
    print(f"curve: {RESULTS / 'soak.png'}")


if __name__ == "__main__":
    main()
