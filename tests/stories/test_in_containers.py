"""The real images and the real compose stack on a Docker engine (tests/docker/): compose.yaml
with .env.example plus a password, `docker compose up --build`, a job, the service against
`bentoml serve` on this machine, the dashboard, a Redis restart, two workers, down and up,
retraining, the serving image from `bentoml containerize`, and the errors a user meets at the
container's edge. The tests share one stack and run in file order.

`scripts/test -m containers` runs only these; `-m "not slow"` skips them."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from scorebox_cli.processes import BIN, ROOT, child_env, free_port, serving
from tests.conftest import PG_HOST, new_schema
from tests.dashboards import Browser
from tests.docker.stack import ARTEFACTS, PROJECT, Stack, predict, stack
from tests.test_containers import project_packages, service_modules

pytestmark = [pytest.mark.containers, pytest.mark.slow]

APP_SERVICES = ("migrate", "training", "service", "worker", "beat", "dashboard")
ROWS = 569  # the example table `scorebox seed` loads
BIG_ROWS = 400_000


@pytest.fixture(scope="module")
def up(docker_env: dict[str, str]) -> Iterator[Stack]:
    """The stack, up; taken down with its volumes at the end of the module (what was measured
    is in artefacts/containers/timings.txt)."""
    yield from stack(docker_env)


def test_up_brings_every_service_to_its_state(up: Stack) -> None:
    for name in ("migrate", "training"):
        state = up.container(name)["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 0), up.logs(name)
    for name in ("postgres", "redis", "service"):
        assert up.container(name)["State"]["Health"]["Status"] == "healthy", up.logs(name)
    # A container that crashes at start is restarted within seconds: give it the time.
    time.sleep(10)
    for name in ("worker", "beat", "dashboard"):
        found = up.container(name)
        assert found["State"]["Status"] == "running", up.logs(name)
        assert found["RestartCount"] == 0, up.logs(name)
    for name in APP_SERVICES:
        assert up.container(name)["Config"]["User"] == "10001", name
    size = json.loads(up.docker("image", "inspect", "scorebox-app:latest").stdout)[0]["Size"]
    up.timings["image scorebox-app"] = f"{size / 1e6:.0f} MB"
    assert up.compose("exec", "-T", "worker", "id", "-u").stdout.strip() == "10001"


_IMPORTS = """
import importlib, importlib.metadata as md, sys
for name in sys.argv[1:]:
    print(name, importlib.import_module(name).__file__)
