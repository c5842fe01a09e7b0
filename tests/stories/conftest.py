"""Story tests: the README walked through as a new user would, faults injected into a running
stack, attacks on the registry and the service, real tables from PyPI packages, and the real
images. Each runs whole processes for tens of seconds, so every test here is marked ``slow``:
the inner loop (`scripts/test -m "not slow"`) leaves them to the full suite and CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.docker.stack import build_app_image, engine_env

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def docker_env() -> dict[str, str]:
    """This machine's environment pointed at the tests' Docker engine, with the stand-in base
    images built (tests/docker/): for the container tests."""
    return engine_env(dict(os.environ))


@pytest.fixture(scope="session")
def app_image(docker_env: dict[str, str]) -> str:
    """The scorebox image (the Dockerfile's), built once a run for the container tests; its
    layers are what `docker compose up --build` reuses."""
    return build_app_image(docker_env)
