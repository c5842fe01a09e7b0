"""The Kubernetes manifests run as a cluster would run them: every container of the rendered
`overlays/keda` (the migrate and training Jobs, the service, the workers, the schedule, the
dashboard) started from the scorebox image with exactly its rendered command, environment, user,
read-only root and emptyDirs (tests/kube.py's DockerRun), init containers first, on a Docker
network of this module's own beside the PostgreSQL and Redis stand-ins, each process with the
database role and the grants README lists for it. The probes are run as the kubelet runs them
(an HTTP GET or a TCP connect on the published port, exec probes with `docker exec`), and SIGTERM
comes with the rendered grace period (`docker stop -t`). The tests share the pods and run in
file order.

`scripts/test -m containers` runs these with tests/stories/test_in_containers.py; `-m "not slow"`
skips them."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine

from scorebox import ledger
from scorebox.db import Tables
from scorebox.seed import seed
from scorebox.signing import create_key, public_path
from scorebox_cli.processes import free_port
from tests.docker.stack import ARTEFACTS, DOCKER
from tests.kube import KUBERNETES, Cluster, Container, DockerRun, Probe, render

pytestmark = [pytest.mark.containers, pytest.mark.slow]

PREFIX = "scoreboxkube"
ROWS = 569  # the example table
BIG_ROWS = 240_000
BIG_CHUNK = 20_000
LOGS = ARTEFACTS / "kube"

# Each process's role with the grants README lists for it ("Guarantees"), nothing more. The
# owner (migrate) has CREATE on the schema; the features table is the user's, loaded by the
# owner here.
GRANTS = {
    "training": """
        GRANT SELECT ON features TO training;
        GRANT SELECT, INSERT ON scorebox_models TO training;
    """,
    "service": "GRANT SELECT ON scorebox_models, scorebox_aliases, scorebox_jobs TO service;",
    "worker": """
        GRANT SELECT ON features TO worker;
        GRANT SELECT, INSERT, UPDATE ON predictions TO worker;
        GRANT SELECT, UPDATE ON scorebox_jobs, scorebox_chunks TO worker;
        GRANT SELECT, INSERT, UPDATE ON scorebox_failed_rows TO worker;
    """,
    "reader": """
        GRANT SELECT ON scorebox_models, scorebox_aliases, scorebox_jobs, scorebox_chunks,
            scorebox_failed_rows, scorebox_prediction_log TO reader;
    """,
}
# The init step of every pod but migrate's (`scorebox db check`).
CHECK_GRANT = "GRANT SELECT ON scorebox_alembic_version TO {role};"
# The worker's, for the schedule's runs (the workers record the job the CronJob asks for).
SCHEDULE_GRANTS = """
    GRANT INSERT ON scorebox_jobs, scorebox_chunks TO worker;
    GRANT USAGE ON SEQUENCE scorebox_jobs_id_seq TO worker;
    GRANT SELECT ON scorebox_models TO worker;
"""
# The service's, with the prediction log on: INSERT (and the id's sequence) to log, SELECT and
# DELETE to prune.
LOG_GRANT = """
    GRANT INSERT ON scorebox_prediction_log TO service;
    GRANT USAGE ON SEQUENCE scorebox_prediction_log_id_seq TO service;