installed = {f.parts[0] for f in md.files("scorebox") if len(f.parts) > 1 and f.suffix == ".py"}
print("installed", *sorted(installed))
"""


def test_the_image_holds_every_package_of_the_project(up: Stack) -> None:
    packages = sorted(project_packages())
    assert {"scorebox", "training", "service", "worker", "dashboard"} <= set(packages)
    # As the containers run it (the source tree in /app), then from site-packages alone.
    for where in (["-w", "/app"], ["-w", "/", "-e", "PYTHONPATH="]):
        done = up.docker(
            "run", "--rm", *where, "scorebox-app:latest", "python", "-c", _IMPORTS, *packages
        )
        assert done.returncode == 0, done.stderr
        lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
        assert set(lines) == {*packages, "installed"}
        assert sorted(lines["installed"].split()) == packages


def test_a_job_scores_every_row_once(up: Stack) -> None:
    start = time.monotonic()
    done = up.compose("exec", "-T", "worker", "scorebox", "score", "--wait")
    up.timings[f"job of {ROWS} rows"] = f"{time.monotonic() - start:.0f} s"
    assert f"succeeded - {ROWS} scored, 0 failed of {ROWS} rows" in done.stdout, done.stdout
    counts = up.psql(
        "SELECT count(*), count(DISTINCT (source_table, model_tag, row_id)) FROM predictions"
    )
    assert counts == f"{ROWS}|{ROWS}"
    assert up.psql("SELECT count(*) FROM features") == str(ROWS)


def _records(up: Stack, limit: int = 40) -> list[dict[str, Any]]:
    rows = json.loads(
        up.psql(f"SELECT json_agg(f ORDER BY id) FROM (SELECT * FROM features LIMIT {limit}) f")
    )
    return [{k: v for k, v in row.items() if k not in ("id", "target")} for row in rows]


@pytest.fixture(scope="module")
def host_model(up: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A BentoML home on this machine holding the version the compose service serves (copied
    out of its volume), that version's tag, and the public keys the compose stack trusts (as a
    SCOREBOX_TRUSTED_KEYS value: a version is served only where its signer is trusted)."""
    tag = httpx.get(up.url("/v1/model"), timeout=10).json()["tag"]
    name, version = tag.split(":")
    home = tmp_path_factory.mktemp("host-bentoml")
    (home / "models" / name).mkdir(parents=True)
    source = f"{up.container('service')['Id']}:/home/scorebox/bentoml/models/{name}/{version}"
    copied = up.docker("cp", source, str(home / "models" / name / version))
    assert copied.returncode == 0, copied.stderr
    (home / "models" / name / "latest").write_text(version)
    trusted = home / "trusted"
    keys = f"{up.container('service')['Id']}:/home/scorebox/.config/scorebox/trusted"
    copied = up.docker("cp", keys, str(trusted))
    assert copied.returncode == 0, copied.stderr
    lines = [p.read_text().strip() for p in sorted(trusted.glob("*.pub"))]
    assert lines, "training wrote no public key into the trusted volume"
    return home, tag, ",".join(lines)


def _registry_less_url(database: str) -> str:
    """A database URL on this machine's PostgreSQL whose schema has no registry: a service on
    it serves from its local store."""
    schema, _ = new_schema(database, "noreg")
    return f"postgresql://postgres@{PG_HOST}:5432/{database}?options=" + quote(
        f"-csearch_path={schema}"
    )


def test_the_service_answers_as_bentoml_serve_on_this_machine(
    up: Stack, host_model: tuple[Path, str, str], database: str, tmp_path: Path
) -> None:
    home, tag, trusted = host_model
    records = _records(up)
    in_container = predict(up.url(), records)
    assert in_container["model"] == tag and len(in_container["predictions"]) == len(records)
    env = child_env() | {
        "BENTOML_HOME": str(home),
        "SCOREBOX_MODEL_TAG": tag.split(":")[1],
        "SCOREBOX_DATABASE_URL": _registry_less_url(database),
        "SCOREBOX_TRUSTED_KEYS": trusted,
    }
    with serving(env, tmp_path / "serve.log") as url:
        on_host = predict(url, records)
    assert on_host == in_container


