"""compose.yaml and the Dockerfile checked statically, the one list of the project's packages,
and every container's command run as a local process with the environment compose gives it.
The real images and stack run in tests/stories/test_in_containers.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tomllib
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import yaml

from scorebox_cli.processes import BIN, ROOT, child_env, free_port, serving, stop, working
from tests.conftest import PG_HOST, TrainedModel, new_schema, process_env


def _compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing: .ci/run installs Debian's docker-compose")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    return found


def _config(env_file: Path) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [_compose(), "--env-file", str(env_file), "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"ENV_FILE": str(env_file)},
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)  # type: ignore[no-any-return]


def test_compose_file_is_valid_with_the_example_env() -> None:
    done = subprocess.run(
        [_compose(), "--env-file", ".env.example", "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        env=os.environ | {"ENV_FILE": ".env.example"},
    )
    assert done.returncode == 0, done.stderr


def test_compose_refuses_to_start_without_a_database_password(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = subprocess.run(
        [_compose(), "--env-file", str(empty), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
        | {"ENV_FILE": str(empty)},
    )
    assert done.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in done.stderr


def test_compose_wires_healthchecks_order_and_restarts() -> None:
    services = _config(ROOT / ".env.example")["services"]
    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        "training",
        "service",
        "worker",
        "beat",
        "dashboard",
    }
    for name in ("postgres", "redis", "service"):
        assert "healthcheck" in services[name], name
    for name in ("postgres", "redis", "service", "worker", "beat", "dashboard"):
        assert services[name]["restart"] == "unless-stopped", name
    assert services["dashboard"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["training"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["service"]["depends_on"]["training"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["worker"]["depends_on"]["service"]["condition"] == "service_healthy"
    redis = services["redis"]
    assert (
        "--appendonly" in redis["command"]
        and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    )
    assert redis["volumes"] == ["redisdata:/data:rw"]
    assert services["service"]["stop_signal"] == "SIGTERM"
    text = (ROOT / "compose.yaml").read_text()
    assert "change-me" not in text and "PASSWORD:" not in text.replace("POSTGRES_PASSWORD:", "")


def test_dockerfile_passes_hadolint_and_runs_as_non_root() -> None:
    dockerfile = ROOT / "Dockerfile"
    done = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "error", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout
    users = [
        line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("USER")
    ]
    assert users and users[-1] not in ("root", "0")


def _local(
    service: dict,
    database: str,
    schema: str,
    redis_url: str,
    port: int,
    home: Path,  # type: ignore[type-arg]
) -> tuple[list[str], dict[str, str]]:
    """A compose service's command and environment, with host names mapped to this machine."""
    env = {k: str(v) for k, v in service["environment"].items()}
    options = quote(f"-csearch_path={schema}")
    env["SCOREBOX_DATABASE_URL"] = (
        env["SCOREBOX_DATABASE_URL"].replace(
            "@postgres:5432/scorebox", f"@{PG_HOST}:5432/{database}"
        )
        + f"?options={options}"
    )
    env["SCOREBOX_REDIS_URL"] = redis_url
    env["SCOREBOX_SERVICE_URL"] = env["SCOREBOX_SERVICE_URL"].replace(
        "service:3000", f"127.0.0.1:{port}"
    )
    env["BENTOML_HOME"] = str(home)
    command = service["command"]
    command = command.split() if isinstance(command, str) else list(command)
    command = [
        {
            "3000": str(port),
            "0.0.0.0": "127.0.0.1",
            "/tmp/celerybeat-schedule": str(home / "beat"),
        }.get(part, part)
        for part in command
    ]
    base = child_env(drop=("BENTOML_HOME",))
    return command, base | env