"""
PRUNE_GRANT = "GRANT SELECT, DELETE ON scorebox_prediction_log TO service;"
# The prediction log on, rows kept 8.6 s, in an overlay of the user's kind.
LOGGING = ("SCOREBOX_LOG_PREDICTIONS=1", "SCOREBOX_LOG_RETENTION_DAYS=0.0001")


@dataclass
class Pods:
    """The rendered containers on this module's Docker network, with PostgreSQL (published on
    127.0.0.1 for the test's own queries) and Redis."""

    env: dict[str, str]
    cluster: Cluster  # overlays/keda with the test's key
    logging: Cluster  # and the prediction log on (LOGGING)
    files: Path
    network: str
    password: str
    pg_port: int
    # Container name -> (what it runs, container port -> published port on 127.0.0.1).
    started: dict[str, tuple[Container, dict[int, int]]] = field(default_factory=dict)
    timings: dict[str, str] = field(default_factory=dict)  # what was measured, with its unit
    # Log lines a test provoked on purpose (a grant withheld), by a phrase they contain.
    provoked: set[str] = field(default_factory=set)

    def docker(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DOCKER, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        """One statement on the scorebox database as its superuser; its rows (none for a
        statement without)."""
        dsn = f"host=127.0.0.1 port={self.pg_port} dbname=scorebox user=postgres"
        with psycopg.connect(dsn, password=f"postgres{self.password}", autocommit=True) as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def url(self, role: str) -> str:
        """The role's URL from this machine."""
        return _url(role, self.password, f"127.0.0.1:{self.pg_port}")

    def start(self, container: Container, name: str, alias: str) -> str:
        """`docker run` of ``container`` as DockerRun describes it; its ports published on
        127.0.0.1."""
        ports = {port: free_port() for port in container.ports.values()}
        extra = ["--network-alias", alias]
        for port, published in ports.items():
            extra += ["--publish", f"127.0.0.1:{published}:{port}"]
        run = DockerRun(container, self.files / name, extra)
        run.write_files()
        done = self.docker(*run.argv(name, network=self.network)[1:])
        assert done.returncode == 0, done.stderr
        self.started[name] = (container, ports)
        return name

    def pod(
        self, workload: str, main: str, suffix: str = "", cluster: Cluster | None = None
    ) -> str:
        """The pod of ``workload`` (of ``cluster``, else the module's): its init containers run
        to completion (exit 0, as the kubelet requires), then its container ``main`` started;
        the latter's name."""
        cluster = cluster or self.cluster
        alias = workload.split("/")[1]
        for item in cluster.containers():
            if item.workload == workload and item.init:
                name = self.start(item, f"{PREFIX}-{alias}{suffix}-{item.name}", alias)
                code = self.wait(name, timeout=120)
                assert code == 0, self.logs(name)
        return self.start(cluster.container(workload, main), f"{PREFIX}-{alias}{suffix}", alias)

    def wait(self, name: str, timeout: float) -> int:
        """The container's exit code once it exited."""
        done = self.docker("wait", name, timeout=timeout)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip())

    def logs(self, name: str) -> str:
        done = self.docker("logs", name)
        return done.stdout + done.stderr

    def probe(self, name: str, kind: str) -> bool:
        """The container's ``kind`` probe, run once as the kubelet runs it."""
        container, ports = self.started[name]
        probe: Probe = container.probes[kind]
        try:
            if probe.action == "http":
                assert probe.port is not None
                answer = httpx.get(
                    f"http://127.0.0.1:{ports[probe.port]}{probe.path}", timeout=probe.timeout
                )
                return 200 <= answer.status_code < 400
            if probe.action == "tcp":
                assert probe.port is not None
                with socket.create_connection(("127.0.0.1", ports[probe.port]), probe.timeout):
                    return True
            done = self.docker("exec", name, *probe.command, timeout=probe.timeout)
            return done.returncode == 0
        except (httpx.TransportError, OSError, subprocess.TimeoutExpired):
            return False

    def until(self, name: str, kind: str, passes: bool, timeout: float) -> float:
        """Run the probe every period until it passes (or fails, ``passes=False``); how long
        that took."""
        probe = self.started[name][0].probes[kind]
        begun = time.monotonic()
        while self.probe(name, kind) != passes:
            assert time.monotonic() - begun < timeout, (
                f"{name}: {kind} probe never {'passed' if passes else 'failed'}:\n"
                + self.logs(name)[-3000:]
            )
            time.sleep(min(probe.period, 2))
        return time.monotonic() - begun

    def stop(self, name: str) -> tuple[float, int]:
        """SIGTERM, and SIGKILL after the rendered grace period (the kubelet's `docker stop -t`):
        how long it took, and the exit code."""
        grace = self.started[name][0].grace_seconds
        begun = time.monotonic()
        done = self.docker("stop", "--time", str(grace), name, timeout=grace + 30)
        assert done.returncode == 0, done.stderr
        return time.monotonic() - begun, self.wait(name, timeout=30)

    def job(self) -> tuple[int, str, int, int]:
        """The last job: id, status, rows scored, rows total."""
        ((job, status, scored, total),) = self.sql(
            "SELECT id, status, rows_scored, rows_total FROM scorebox_jobs ORDER BY id DESC LIMIT 1"
        )
        return job, status, scored, total


