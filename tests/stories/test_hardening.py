"""Attacks on the service, sent to a real `bentoml serve` running under a memory cap: each gets
a 4xx naming the problem, quickly, and costs the worker little memory (its peak RSS is reset
before each request and read after it)."""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pytest

from scorebox_cli.processes import serving
from tests.conftest import TrainedModel, process_env, service_worker_pid

MiB = 2**20
# What one hostile request may add to a worker's peak resident memory.
MAX_GROWTH = 50 * MiB


@dataclass(frozen=True)
class Service:
    url: str
    port: int
    worker: int  # the pid of its only worker process


@pytest.fixture(scope="module")
def service(trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The example model served by one worker, capped at 3 GiB of address space, with short
    deadlines for request heads (2 s) and bodies (3 s)."""
    env = process_env(
        trained.settings,
        SCOREBOX_SERVICE_WORKERS="1",
        SCOREBOX_SERVICE_HEADER_TIMEOUT="2",
        SCOREBOX_SERVICE_BODY_TIMEOUT="3",
    )
    log = tmp_path_factory.mktemp("hardening") / "serve.log"
    with serving(env, log, memory_limit=3 * 2**30) as url:
        port = int(url.rsplit(":", 1)[1])
        yield Service(url, port, service_worker_pid(port))


def _memory(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def _peak_growth(pid: int, attack: Callable[[], None]) -> int:
    """How far ``attack`` pushed the process's peak resident memory above where it was."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _memory(pid, "VmRSS")
    attack()
    return _memory(pid, "VmHWM") - before


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, return everything the service answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return received


def _arrow(table: pa.Table, compression: str | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _features(trained: TrainedModel, rows: int) -> pa.Table:
    return pa.table({name: np.zeros(rows) for name in trained.info.feature_names})


def _attacks(
    trained: TrainedModel, port: int
) -> list[tuple[str, Callable[[], httpx.Response | bytes], int, str]]:
    record = {name: 1.0 for name in trained.info.feature_names}

    def post(
        path: str, body: bytes, kind: str = "application/json"
    ) -> Callable[[], httpx.Response]:
        return lambda: httpx.post(
            f"http://127.0.0.1:{port}{path}",
            content=body,
            headers={"content-type": kind},
            timeout=60,
        )

    def records(items: object) -> bytes:
        return json.dumps({"records": items}).encode()

    smuggled = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"100000\r\n"
        + b"x" * 0x100000
        + b"\r\n0\r\n\r\n"
    )
    arrow_kind = "application/vnd.apache.arrow.stream"
    duplicated = pa.Table.from_arrays(
        [pa.array([1.0]), pa.array([1.0])], names=["mean_radius", "mean_radius"]
    )
    return [
        ("40,000 empty records", post("/predict", records([{}] * 40_000)), 413, "limit is 10000"),
        ("100,000 empty records", post("/predict", records([{}] * 100_000)), 413, "limit is 10000"),
        (
            "a record with 200,000 fields",
            post("/predict", records([{f"f{i}": 1 for i in range(200_000)}])),
            422,
            "(and 200010 more)",
        ),
        (
            "10,000 records, every value wrong",
            post("/predict", records([{k: "x" for k in record}] * 10_000)),
            422,
            "(and 299980 more)",
        ),
        ("9,000 empty records", post("/predict", records([{}] * 9_000)), 422, "(and 269980 more)"),
        (
            "deeply nested JSON",
            post("/predict", b'{"records": ' + b"[" * 500_000),
            400,
            "malformed JSON",
        ),
        (
            "Content-Length with Transfer-Encoding",
            lambda: _raw(port, smuggled),
            400,
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "zstd Arrow of 2.5M rows",
            post("/v1/predict/arrow", _arrow(_features(trained, 2_500_000), "zstd"), arrow_kind),
            422,
            "compressed Arrow IPC is not accepted",
        ),
        (
            "lz4 Arrow",
            post("/v1/predict/arrow", _arrow(_features(trained, 1000), "lz4"), arrow_kind),
            422,
            "compressed",
        ),
        (
            "Arrow of 3M null rows",
            post(
                "/v1/predict/arrow",
                _arrow(pa.table({n: pa.nulls(3_000_000) for n in trained.info.feature_names})),
                arrow_kind,
            ),
            413,
            "SCOREBOX_SERVICE_MAX_ROWS",
        ),
        (
            "Arrow with a duplicated column",
            post("/v1/predict/arrow", _arrow(duplicated), arrow_kind),
            422,
            "'mean_radius' appears 2 times",
        ),
    ]


def test_hostile_requests_get_a_4xx_quickly_and_cost_little_memory(
    service: Service, trained: TrainedModel
) -> None:
    record = {name: 1.0 for name in trained.info.feature_names}
    for _ in range(20):  # warm up: the first requests load code and caches
        httpx.post(f"{service.url}/predict", json={"records": [record] * 100}).raise_for_status()
    results = []
    for name, attack, status, message in _attacks(trained, service.port):
        answer: list[httpx.Response | bytes] = []
        started = time.monotonic()
        growth = _peak_growth(service.worker, lambda: answer.append(attack()))  # noqa: B023
        took = time.monotonic() - started
        got = answer[0]
        text = (
            got.decode(errors="replace")
            if isinstance(got, bytes)
            else f"HTTP/1.1 {got.status_code} {got.text}"
        )
        results.append((name, text[:12], took, growth / MiB))
        assert text.startswith(f"HTTP/1.1 {status}"), (name, text[:300])
        assert message in text, (name, text[:600])
        assert took < 5, (name, took)
        assert growth < MAX_GROWTH, (name, growth / MiB)
    assert httpx.get(f"{service.url}/readyz").status_code == 200
    print("\n".join(f"{n}: {s} in {t:.2f} s, peak +{g:.1f} MiB" for n, s, t, g in results))


def test_mangled_arrow_streams_are_never_a_5xx(service: Service, trained: TrainedModel) -> None:
    good = _arrow(pa.table({n: np.linspace(0, 1, 50) for n in trained.info.feature_names}))
    rng = random.Random(11)
    statuses: dict[int, int] = {}
    for i in range(300):
        body = bytearray(good)
        if i % 3 == 0:
            body = body[: rng.randrange(len(body))]
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        response = httpx.post(f"{service.url}/v1/predict/arrow", content=bytes(body))
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (i, response.text)
    assert set(statuses) <= {200, 413, 422}
    assert httpx.get(f"{service.url}/readyz").status_code == 200


def test_slow_clients_are_cut_off(service: Service) -> None:
    """Connections that never finish their request head, or trickle their body, are closed."""
    sockets = []
    for i in range(30):
        sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"")
        sockets.append(sock)
    started = time.monotonic()
    for sock in sockets:
        assert sock.recv(100) == b""  # closed by the service
    assert 1.5 < time.monotonic() - started < 6  # the head deadline is 2 s
    trickle = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    trickle.sendall(
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    answer = b""
    while chunk := trickle.recv(1000):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"not received within 3 s" in answer
    for sock in [*sockets, trickle]:
        sock.close()
    assert httpx.get(f"{service.url}/readyz").status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["score", "--table", "x; DROP TABLE y"],
            "table 'x; DROP TABLE y' (--table) does not exist",
        ),
        (["jobs", "show", "99999999999999999999"], "no job with id 99999999999999999999"),
    ],
)
def test_hostile_command_arguments_are_one_line(
    args: list[str], message: str, trained: TrainedModel, service: Service
) -> None:
    import subprocess
    import sys

    env = process_env(trained.settings, SCOREBOX_SERVICE_URL=service.url)
    done = subprocess.run(
        [sys.executable, "-m", "scorebox", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: {message}"] or message in done.stderr
    assert "Traceback" not in done.stderr


def _processes_of(port: int) -> list[int]:
    """Every live process of the `bentoml serve` on ``port`` (by its private BentoML home)."""
    import psutil

    found = []
    for process in psutil.process_iter(["environ", "status"]):
        home = (process.info["environ"] or {}).get("BENTOML_HOME", "")
        if home.endswith(f"bentoml-home-{port}") and process.info["status"] != "zombie":
            found.append(int(process.pid))
    return found


def test_no_worker_outlives_its_server(trained: TrainedModel, tmp_path: Path) -> None:
    """Killing `bentoml serve` with SIGKILL leaves no worker answering on its port, and the
    project's stop (SIGTERM) leaves no process at all."""
    import os
    import signal

    import psutil

    env = process_env(trained.settings)
    with serving(env, tmp_path / "serve.log") as url:
        port = int(url.rsplit(":", 1)[1])
        parent = next(
            p.pid
            for p in map(psutil.Process, _processes_of(port))
            if "serve" in p.cmdline()
            and "_bentoml_impl.worker.service" not in " ".join(p.cmdline())
        )
        assert len(_processes_of(port)) >= 2
        os.kill(parent, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while _processes_of(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_of(port) == []
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/readyz", timeout=2)
    with serving(env, tmp_path / "serve2.log", port=port) as url:
        assert httpx.get(f"{url}/readyz").status_code == 200  # the port is free again
    assert _processes_of(port) == []
