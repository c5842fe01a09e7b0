"""The real compose stack on a Docker engine: the engine and the stand-in base images come from
tests/docker/engine.sh and tests/docker/standins.sh; the stack is compose.yaml as it is, with
.env.example plus a password and ports of its own bound to 127.0.0.1."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from scorebox_cli.processes import ROOT, free_port

HERE = Path(__file__).parent
# Debian's client (20.10, BuildKit built in) and compose (1.29): a newer client found first on
# PATH may lack buildx, which `bentoml containerize` needs.
DOCKER = "/usr/bin/docker"
COMPOSE = "/usr/bin/docker-compose"
# What a run leaves to look at (logs, screenshots, timings); .gitignore covers it.
ARTEFACTS = ROOT / "artefacts" / "containers"
PROJECT = "scoreboxci"
# The image compose.yaml builds and runs for every scorebox container.
APP_IMAGE = "scorebox-app:latest"


def _script(name: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", str(HERE / name)], env=env, capture_output=True, text=True, timeout=1500
    )
    if done.returncode != 0:
        pytest.fail(f"tests/docker/{name} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def engine_env(base: dict[str, str]) -> dict[str, str]:
    """``base`` pointed at a Docker engine that answers, with the stand-in images built."""
    if shutil.which("apt-get") is None:
        pytest.skip("the container tests install Debian's docker.io: not a Debian machine")
    host = _script("engine.sh", base).strip().splitlines()[-1]
    env = base | {"DOCKER_HOST": host, "PATH": f"/usr/bin:{base['PATH']}"}
    _script("standins.sh", env)
    return env


def build_app_image(env: dict[str, str]) -> str:
    """Build the Dockerfile's image as compose.yaml names it; its tag. `docker compose up
    --build` builds with the same client, so it reuses these layers."""
    done = subprocess.run(
        [DOCKER, "build", "--quiet", "--tag", APP_IMAGE, str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        pytest.fail(f"docker build failed:\n{done.stderr[-4000:]}")
    return APP_IMAGE


@dataclass
class Stack:
    """One compose project of compose.yaml, with its environment file and published ports."""

    env: dict[str, str]
    env_file: Path
    service_port: int
    dashboard_port: int
    password: str
    timings: dict[str, str] = field(default_factory=dict)  # what was measured, with its unit

    @classmethod
    def create(cls, env: dict[str, str]) -> Stack:
        """A stack whose .env is .env.example with a new password and free ports."""
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(16)
        service_port, dashboard_port = free_port(), free_port()
        while dashboard_port == service_port:
            dashboard_port = free_port()
        running = cls(env, ARTEFACTS / "env", service_port, dashboard_port, password)
        running.env_file.write_text(running.env_text(password))
        return running

    def env_text(self, password: str) -> str:
        """.env.example with ``password`` as POSTGRES_PASSWORD and this stack's ports."""
        values = {
            "POSTGRES_PASSWORD": password,
            "SERVICE_PORT": str(self.service_port),
            "DASHBOARD_PORT": str(self.dashboard_port),
        }
        lines = []
        for line in (ROOT / ".env.example").read_text().splitlines():
            key = line.split("=", 1)[0]
            lines.append(f"{key}={values.pop(key)}" if key in values else line)
        assert not values, f".env.example lacks {sorted(values)}"
        return "\n".join(lines) + "\n"

    def compose(
        self,
        *args: str,
        env_file: Path | None = None,
        timeout: float = 900,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run docker-compose on this project; fail the test with its output unless it exits 0
        (when ``check``)."""
        chosen = str(env_file or self.env_file)
        command = [COMPOSE, "-p", PROJECT, "--env-file", chosen, *args]
        # The same file is what compose interpolates and what it hands the containers.
        env = self.env | {"ENV_FILE": chosen}
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
        return done

    def docker(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run the docker client against the test engine."""
        return subprocess.run(
            [DOCKER, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def timed(self, name: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """``compose(*args)``, its duration kept under ``name``."""
        start = time.monotonic()
        done = self.compose(*args, **kwargs)
        self.timings[name] = f"{time.monotonic() - start:.0f} s"
        return done

    def containers(self, service: str) -> list[dict[str, Any]]:
        """`docker inspect` of the service's containers, running or not."""
        ids = self.compose("ps", "-q", service).stdout.split()
        if not ids:
            return []
        return json.loads(self.docker("inspect", *ids).stdout)  # type: ignore[no-any-return]

    def container(self, service: str) -> dict[str, Any]:
        """The service's one container."""
        found = self.containers(service)
        assert len(found) == 1, f"{service}: {len(found)} containers"
        return found[0]

    def psql(self, sql: str) -> str:
        """One statement in the postgres container's scorebox database; unaligned output."""
        done = self.compose(
            "exec", "-T", "postgres", "psql", "-U", "postgres", "-d", "scorebox", "-Atc", sql
        )
        return done.stdout.strip()

    def url(self, path: str = "") -> str:
        """The compose service on its published port."""
        return f"http://127.0.0.1:{self.service_port}{path}"

    def wait_healthy(self, service: str, timeout: float = 180) -> None:
        """Return once the service's container reports healthy."""
        deadline = time.monotonic() + timeout
        while self.container(service)["State"].get("Health", {}).get("Status") != "healthy":
            assert time.monotonic() < deadline, f"{service} not healthy:\n{self.logs(service)}"
            time.sleep(1)

    def logs(self, service: str) -> str:
        """The service's log, without colours."""
        return self.compose("logs", "--no-color", service, check=False).stdout

    def save_logs(self) -> None:
        """Every service's log into the artefacts."""
        every = self.compose("logs", "--no-color", check=False)
        (ARTEFACTS / "compose.log").write_text(every.stdout)


def stack(env: dict[str, str]) -> Iterator[Stack]:
    """`docker compose up --build` of compose.yaml; on exit the logs are kept and the project is
    taken down with its volumes."""
    begun = time.monotonic()
    running = Stack.create(env)
    running.compose("down", "-v", "--remove-orphans")  # what an interrupted run left
    try:
        running.timed("up --build", "up", "-d", "--build", timeout=1800)
        yield running
    finally:
        running.save_logs()
        running.compose("down", "-v", "--remove-orphans", check=False)
        running.timings["the stack's tests, up to down -v"] = f"{time.monotonic() - begun:.0f} s"
        (ARTEFACTS / "timings.txt").write_text(
            "".join(f"{name}: {value}\n" for name, value in running.timings.items())
        )


def predict(url: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """POST ``records`` to ``url``/predict; the answer's JSON."""
    answer = httpx.post(f"{url}/predict", json={"records": records}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]