def _overlay(folder: Path, public_key: Path, settings: tuple[str, ...] = ()) -> Path:
    """An overlay of the user's kind over overlays/keda (README, "Run it on Kubernetes"): the
    public key of training's key pair merged into scorebox-trusted-keys, ``settings`` into
    scorebox-config."""
    (folder / "keys").mkdir(parents=True)
    (folder / "keys" / "ci.pub").write_bytes(public_key.read_bytes())
    (folder / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        # Kustomize takes a relative path only.
        f"resources: [{os.path.relpath(KUBERNETES / 'overlays' / 'keda', folder)}]\n"
        "configMapGenerator:\n"
        "  - name: scorebox-trusted-keys\n"
        "    behavior: merge\n"
        "    files: [keys/ci.pub]\n"
        "  - name: scorebox-config\n"
        "    behavior: merge\n"
        f"    literals: {json.dumps(list(settings))}\n"
    )
    return folder


@pytest.fixture(scope="module")
def pods(
    docker_env: dict[str, str], app_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pods]:
    """PostgreSQL and Redis on a network of their own, the roles, and the rendered overlay;
    every container is removed at the end (their logs kept in artefacts/containers/kube)."""
    begun = time.monotonic()
    folder = tmp_path_factory.mktemp("kube")
    key = folder / "signing" / "ed25519.pem"
    create_key(key)
    password = secrets.token_urlsafe(16)
    # The Secrets the user creates: a role a process, as README's `kubectl create secret`.
    created = {
        "scorebox-secrets": {
            f"{process}-database-url": _url(role, password, "db:5432")
            for process, role in (
                ("migrate", "owner"),
                ("training", "training"),
                ("service", "service"),
                ("worker", "worker"),
                ("dashboard", "reader"),
            )
        }
        | {"redis-url": "redis://redis:6379/0", "api-token": secrets.token_hex(16)},
        "scorebox-signing-key": {"ed25519.pem": key.read_text()},
    }
    overlay, logging = (
        render(_overlay(folder / name, public_path(key), settings))
        for name, settings in (("overlay", ()), ("logging", LOGGING))
    )
    running = Pods(
        env=docker_env,
        cluster=Cluster(overlay, created),
        logging=Cluster(logging, created),
        files=folder / "files",
        network=f"{PREFIX}-{uuid.uuid4().hex[:6]}",
        password=password,
        pg_port=free_port(),
    )
    # The rendered image reference, given the tag of the image just built.
    rendered = running.cluster.container("Deployment/scorebox-worker", "worker").image
    running.docker("tag", app_image, rendered)
    for stale in running.docker("ps", "-aq", "--filter", f"name={PREFIX}-").stdout.split():
        running.docker("rm", "-f", stale)
    assert running.docker("network", "create", running.network).returncode == 0
    LOGS.mkdir(parents=True, exist_ok=True)
    try:
        db = running.docker(
            "run", "--detach", "--name", f"{PREFIX}-db", "--network", running.network,
            "--network-alias", "db", "--publish", f"127.0.0.1:{running.pg_port}:5432",
            "--env", f"POSTGRES_PASSWORD=postgres{password}", "--env", "POSTGRES_DB=scorebox",
            "postgres:16-bookworm", "postgres",
        )  # fmt: skip
        assert db.returncode == 0, db.stderr
        broker = running.docker(
            "run", "--detach", "--name", f"{PREFIX}-redis", "--network", running.network,
            "--network-alias", "redis", "redis:7-bookworm", "redis-server",
        )  # fmt: skip
        assert broker.returncode == 0, broker.stderr
        _wait_for_postgres(running)
        for role in ("owner", *GRANTS):
            running.sql(f"CREATE ROLE {role} LOGIN PASSWORD '{role}{password}'")
        running.sql("GRANT CREATE ON SCHEMA public TO owner")
        yield running
    finally:
        for name in [*running.started, f"{PREFIX}-db", f"{PREFIX}-redis"]:
            (LOGS / f"{name}.log").write_text(running.logs(name))
            running.docker("rm", "-f", name)
        running.docker("network", "rm", running.network)
        running.timings["the module, set-up to tear-down"] = f"{time.monotonic() - begun:.0f} s"
        (LOGS / "timings.txt").write_text(
            "".join(f"{name}: {value}\n" for name, value in running.timings.items())
        )


def _url(role: str, password: str, where: str) -> str:
    """A role's URL; each role's password is its name and the module's password."""
    return f"postgresql+psycopg://{role}:{role}{password}@{where}/scorebox"