def test_the_dashboard_lists_the_job(up: Stack, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{up.dashboard_port}/jobs"
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200
    assert 'href="/jobs/1"' in page.text and "succeeded" in page.text
    (ARTEFACTS / "dashboard-jobs.png").unlink(missing_ok=True)
    shot = Browser(ARTEFACTS, width=1280, height=900).screenshot(url, "dashboard-jobs")
    assert shot.stat().st_size > 10_000


def _seed_big(up: Stack) -> None:
    if up.psql("SELECT to_regclass('big') IS NOT NULL") == "t":
        return
    up.compose(
        "exec", "-T", "-e", "SCOREBOX_FEATURE_TABLE=big", "worker",
        "scorebox", "seed", "--rows", str(BIG_ROWS),
    )  # fmt: skip


def _job_over_big(up: Stack, chunk_size: int) -> subprocess.Popen[str]:
    """`scorebox score --table big --wait` in the worker container, running."""
    command = [
        "/usr/bin/docker-compose", "-p", PROJECT, "--env-file", str(up.env_file),
        "exec", "-T", "-e", f"SCOREBOX_CHUNK_SIZE={chunk_size}", "worker",
        "scorebox", "score", "--table", "big", "--wait",
    ]  # fmt: skip
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=up.env | {"ENV_FILE": str(up.env_file)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _last_job(up: Stack) -> tuple[int, str, int, int]:
    row = up.psql(
        "SELECT id, status, rows_scored, rows_total FROM scorebox_jobs ORDER BY id DESC LIMIT 1"
    )
    job, status, scored, total = row.split("|")
    return int(job), status, int(scored), int(total)


def _each_row_once(up: Stack, job: int) -> None:
    tag = up.psql(f"SELECT model_tag FROM scorebox_jobs WHERE id = {job}")
    counts = up.psql(
        "SELECT count(*), count(DISTINCT row_id) FROM predictions "
        f"WHERE source_table = 'public.big' AND model_tag = '{tag}'"
    )
    assert counts == f"{BIG_ROWS}|{BIG_ROWS}"
    assert _last_job(up)[1:] == ("succeeded", BIG_ROWS, BIG_ROWS)


def test_a_redis_restart_during_a_job_loses_no_row(up: Stack) -> None:
    _seed_big(up)
    job = _job_over_big(up, chunk_size=2000)
    deadline = time.monotonic() + 120
    while True:
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "the job did not start"
        _, status, scored, _ = _last_job(up)
        if status == "running" and scored > 0:
            break
        time.sleep(0.2)
    restarted = time.monotonic()
    up.compose("restart", "redis")
    _, status, scored, total = _last_job(up)
    assert status == "running" and scored < total, "the job ended before Redis went down"
    out, err = job.communicate(timeout=600)
    after = time.monotonic() - restarted
    up.timings["job after the Redis restart"] = f"{after:.0f} s"
    assert job.returncode == 0, out + err
    _each_row_once(up, _last_job(up)[0])
    # Queued messages came back from the append-only file: nothing waited for a lease to expire
    # (SCOREBOX_CHUNK_LEASE_SECONDS, 300 s) to be sent again.
    assert after < 240
    files = up.compose("exec", "-T", "redis", "ls", "/data/appendonlydir").stdout
    assert ".aof" in files


def test_two_workers_share_a_job(up: Stack) -> None:
    _seed_big(up)
    up.compose("up", "-d", "--no-build", "--scale", "worker=2")
    workers = up.containers("worker")
    assert len(workers) == 2
    time.sleep(5)  # the new worker connects to Redis
    job = _job_over_big(up, chunk_size=4000)
    out, err = job.communicate(timeout=600)
    assert job.returncode == 0, out + err
    job_id = _last_job(up)[0]
    _each_row_once(up, job_id)
    chunks = []
    for worker in workers:
        log = up.docker("logs", worker["Id"]).stderr + up.docker("logs", worker["Id"]).stdout
        chunks.append(len(re.findall(rf"chunk {job_id}/\d+: ", log)))
    assert all(count > 0 for count in chunks) and sum(chunks) >= BIG_ROWS // 4000, chunks
    up.compose("up", "-d", "--no-build", "--scale", "worker=1")


def _registry(up: Stack) -> set[str]:
    return set(up.psql("SELECT tag FROM scorebox_models").split())


def _store(up: Stack) -> set[str]:
    listed = up.compose(
        "exec", "-T", "service", "ls", "/home/scorebox/bentoml/models/scorebox"
    ).stdout.split()
    return {f"scorebox:{name}" for name in listed if name != "latest"}


def test_down_then_up_keeps_the_database_the_model_store_and_the_registry(up: Stack) -> None:
    registry, store = _registry(up), _store(up)
    predictions = up.psql("SELECT count(*) FROM predictions")
    assert registry and registry <= store
    up.timed("down", "down")
    up.timed("up after down", "up", "-d", "--no-build")
    up.wait_healthy("service")
    assert up.psql("SELECT count(*) FROM predictions") == predictions
    assert up.psql("SELECT count(*) FROM features") == str(ROWS)  # seeding again added nothing
    # Training ran again (--if-missing) and trained nothing: a version exists.
    assert (_registry(up), _store(up)) == (registry, store)
    assert "is registered already; nothing trained" in up.logs("training")
    for folder in ("bentoml", ".config/scorebox/signing", ".config/scorebox/trusted"):
        path = f"/home/scorebox/{folder}"
        probe = up.compose(
            "run", "--rm", "--no-deps", "training",
            "sh", "-c", f"stat -c %u {path} && touch {path}/.probe && rm {path}/.probe",
        )  # fmt: skip
        assert probe.stdout.strip().splitlines()[-1] == "10001", probe.stderr


def test_a_training_run_switches_the_running_service(up: Stack) -> None:
    service = up.container("service")
    before = httpx.get(up.url("/v1/model"), timeout=10).json()["tag"]
    start = time.monotonic()
    trained = up.compose("run", "--rm", "training", "scorebox", "train")
    up.timings["run --rm training"] = f"{time.monotonic() - start:.0f} s"
    tag = re.search(r"registered (\S+:\S+) ", trained.stdout)
    assert tag is not None, trained.stdout
    assert tag[1] != before
    deadline = time.monotonic() + 60
    while httpx.get(up.url("/v1/model"), timeout=10).json()["tag"] != tag[1]:
        assert time.monotonic() < deadline, up.logs("service")[-3000:]
        time.sleep(1)
    assert predict(up.url(), _records(up, 3))["model"] == tag[1]
    now = up.container("service")
    assert now["State"]["StartedAt"] == service["State"]["StartedAt"]
    assert now["RestartCount"] == service["RestartCount"]


def test_the_serving_image_answers_as_the_compose_service(
    up: Stack, host_model: tuple[Path, str, str], database: str
) -> None:
    home, tag, trusted = host_model
    env = up.env | {
        "PATH": f"/usr/bin:{BIN}:{up.env['PATH']}",
        "BENTOML_HOME": str(home),
        "SCOREBOX_MODEL_TAG": tag.split(":")[1],
        "SCOREBOX_DATABASE_URL": _registry_less_url(database),
        "SCOREBOX_TRUSTED_KEYS": trusted,
    }
    start = time.monotonic()
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "containerize")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    up.timings["scripts/containerize"] = f"{time.monotonic() - start:.0f} s"
    (ARTEFACTS / "containerize.log").write_text(built.stdout + built.stderr)
    assert built.returncode == 0, built.stderr[-4000:]
    image = built.stdout.strip().splitlines()[-1].removeprefix("image: ")
    # The Bento carries the project's packages the service imports, and no other.
    bento = subprocess.run(
        [str(BIN / "bentoml"), "get", image, "-o", "path"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    carried = {p.parent.name for p in (Path(bento) / "src").glob("*/__init__.py")}
    imported = {Path(f).parts[0] for f in service_modules(env) if len(Path(f).parts) > 1}
    assert carried == imported == {"scorebox", "service"}
    inspected = json.loads(up.docker("image", "inspect", image).stdout)[0]
    up.timings[f"serving image {image}"] = f"{inspected['Size'] / 1e6:.0f} MB"
    assert inspected["Config"]["User"] not in ("", "root", "0")

    port = free_port()
    name = f"{PROJECT}-bento-{uuid.uuid4().hex[:6]}"
    registry = f"postgresql+psycopg://postgres:{up.password}@postgres:5432/scorebox"
    ran = up.docker(
        "run", "-d", "--name", name, "--network", f"{PROJECT}_default",
        "-p", f"127.0.0.1:{port}:3000", "-e", f"SCOREBOX_DATABASE_URL={registry}",
        "-e", f"SCOREBOX_TRUSTED_KEYS={trusted}", image,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, up.docker("logs", name).stderr[-3000:]
            time.sleep(1)
        assert up.docker("exec", name, "id", "-u").stdout.strip() != "0"
        records = _records(up)
        # Both follow the registry's latest version.
        assert predict(url, records) == predict(up.url(), records)
        grace = 70  # the compose service's stop_grace_period
        start = time.monotonic()
        up.docker("stop", "-t", str(grace), name)
        stopped = time.monotonic() - start
        up.timings["serving image: stop on SIGTERM"] = f"{stopped:.1f} s"
        state = json.loads(up.docker("inspect", name).stdout)[0]["State"]
        assert stopped < grace and state["ExitCode"] == 0, state
    finally:
        (ARTEFACTS / "serving-image.log").write_text(up.docker("logs", name).stderr)
        up.docker("rm", "-f", name)


def _one_line(done: subprocess.CompletedProcess[str], *phrases: str) -> str:
    """The one line a failing command printed; it names every phrase."""
    lines = [
        line
        for line in done.stderr.splitlines() + done.stdout.splitlines()
        # docker-compose 1.29's own lines: containers it creates, and `run`'s exit status.
        if line.strip()
        and not re.match(r"(Creating|Starting|Stopping|Removing) ", line)
        and not line.strip().isdigit()
    ]
    assert done.returncode != 0 and len(lines) == 1, done.stdout + done.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def test_errors_at_the_container_edge_are_one_line(up: Stack) -> None:
    url = f"postgresql+psycopg://postgres:{up.password}@postgres"
    up.psql("CREATE DATABASE ascii_db ENCODING 'SQL_ASCII' TEMPLATE template0")
    ascii_db = up.compose(
        "run", "--rm", "--no-deps", "-e", f"SCOREBOX_DATABASE_URL={url}:5432/ascii_db", "migrate",
        check=False,
    )  # fmt: skip
    _one_line(ascii_db, "SQL_ASCII encoding", "SCOREBOX_DATABASE_URL")
    no_database = up.compose(
        "run", "--rm", "--no-deps", "-e", f"SCOREBOX_DATABASE_URL={url}:5433/scorebox", "migrate",
        check=False,
    )  # fmt: skip
    _one_line(no_database, "cannot reach the database", "SCOREBOX_DATABASE_URL", "refused")
    no_redis = up.compose(
        "run", "--rm", "--no-deps", "-e", "SCOREBOX_REDIS_URL=redis://redis:6380/0", "worker",
        "scorebox", "score", check=False,
    )  # fmt: skip
    _one_line(no_redis, "cannot reach the broker (SCOREBOX_REDIS_URL)", "6380")
    queued = re.search(r"jobs resume (\d+)", no_redis.stderr + no_redis.stdout)
    assert queued is not None
    up.compose("exec", "-T", "worker", "scorebox", "jobs", "cancel", queued[1])

    # A volume made by root, mounted where the non-root user keeps its model store.
    volume = f"{PROJECT}_root_owned"
    up.docker("volume", "create", volume)
    try:
        made = up.docker(
            "run", "--rm", "--user", "0", "-v", f"{volume}:/v", "--entrypoint", "touch",
            "scorebox-app:latest", "/v/made-by-root",
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        for command in (["bentoml", "serve", "."], ["scorebox", "train"]):
            done = up.docker(
                "run", "--rm", "-v", f"{volume}:/home/scorebox/bentoml", "scorebox-app:latest",
                *command,
            )  # fmt: skip
            _one_line(done, "uid 10001 cannot write /home/scorebox/bentoml", "BENTOML_HOME")
    finally:
        up.docker("volume", "rm", "-f", volume)


def test_a_wrong_password_is_one_line_from_migrate(up: Stack) -> None:
    wrong = ARTEFACTS / "wrong.env"
    wrong.write_text(up.env_text("not-the-password"))
    done = up.compose("up", "-d", "--no-build", env_file=wrong, check=False)
    assert done.returncode != 0
    migrate = up.container("migrate")
    assert migrate["State"]["ExitCode"] == 1 and migrate["RestartCount"] == 0
    log = up.docker("logs", migrate["Id"])
    lines = [line for line in (log.stdout + log.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "password authentication failed" in lines[0] and "SCOREBOX_DATABASE_URL" in lines[0]
