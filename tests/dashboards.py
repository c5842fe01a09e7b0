"""Helpers for tests of the dashboard: a real `scorebox dashboard` process, Debian's chromium
headless looking at its pages, and the tables of a page read back as text."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import httpx

from scorebox_cli.processes import BIN, free_port, stop

CHROMIUM = [
    "/usr/bin/chromium",
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def dashboard(
    env: dict[str, str], log: Path, timeout: float = 30, failures: bool = False
) -> Iterator[str]:
    """Run `scorebox dashboard` until the block ends; yield its URL once it answers. Unless the
    test makes pages fail (``failures``), its log must hold no traceback at the end (a page that
    failed with a 500 leaves one)."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "scorebox"), "dashboard", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.get(f"{url}/jobs/0", timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield url
    finally:
        stop(process)
    assert failures or "Traceback" not in log.read_text(), log.read_text()


class Browser:
    """Chromium headless with a profile of its own (so a cookie it is given stays), saving a
    screenshot of each page it is shown into ``folder``."""

    def __init__(self, folder: Path, width: int = 1280, height: int = 1800) -> None:
        self.folder = folder
        self.profile = Path(tempfile.mkdtemp(prefix="scorebox-chromium-"))
        self.flags = [
            *CHROMIUM,
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
        ]

    def screenshot(self, url: str, name: str) -> Path:
        """A PNG of the page at ``url``, saved as ``name``.png."""
        shot = self.folder / f"{name}.png"
        subprocess.run(
            [*self.flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True
        )
        assert shot.read_bytes()[:4] == b"\x89PNG"
        return shot

    def dom(self, url: str) -> str:
        """The page's DOM after the browser loaded it (and followed any redirect)."""
        return subprocess.run(
            [*self.flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
        ).stdout


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append((dict(attrs).get("class") or "", []))
        elif tag in ("td", "th") and self.rows:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1][1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(html: str) -> list[tuple[str, list[str]]]:
    """Every table row of a page: (its class, the text of each cell)."""
    parser = _Tables()
    parser.feed(html)
    return parser.rows


def svg_texts(html: str) -> list[str]:
    """The text of every <text> element (what the charts write) of a page, in order."""

    class Texts(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[str] = []
            self.inside = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "text":
                self.inside = True
                self.found.append("")

        def handle_endtag(self, tag: str) -> None:
            if tag == "text":
                self.inside = False

        def handle_data(self, data: str) -> None:
            if self.inside:
                self.found[-1] += data

    parser = Texts()
    parser.feed(html)
    return parser.found
