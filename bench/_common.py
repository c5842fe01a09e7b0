"""Shared by the benchmarks: a model to measure with, servers as processes, a load generator."""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="scorebox-bench-"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# The signing key training creates, and the keys the benches trust: this run's own.
os.environ.setdefault("XDG_CONFIG_HOME", tempfile.mkdtemp(prefix="scorebox-bench-config-"))

from scorebox.db import make_engine
from scorebox.migrate import create_database_if_missing, upgrade
from scorebox.seed import seed
from scorebox.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def prepare(rows: int | None = None) -> tuple[Settings, str]:
    """Seed the example table (or ``rows`` synthetic rows) and train; return settings and tag."""
    from training import train

    settings = load_settings(
        database_url=os.environ.get(
            "SCOREBOX_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/scorebox_bench"
        ),
        model_name="bench",
    )
    engine = make_engine(settings.database_url)
    create_database_if_missing(engine)
    upgrade(engine, settings.predictions_table)
    with engine.begin() as conn:
        seed(conn, settings.feature_table, id_column="id", target_column="target", rows=rows)
    tag = train(settings, engine).tag
    engine.dispose()
    return settings, tag


@dataclass
class Load:
    """What a fixed-duration load run saw."""

    clients: int
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _client(
    host: str, port: int, path: str, bodies: list[bytes], k: int, step: int, stop: float, out: Load
) -> None:
    """One keep-alive HTTP/1.1 connection posting bodies in turn. Hand-written on asyncio streams
    so the load generator spends little of the machine's two cores (httpx costs ~ms a request)."""
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    i = k
    try:
        while time.perf_counter() < stop:
            body = bodies[i % len(bodies)]
            i += step
            began = time.perf_counter()
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if status_line.split()[1:2] == [b"200"]:
                out.latencies.append(time.perf_counter() - began)
            else:
                out.errors += 1
            out.requests += 1
    except (ConnectionError, asyncio.IncompleteReadError):
        out.errors += 1
    finally:
        writer.close()


async def _load(url: str, bodies: list[bytes], clients: int, seconds: float) -> Load:
    parsed = urlsplit(url)
    out = Load(clients, 0, 0, 0.0, [])
    began = time.perf_counter()
    stop = began + seconds
    await asyncio.gather(
        *(
            _client(
                parsed.hostname or "", parsed.port or 80, parsed.path, bodies, k, clients, stop, out
            )
            for k in range(clients)
        )
    )
    out.seconds = time.perf_counter() - began
    return out


def load(url: str, bodies: list[bytes], clients: int, seconds: float) -> Load:
    """``clients`` concurrent connections posting ``bodies`` in turn for ``seconds``."""
    return asyncio.run(_load(url, bodies, clients, seconds))


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


@dataclass
class Wrk:
    """What one wrk run reported."""

    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def _ms(value: str) -> float:
    number = float(re.sub(r"[a-z]+$", "", value))
    unit = re.sub(r"^[0-9.]+", "", value)
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(
    url: str, body: bytes, connections: int, seconds: float, headers: dict[str, str] | None = None
) -> Wrk:
    """POST ``body`` to ``url`` from ``connections`` keep-alive connections for ``seconds`` with
    wrk (Debian's package): a load generator lean enough to leave the cores to the server."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
        lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items()]
        lines.append(f"wrk.body = {json.dumps(body.decode())}")
        script.write("\n".join(lines) + "\n")
    threads = min(2, connections)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "-s",
            script.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    # wrk pads a figure in seconds with a space ("1.04s ").
    latency = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)\s*$", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    return Wrk(connections, rps, _ms(latency["50"]), _ms(latency["99"]), requests, errors)