def _wait_for_postgres(pods: Pods, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            pods.sql("SELECT 1")
            return
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, pods.logs(f"{PREFIX}-db")
            time.sleep(0.5)


def _written(pods: Pods, job: int) -> tuple[int, int]:
    """The job's predictions, and for how many distinct rows (ledger.written)."""
    ((table, tag),) = pods.sql(f"SELECT table_name, model_tag FROM scorebox_jobs WHERE id = {job}")
    engine = create_engine(pods.url("postgres"))
    try:
        with engine.connect() as conn:
            return ledger.written(conn, Tables.build("predictions"), table, tag)
    finally:
        engine.dispose()


def _seed(pods: Pods, table: str, rows: int | None = None) -> None:
    """The user's feature table, loaded by the owner (`scorebox seed`)."""
    engine = create_engine(pods.url("owner"))
    try:
        with engine.begin() as conn:
            seed(conn, table, id_column="id", target_column="target", rows=rows)
    finally:
        engine.dispose()


def _waited(
    condition: Callable[[], bool], timeout: float, why: Callable[[], str], every: float = 0.5
) -> None:
    """Return once ``condition()`` holds; fail with ``why()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, why()
        time.sleep(every)


def test_the_migrate_job_migrates_with_the_owners_role(pods: Pods) -> None:
    name = pods.pod("Job/scorebox-migrate", "migrate")
    assert pods.wait(name, timeout=120) == 0, pods.logs(name)
    ((owner,),) = pods.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'scorebox_jobs'")
    assert owner == "owner"
    _seed(pods, "features")
    for role, grants in GRANTS.items():
        pods.sql(grants)
        pods.sql(CHECK_GRANT.format(role=role))


def test_the_training_job_registers_a_signed_version_from_an_empty_store(pods: Pods) -> None:
    name = pods.pod("Job/scorebox-training", "training")
    assert pods.wait(name, timeout=600) == 0, pods.logs(name)
    ((count, created_by),) = pods.sql("SELECT count(*), max(created_by) FROM scorebox_models")
    assert (count, created_by) == (1, "training")


@pytest.fixture(scope="module")
def running(pods: Pods) -> dict[str, str]:
    """The long-running pods, started once: the service, a worker and the dashboard."""
    return {
        "service": pods.pod("Deployment/scorebox-service", "service"),
        "worker": pods.pod("Deployment/scorebox-worker", "worker"),
        "dashboard": pods.pod("Deployment/scorebox-dashboard", "dashboard"),
    }


def test_every_probe_passes_once_the_pod_is_ready(pods: Pods, running: dict[str, str]) -> None:
    for name in running.values():
        probes = pods.started[name][0].probes
        budget = probes["startup"].period * probes["startup"].failure_threshold
        pods.until(name, "startup", True, timeout=budget)
        for kind in ("liveness", "readiness"):
            assert pods.probe(name, kind), f"{name}: {kind}\n" + pods.logs(name)[-3000:]
    # The service's store was empty (an emptyDir): it imported its version from the registry.
    ((tag,),) = pods.sql("SELECT tag FROM scorebox_models")
    listed = pods.docker("exec", running["service"], "ls", "/home/scorebox/bentoml/models/scorebox")
    assert tag.split(":")[1] in listed.stdout.split(), listed


def _scheduled(pods: Pods, suffix: str) -> None:
    """The schedule's CronJob runs once: it queues the scheduled task and exits 0."""
    name = pods.pod("CronJob/scorebox-schedule", "schedule", suffix)
    assert pods.wait(name, timeout=120) == 0, pods.logs(name)


def test_the_schedules_runs_need_the_workers_schedule_grants(
    pods: Pods, running: dict[str, str]
) -> None:
    worker = running["worker"]
    # Without them the worker cannot record the job the CronJob asks for, and says so.
    refused = "permission denied for table scorebox_jobs"
    # The model's training profile, for drift, is one of those grants too: without it, no drift.
    pods.provoked |= {refused, "permission denied for table scorebox_models"}

    def log() -> str:
        return pods.logs(worker)[-3000:]

    _scheduled(pods, "")
    _waited(lambda: refused in pods.logs(worker), 60, log)
    assert pods.sql("SELECT count(*) FROM scorebox_jobs") == [(0,)]
    pods.sql(SCHEDULE_GRANTS)
    _scheduled(pods, "-2")
    _waited(lambda: pods.job()[1] not in ("queued", "running"), 180, log)
    assert pods.job()[1:] == ("succeeded", ROWS, ROWS)
    assert _written(pods, pods.job()[0]) == (ROWS, ROWS)


def test_readiness_fails_while_postgres_is_away_and_passes_after(
    pods: Pods, running: dict[str, str]
) -> None:
    database = f"{PREFIX}-db"
    assert pods.docker("stop", database).returncode == 0
    try:
        for process in ("worker", "dashboard"):
            pods.until(running[process], "readiness", False, timeout=60)
        # The service keeps answering with the model it holds: a registry that is away takes
        # no pod out of the Service (its readiness is the model, README).
        assert pods.probe(running["service"], "readiness")
        for name in running.values():
            assert pods.probe(name, "liveness"), name
    finally:
        assert pods.docker("start", database).returncode == 0
    _wait_for_postgres(pods)
    for process in ("worker", "dashboard"):
        pods.until(running[process], "readiness", True, timeout=60)


def _chunks(pods: Pods, job: int, status: str) -> set[int]:
    rows = pods.sql(
        f"SELECT chunk_no FROM scorebox_chunks WHERE job_id = {job} AND status = '{status}'"
    )
    return {chunk for (chunk,) in rows}


def test_a_worker_stopped_mid_job_stops_in_its_grace_and_another_finishes_the_job(
    pods: Pods, running: dict[str, str]
) -> None:
    _seed(pods, "big", rows=BIG_ROWS)
    pods.sql("GRANT SELECT ON big TO worker")
    worker = running["worker"]
    # `kubectl exec deploy/scorebox-worker -- scorebox score` (README), with chunks of a second
    # or more, so the worker has chunks in hand when it is told to stop.
    submitted = pods.docker(
        "exec", "--env", f"SCOREBOX_CHUNK_SIZE={BIG_CHUNK}", worker,
        "scorebox", "score", "--table", "big",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = pods.job()[0]
    _waited(
        lambda: pods.job()[2] > 0 and bool(_chunks(pods, job, "running")),
        120,
        lambda: pods.logs(worker)[-3000:],
        every=0.1,
    )
    in_hand = _chunks(pods, job, "running")
    stopped, code = pods.stop(worker)
    pods.timings["worker: warm shutdown on SIGTERM"] = f"{stopped:.1f} s"
    _, status, scored, total = pods.job()
    assert status == "running" and scored < total, "the job ended before the worker stopped"
    grace = pods.started[worker][0].grace_seconds
    assert stopped < grace and code == 0, (stopped, code, pods.logs(worker)[-3000:])
    assert "Warm shutdown" in pods.logs(worker)
    # It finished the chunks it had in hand and left none running.
    assert in_hand <= _chunks(pods, job, "done") and not _chunks(pods, job, "running")
    begun = time.monotonic()
    other = pods.pod("Deployment/scorebox-worker", "worker", suffix="-2")
    _waited(lambda: pods.job()[1] != "running", 300, lambda: pods.logs(other)[-3000:])
    pods.timings["another worker finishes the job"] = f"{time.monotonic() - begun:.0f} s"
    assert pods.job()[1:] == ("succeeded", BIG_ROWS, BIG_ROWS)
    assert _written(pods, job) == (BIG_ROWS, BIG_ROWS)
    # Every chunk was claimed once: none was scored twice, none by the stopped worker after
    # it was told to stop and by the other as well.
    attempts = pods.sql(f"SELECT max(attempt), count(*) FROM scorebox_chunks WHERE job_id = {job}")
    assert attempts == [(1, -(-BIG_ROWS // BIG_CHUNK))]
    assert f"chunk {job}/" in pods.logs(other)


def test_the_service_drains_the_requests_in_flight_on_sigterm(
    pods: Pods, running: dict[str, str]
) -> None:
    service = running["service"]
    container, ports = pods.started[service]
    url = f"http://127.0.0.1:{ports[3000]}/predict"
    headers = {"Authorization": f"Bearer {container.env['SCOREBOX_API_TOKEN']}"}
    records = _records(pods) * 17  # nearly SCOREBOX_SERVICE_MAX_RECORDS: a second or more each
    spans: list[tuple[float, float, int | str]] = []  # each request's start, end and outcome
    stopping = threading.Event()

    def client() -> None:
        with httpx.Client(headers=headers, timeout=90) as http:
            while not stopping.is_set():
                begun = time.monotonic()
                try:
                    outcome: int | str = http.post(url, json={"records": records}).status_code
                except httpx.TransportError as exc:
                    outcome = repr(exc)
                spans.append((begun, time.monotonic(), outcome))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    _waited(lambda: len(spans) >= 4, 120, lambda: pods.logs(service)[-3000:], every=0.1)
    # The kubelet runs the preStop sleep (the requests keep coming: harsher than a cluster,
    # whose endpoints drop the pod meanwhile), then sends SIGTERM. No request starts after it.
    time.sleep(container.pre_stop_sleep)
    stopping.set()
    time.sleep(0.2)
    signalled = time.monotonic()
    stopped, code = pods.stop(service)
    for thread in threads:
        thread.join(90)
    in_flight = [outcome for begun, ended, outcome in spans if begun < signalled < ended]
    assert in_flight and set(in_flight) == {200}, in_flight
    assert {outcome for _, _, outcome in spans} == {200}, spans
    assert stopped < container.grace_seconds - container.pre_stop_sleep and code == 0, (
        stopped,
        code,
        pods.logs(service)[-3000:],
    )
    pods.timings["service: requests in flight at SIGTERM"] = str(len(in_flight))
    pods.timings["service: drained and stopped after SIGTERM"] = f"{stopped:.1f} s"


def test_the_service_logs_with_insert_and_prunes_only_with_select_and_delete(pods: Pods) -> None:
    pods.sql(LOG_GRANT)
    refused = "cannot delete rows past SCOREBOX_LOG_RETENTION_DAYS"
    pods.provoked.add(refused)
    service = pods.pod("Deployment/scorebox-service", "service", "-logging", pods.logging)
    container, ports = pods.started[service]
    pods.until(service, "startup", True, timeout=300)
    answer = httpx.post(
        f"http://127.0.0.1:{ports[3000]}/predict",
        json={"records": _records(pods)[:10]},
        headers={"Authorization": f"Bearer {container.env['SCOREBOX_API_TOKEN']}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    logged = "SELECT count(*) FROM scorebox_prediction_log"
    _waited(lambda: pods.sql(logged) == [(10,)], 60, lambda: pods.logs(service)[-3000:])
    # Rows past their retention (8.6 s) stay while the role may not select and delete them.
    _waited(lambda: refused in pods.logs(service), 60, lambda: pods.logs(service)[-3000:])
    assert pods.sql(logged) == [(10,)]
    pods.sql(PRUNE_GRANT)
    _waited(lambda: pods.sql(logged) == [(0,)], 60, lambda: pods.logs(service)[-3000:])


def _records(pods: Pods) -> list[dict[str, Any]]:
    """The example table's rows as /predict takes them."""
    ((rows,),) = pods.sql("SELECT json_agg(f ORDER BY id) FROM features f")
    return [
        {k: v for k, v in row.items() if k not in ("id", "target")}
        for row in (rows if isinstance(rows, list) else json.loads(rows))
    ]


def _mount_points(container: Container) -> set[str]:
    """The folders the runtime makes in the container's root for its volumes, and their
    parents (/var/run is a link to /run in the image)."""
    made = set()
    for mount in [*container.writable, *container.files]:
        path = Path(mount.replace("/var/run/", "/run/", 1))
        made |= {str(path), *(str(parent) for parent in path.parents if str(parent) != "/")}
    return made


def test_no_container_wrote_outside_its_empty_dirs(pods: Pods) -> None:
    assert len(pods.started) >= 12, sorted(pods.started)
    names = list(pods.started)
    # `docker diff` takes seconds a container: all at once.
    with ThreadPoolExecutor(8) as pool:
        diffs = list(pool.map(lambda name: pods.docker("diff", name), names))
        logs = list(pool.map(pods.logs, names))
    for name, diff, log in zip(names, diffs, logs, strict=True):
        assert diff.returncode == 0, diff.stderr
        paths = {line.split(" ", 1)[1] for line in diff.stdout.splitlines()}
        assert paths <= _mount_points(pods.started[name][0]), (name, diff.stdout)
        # A write refused by the read-only root that a library swallowed, or a missing grant
        # (but those the tests provoked).
        kept = "\n".join(
            line.lower()
            for line in log.splitlines()
            if not any(phrase in line for phrase in pods.provoked)
        )
        for refused in ("read-only file system", "permission denied", "failed to persist"):
            assert refused not in kept, (name, refused)
