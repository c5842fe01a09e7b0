"""`scorebox demo` end to end, as a user runs it: on the embedded default, and on PostgreSQL +
Redis. It must leave no process behind."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from scorebox.settings import Settings
from scorebox_cli.processes import BIN, child_env
from tests.conftest import process_env


def _leftovers(marker: str) -> list[str]:
    """Processes whose environment mentions ``marker`` (the demo's database), other than us."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if process.pid != os.getpid() and marker in str(process.environ()):
                found.append(" ".join(process.info["cmdline"] or []))
        except psutil.Error:
            continue
    return found


def _demo_env(home: Path, **extra: str) -> dict[str, str]:
    base = child_env()
    return base | {"BENTOML_HOME": str(home), "COLUMNS": "400", **extra}


@pytest.mark.slow
def test_demo_on_the_embedded_default_twice_then_keeps_serving(tmp_path: Path) -> None:
    env = _demo_env(tmp_path / "bentoml")
    for _ in range(2):
        done = subprocess.run(
            [str(BIN / "scorebox"), "demo"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "succeeded - 569 scored, 0 failed of 569 rows" in done.stdout
        assert f"sqlite:///{tmp_path}/.scorebox-demo/scorebox.db" in done.stdout
        assert "roc_auc" in done.stdout and "report.md" in done.stdout
        # A curl command is offered only while a service answers it.
        assert "try it: curl" not in done.stdout and "--keep-serving" in done.stdout
        assert not _leftovers(str(tmp_path))

    log = (tmp_path / "keep.log").open("w+")
    demo = subprocess.Popen(
        [str(BIN / "scorebox"), "demo", "--keep-serving"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while "press Ctrl-C to stop" not in (tmp_path / "keep.log").read_text():
            assert demo.poll() is None and time.monotonic() < deadline, (
                tmp_path / "keep.log"
            ).read_text()
            time.sleep(0.5)
        curl = next(
            line.removeprefix("try it: ")
            for line in (tmp_path / "keep.log").read_text().splitlines()
            if line.startswith("try it: curl")
        )
        answer = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30)
        assert '"predictions":[{"prediction":0' in answer.stdout, answer.stdout
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
        log.close()
    assert not _leftovers(str(tmp_path))


@pytest.mark.slow
def test_demo_on_postgres_and_redis(settings: Settings, redis_url: str, tmp_path: Path) -> None:
    env = process_env(settings, SCOREBOX_REDIS_URL=redis_url, COLUMNS="400")
    env["BENTOML_HOME"] = str(tmp_path / "bentoml")
    done = subprocess.run(
        [str(BIN / "scorebox"), "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded - 569 scored" in done.stdout
    assert "database     postgresql+psycopg://postgres@" in done.stdout
    assert not (tmp_path / ".scorebox-demo" / "scorebox.db").exists()
    assert not _leftovers(settings.database_url)


@pytest.mark.parametrize("variable", ["SCOREBOX_DATABASE_URL", "SCOREBOX_REDIS_URL"])
def test_demo_uses_only_what_is_configured(variable: str) -> None:
    from scorebox.settings import load_settings
    from scorebox_cli.demo import embedded

    configured = {"database_url": "postgresql://x@db/y", "redis_url": "redis://r:6379/3"}
    field = variable.removeprefix("SCOREBOX_").lower()
    chosen = embedded(load_settings(**{field: configured[field]}))
    assert getattr(chosen, field) == configured[field]
    other = "redis_url" if field == "database_url" else "database_url"
    assert getattr(chosen, other).startswith(("sqlite:///", "filesystem://"))