@pytest.mark.slow
def test_every_container_command_runs_as_a_local_process(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    schema, _ = new_schema(database, "compose")
    services = _config(ROOT / ".env.example")["services"]
    port = free_port()
    home = tmp_path / "bentoml"

    def local(name: str) -> tuple[list[str], dict[str, str]]:
        return _local(services[name], database, schema, redis_url, port, home)

    for name in ("migrate", "training"):
        command, env = local(name)
        command[0] = str(BIN / command[0])
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, (name, done.stderr[-2000:])
    assert "registered scorebox:" in done.stdout and "bento: scorebox:" in done.stdout

    command, env = local("service")
    assert command[:3] == ["bentoml", "serve", "."]
    with serving(env, tmp_path / "service.log", port=port):
        worker_command, worker_env = local("worker")
        assert worker_command[:4] == ["celery", "-A", "worker", "worker"]
        beat_command, beat_env = local("beat")
        assert beat_command[:4] == ["celery", "-A", "worker", "beat"]
        with working(worker_env, tmp_path / "worker.log"):
            beat_log = (tmp_path / "beat.log").open("wb")
            with beat_log:
                beat = subprocess.Popen(
                    [str(BIN / beat_command[0]), *beat_command[1:]],
                    cwd=ROOT,
                    env=beat_env,
                    stdout=beat_log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                scored = subprocess.run(
                    [str(BIN / "scorebox"), "score", "--wait"],
                    cwd=ROOT,
                    env=worker_env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                assert scored.returncode == 0, scored.stderr
                assert "succeeded - 569 scored" in scored.stdout
                assert beat.poll() is None, (tmp_path / "beat.log").read_text()
                # Beat says it started a moment after its banner; the job may finish first.
                deadline = time.monotonic() + 30
                while "beat: Starting" not in (tmp_path / "beat.log").read_text():
                    assert beat.poll() is None, (tmp_path / "beat.log").read_text()
                    assert time.monotonic() < deadline, (tmp_path / "beat.log").read_text()
                    time.sleep(0.2)
            finally:
                stop(beat)

    command, env = local("dashboard")
    assert command[:2] == ["scorebox", "dashboard"]
    dashboard_port = free_port()
    command = [
        str(BIN / command[0]),
        *(str(dashboard_port) if p == "8080" else p for p in command[1:]),
    ]
    with (tmp_path / "dashboard.log").open("wb") as out:
        dashboard = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        for _ in range(100):
            try:
                page = httpx.get(f"http://127.0.0.1:{dashboard_port}/jobs", timeout=2)
                break
            except httpx.TransportError:
                assert dashboard.poll() is None, (tmp_path / "dashboard.log").read_text()
                time.sleep(0.2)
        assert page.status_code == 200 and "succeeded" in page.text
    finally:
        stop(dashboard)


_IMPORTED = """
import sys, importlib.metadata as md
import service.service  # what `bentoml serve` imports in the serving image
names = {m.split(".")[0] for m in list(sys.modules)}
found = md.packages_distributions()
print("\\n".join(sorted({d for n in names for d in found.get(n, [])})))
"""


def _requirement_name(text: str) -> str:
    import re

    return re.split(r"[\\[<>=!~; ]", text.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _closure(declared: list[str]) -> set[str]:
    """The ``declared`` requirements and every distribution they require, transitively (with
    the extras a declared requirement names, such as ``psycopg[binary]``)."""
    import re
    from importlib import metadata

    seen: set[str] = set()
    todo = [(_requirement_name(r), set(re.findall(r"\[([^]]*)\]", r)[:1])) for r in declared]
    while todo:
        name, extras = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            wanted = re.search(r"extra == ['\"]([^'\"]+)['\"]", requirement)
            if wanted is None or wanted.group(1) in extras:
                todo.append((_requirement_name(requirement), set()))
    return seen


# Imported only when present, by code that works without them.
OPTIONAL = {
    "charset-normalizer",  # numpy.f2py
    "setuptools",  # _distutils_hack, which setuptools' .pth file loads in every interpreter
}


def test_the_bento_declares_every_package_the_service_imports(trained: TrainedModel) -> None:
    done = subprocess.run(
        [str(BIN / "python"), "-c", _IMPORTED],
        cwd=ROOT,
        env=process_env(trained.settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    imported = {_requirement_name(d) for d in done.stdout.split()}
    declared = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["packages"]
    installed = _closure(declared)
    missing = sorted(imported - installed - OPTIONAL - {"scorebox"})
    assert not missing, f"bentofile.yaml lacks packages the service imports: {missing}"


def project_packages() -> set[str]:
    """Every top-level package of the project: a folder of the repository with __init__.py,
    tests aside."""
    return {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}


def test_one_list_of_packages_names_every_package() -> None:
    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project_packages()
    assert {"scorebox", "training", "service", "worker", "dashboard"} <= packages
    # pyproject's find pattern is the one list the distribution (and the image) is built from.
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {name.split(".")[0] for name in find_packages(ROOT, include=include)} == packages
    assert set(config["tool"]["mypy"]["packages"]) == packages
    assert set(config["tool"]["importlinter"]["root_packages"]) == packages
    # The Dockerfile copies the tree, never a list of packages.
    copies = [
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY")
    ]
    assert "COPY . ./" in copies
    assert not [line for line in copies if any(f" {name}" in line for name in packages)]


_SERVICE_MODULES = """
import os, sys
import service.service
root = sys.argv[1]
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None) or ""
    if path.startswith(root + os.sep) and os.sep + ".venv" + os.sep not in path:
        print(os.path.relpath(path, root))
"""


def service_modules(env: dict[str, str]) -> set[str]:
    """The project's files `import service.service` loads (paths from the repository root)."""
    done = subprocess.run(
        [str(BIN / "python"), "-c", _SERVICE_MODULES, str(ROOT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_the_bento_carries_exactly_the_packages_the_service_imports(
    trained: TrainedModel,
) -> None:
    import pathspec

    imported = service_modules(process_env(trained.settings))
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    include = pathspec.PathSpec.from_lines("gitwildmatch", bentofile["include"])
    exclude = pathspec.PathSpec.from_lines("gitwildmatch", bentofile.get("exclude", []))
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    carried = {f for f in tracked if include.match_file(f) and not exclude.match_file(f)}
    assert imported <= carried, sorted(imported - carried)
    top = {Path(f).parts[0] for f in imported if len(Path(f).parts) > 1}
    assert {Path(f).parts[0] for f in carried if f.endswith(".py")} == top
    assert top == {"scorebox", "service"}
