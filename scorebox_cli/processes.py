"""Running the service (`bentoml serve`) and workers (`celery`) as local processes, and stopping
them with everything they started. Used by `scorebox demo`, the tests and the benchmarks."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

# The repository root (bentofile.yaml, the worker package) and the environment's scripts.
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def child_env(extra: Mapping[str, str] | None = None, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment a scorebox child process starts with: this process's, without any
    SCOREBOX_* setting (nor the names in ``drop``), plus ``extra``; so a child sees exactly the
    settings it is given, never ones left over in the caller's environment."""
    prefixes = ("SCOREBOX_", *drop)
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)} | dict(extra or {})


def free_port(preferred: int = 0) -> int:
    """``preferred`` if nobody listens on it right now, else any such TCP port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)


def _private_home(env: dict[str, str], home: Path) -> dict[str, str]:
    """A BENTOML_HOME of this server's own that shares the model and Bento stores.

    `bentoml serve` empties <BENTOML_HOME>/prometheus_multiproc_dir when it starts, so two servers
    on one home wipe each other's metrics; each gets its own directory for them.
    """
    shared = Path(env.get("BENTOML_HOME") or Path.home() / "bentoml")
    home.mkdir(parents=True, exist_ok=True)
    for store in ("models", "bentos"):
        (shared / store).mkdir(parents=True, exist_ok=True)
        link = home / store
        if not link.exists():
            link.symlink_to(shared / store, target_is_directory=True)
    return env | {"BENTOML_HOME": str(home)}


def _limit_memory(limit: int | None) -> Callable[[], None] | None:
    """A pre-exec hook capping the address space of the process and all it starts, so a memory
    regression fails a test instead of exhausting the machine."""
    if limit is None:
        return None

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return cap


@contextmanager
def serving(
    env: dict[str, str],
    log: Path,
    timeout: float = 90,
    target: str = ".",
    port: int | None = None,
    memory_limit: int | None = None,
) -> Iterator[str]:
    """Run `bentoml serve <target>` from the repository root; yield its URL once /readyz answers.
    ``memory_limit`` caps each process's address space (bytes)."""
    port = port or free_port()
    env = _private_home(env, log.parent / f"bentoml-home-{port}")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_limit_memory(memory_limit),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bentoml serve not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        stop(process)


@contextmanager
def working(
    env: dict[str, str], log: Path, *, concurrency: int = 2, beat: bool = False, timeout: float = 60
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `celery -A worker worker` (with beat when ``beat``) until the block ends."""
    command = [str(BIN / "celery"), "-A", "worker", "worker", "--loglevel", "INFO"]
    command += ["--concurrency", str(concurrency), "--without-mingle", "--without-gossip"]
    if beat:
        command += ["--beat", "--schedule", str(log.with_suffix(".schedule"))]
    with log.open("ab") as out:
        # Only this worker's lines say it is ready: the log may hold an earlier worker's.
        start = out.tell()
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while b" ready." not in log.read_bytes()[start:]:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield process
    finally:
        stop(process)
