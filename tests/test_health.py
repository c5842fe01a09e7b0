"""The files a worker keeps for its pod's probes (worker/health.py), with the real database and
broker answering or not; the probes themselves run against a real worker in
tests/test_kubernetes.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from scorebox.db import make_engine
from worker import health


@pytest.fixture(autouse=True)
def _own_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def test_answers_only_when_database_and_broker_both_do(engine: Engine, redis_url: str) -> None:
    broker = redis.Redis.from_url(redis_url, socket_timeout=2)
    away = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    nowhere = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_timeout=1)
    assert health.answers(engine, broker)
    assert not health.answers(engine, away)
    assert not health.answers(nowhere, broker)


def test_readiness_touches_its_file_while_the_check_passes_and_removes_it_on_stop(
    tmp_path: Path,
) -> None:
    passing = True
    readiness = health.Readiness(lambda: passing, interval=0.05)
    readiness.start()
    ready = tmp_path / health.READY
    deadline = time.monotonic() + 5
    while not ready.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    passing = False
    time.sleep(0.2)
    touched = ready.stat().st_mtime
    time.sleep(0.3)
    assert ready.stat().st_mtime == touched  # ages while the check fails
    readiness.stop()
    readiness.join(5)
    assert not ready.exists()
