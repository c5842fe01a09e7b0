"""Story tests: the README walked through as a new user would, faults injected into a running
stack, attacks on the registry and the service, real tables from PyPI packages, and the real
images. Each runs whole processes for tens of seconds, so every test here is marked ``slow``:
the inner loop (`scripts/test -m "not slow"`) leaves them to the full suite and CI."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.slow)
