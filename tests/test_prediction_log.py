"""The prediction log against an attacker and over time, with real PostgreSQL and `bentoml serve`:
huge unseen category values from many clients cost a service worker bounded memory and are
logged cut; the buffer is bounded by bytes while the database is slow; rows past the retention
are deleted in batches while the service writes, by the service itself and by `scorebox log
prune`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text

from scorebox.db import asyncpg_arguments, make_engine
from scorebox.migrate import upgrade
from scorebox.modelinfo import ModelInfo
from scorebox.retention import prune
from scorebox.seed import seed
from scorebox.settings import Settings, load_settings
from scorebox_cli.processes import BIN, serving
from service.predlog import PredictionLog
from tests.conftest import new_schema, process_env, service_worker_pid

MiB = 2**20


@dataclass(frozen=True)
class Logged:
    """The penguins (categories, dates, booleans) in a schema of their own, a model trained on
    them, and a record to send."""

    settings: Settings
    engine: Engine
    tag: str
    info: ModelInfo

    @property
    def record(self) -> dict[str, Any]:
        return dict(self.info.example)


@pytest.fixture(scope="module")
def logged(database: str) -> Iterator[Logged]:
    from training import train

    _, url = new_schema(database, "plog")
    settings = load_settings(
        database_url=url,
        feature_table="penguins",
        target_column="species",
        model_name="logged",
    )
    engine = make_engine(settings.database_url)
    upgrade(engine, settings.predictions_table)
    with engine.begin() as conn:
        seed(conn, "penguins", id_column="id", target_column="species", example="penguins")
    result = train(settings, engine)
    yield Logged(settings, engine, result.tag, result.info)
    engine.dispose()


def _rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM scorebox_prediction_log")).scalar_one())


def _empty_log(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM scorebox_prediction_log"))


def _memory(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def _metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
def test_huge_unseen_values_from_many_clients_cost_bounded_memory_and_are_logged_cut(
    logged: Logged, tmp_path: Path
) -> None:
    """Eight clients send records whose category is 5 MiB of text, for 10 s, to a service that
    logs every request (one worker, under a 3 GiB address-space cap): every answer is the
    model's answer for a missing value, the worker's peak resident memory stays within 200 MiB
    of where it was, and every logged value is cut to SCOREBOX_LOG_MAX_VALUE_CHARS."""
    _empty_log(logged.engine)
    env = process_env(
        logged.settings,
        SCOREBOX_LOG_PREDICTIONS="1.0",
        SCOREBOX_SERVICE_WORKERS="1",
    )
    huge = logged.record | {"Island": "Atlantis " * (5 * MiB // 9)}
    missing = logged.record | {"Island": None}
    body = json.dumps({"records": [huge]}).encode()
    answers: list[tuple[int, Any]] = []
    with serving(env, tmp_path / "serve.log", memory_limit=3 * 2**30) as url:
        port = int(url.rsplit(":", 1)[1])
        worker = service_worker_pid(port)
        expected = httpx.post(f"{url}/predict", json={"records": [missing]}).json()
        for _ in range(20):  # warm up, then measure from here
            httpx.post(f"{url}/predict", json={"records": [logged.record]}).raise_for_status()
        time.sleep(1)
        Path(f"/proc/{worker}/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _memory(worker, "VmRSS")
        stop = time.monotonic() + 10

        def client() -> None:
            with httpx.Client(timeout=60) as http:
                while time.monotonic() < stop:
                    response = http.post(
                        f"{url}/predict",
                        content=body,
                        headers={"content-type": "application/json"},
                    )
                    answers.append((response.status_code, response.json()))

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        peak = _memory(worker, "VmHWM") - before
        sent = len(answers) + 21
        deadline = time.monotonic() + 20
        while _rows(logged.engine) < sent:
            assert time.monotonic() < deadline, f"{_rows(logged.engine)} of {sent} logged"
            time.sleep(0.2)
        cut = _metric(url, "scorebox_prediction_log_values_cut_total")
    rss = f"worker RSS {before / MiB:.0f} MiB, peak +{peak / MiB:.0f} MiB"
    print(f"\n{len(answers)} requests of 5 MiB from 8 clients; {rss}")
    assert len(answers) >= 40
    assert all(status == 200 for status, _ in answers), answers[:3]
    assert all(answer["predictions"] == expected["predictions"] for _, answer in answers)
    assert peak < 200 * MiB, peak / MiB
    with logged.engine.connect() as conn:
        islands = conn.execute(
            text(
                "SELECT features->>'Island', max(octet_length(features::text)) "
                "FROM scorebox_prediction_log GROUP BY 1"
            )
        ).all()
    sizes = dict((island, size) for island, size in islands)
    kept = {huge["Island"][:256] + "…", logged.record["Island"], None}  # None: `missing`
    assert set(sizes) == kept, sizes.keys()
    assert max(sizes.values()) < 1024
    assert cut == len(answers)


def _log_rows(count: int) -> list[dict[str, Any]]:
    return [{"Island": "Dream", "note": "x" * 200} for _ in range(count)]


def test_the_buffer_is_bounded_by_bytes_while_the_database_is_slow(logged: Logged) -> None:
    """The log table locked (a schema change waiting, say): COPY waits, requests keep coming;
    the buffer never holds more than its bytes, the rest is dropped and counted, and what was
    kept is written once the lock goes."""
    _empty_log(logged.engine)
    limit = 256 * 1024
    key = {"reason": "buffer full"}
    dropped_before = REGISTRY.get_sample_value("scorebox_prediction_log_dropped_total", key) or 0

    async def scenario() -> tuple[int, int]:
        log = PredictionLog(
            logged.settings.database_url, 1.0, max_bytes=limit, retention_days=0, interval=0.05
        )
        import asyncpg

        locker = await asyncpg.connect(**asyncpg_arguments(logged.settings.database_url, "lock"))
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE scorebox_prediction_log IN ACCESS EXCLUSIVE MODE")
        offered, highest = 0, 0
        for i in range(400):
            records = _log_rows(10)
            log.offer(logged.tag, {"Island": frozenset()}, f"r-{i}", records, [{"p": 1}] * 10)
            offered += len(records)
            highest = max(highest, log.pending_bytes)
            await asyncio.sleep(0.005)
        await transaction.rollback()
        await locker.close()
        deadline = time.monotonic() + 15
        while log.pending_bytes and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert log.pending_bytes == 0
        await log.close()
        return offered, highest

    offered, highest = asyncio.run(scenario())
    dropped = REGISTRY.get_sample_value("scorebox_prediction_log_dropped_total", key)
    dropped = (dropped or 0) - dropped_before
    assert highest <= limit
    assert 0 < dropped < offered
    assert _rows(logged.engine) == offered - dropped


def _insert(engine: Engine, rows: int, age: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO scorebox_prediction_log (logged_at, model_tag, request_id, features, "
                "prediction) SELECT now() - CAST(:age AS interval), 'm:v', 'r' || g, '{}', '{}' "
                "FROM generate_series(1, :rows) g"
            ),
            {"age": age, "rows": rows},
        )


def test_pruning_deletes_in_batches_while_rows_keep_coming(logged: Logged) -> None:
    """40,000 rows past a 7-day retention and 500 within it: a pass deletes exactly the old
    ones, batch by batch, while another connection inserts a row every 10 ms and never waits
    on it; a second pass at the same time finds the table's pruning taken and does nothing."""
    _empty_log(logged.engine)
    _insert(logged.engine, 40_000, "8 days")
    _insert(logged.engine, 500, "1 day")
    url = logged.settings.database_url

    async def scenario() -> tuple[Any, Any, float, int]:
        import asyncpg

        arguments = asyncpg_arguments(url, "test-prune")
        pruner, other, writer = [await asyncpg.connect(**arguments) for _ in range(3)]
        waits: list[float] = []
        done = asyncio.Event()

        async def write() -> None:
            while not done.is_set():
                started = time.monotonic()
                await writer.execute(
                    "INSERT INTO scorebox_prediction_log (model_tag, request_id, features, "
                    "prediction) VALUES ('m:v', 'new', '{}', '{}')"
                )
                waits.append(time.monotonic() - started)
                await asyncio.sleep(0.01)

        writing = asyncio.create_task(write())
        first = asyncio.create_task(prune(pruner, 7 * 86_400, batch=2_000))
        await asyncio.sleep(0.05)
        second = await prune(other, 7 * 86_400, batch=2_000)
        result = await first
        done.set()
        await writing
        for connection in (pruner, other, writer):
            await connection.close()
        return result, second, max(waits), len(waits)

    first, second, slowest, written = asyncio.run(scenario())
    assert first.deleted == 40_000 and not first.busy
    assert second.busy and second.deleted == 0
    assert slowest < 0.5, slowest
    assert _rows(logged.engine) == 500 + written


@pytest.mark.slow
def test_the_service_and_the_command_delete_rows_past_the_retention(
    logged: Logged, tmp_path: Path
) -> None:
    """A service logging with a retention of 20 s deletes older rows within seconds (and keeps
    what it just logged); `scorebox log prune --older-than` deletes what is past its argument."""
    _empty_log(logged.engine)
    _insert(logged.engine, 3_000, "2 days")
    env = process_env(
        logged.settings,
        SCOREBOX_LOG_PREDICTIONS="1.0",
        SCOREBOX_SERVICE_WORKERS="1",
        SCOREBOX_LOG_RETENTION_DAYS=str(20 / 86_400),
    )
    with serving(env, tmp_path / "serve.log") as url:
        httpx.post(f"{url}/predict", json={"records": [logged.record]}).raise_for_status()
        deadline = time.monotonic() + 20
        while _rows(logged.engine) != 1:
            assert time.monotonic() < deadline, f"{_rows(logged.engine)} rows"
            time.sleep(0.3)
        assert _metric(url, "scorebox_prediction_log_pruned_total") == 3_000
    _insert(logged.engine, 1_000, "3 days")
    _insert(logged.engine, 100, "1 day")
    done = subprocess.run(
        [str(BIN / "scorebox"), "log", "prune", "--older-than", "2"],
        env=process_env(logged.settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "deleted 1,000 prediction log rows logged more than 2 days ago" in done.stdout
    assert _rows(logged.engine) == 101
