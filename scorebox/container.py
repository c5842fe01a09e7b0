"""The image's entrypoint (`python -m scorebox.container COMMAND...`): say in one line what the
container's edge got wrong before the command trips over it, then become the command.

A named volume made by another user (or a bind mount of a root-owned folder) is mounted read-write
where the non-root user keeps its model store or keys; BentoML would stop with a traceback
inside its store, `bentoml serve` before any scorebox code runs. Read-only mounts are left alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The setting that moves each folder compose mounts a volume on (the keys' defaults are folders
# under ~/.config/scorebox).
_CONFIG = Path.home() / ".config" / "scorebox"
_DEFAULT_SETTINGS = {
    _CONFIG / "signing": "SCOREBOX_SIGNING_KEY",
    _CONFIG / "trusted": "SCOREBOX_TRUSTED_KEYS",
}


def _unescape(field: str) -> str:
    """A path as /proc/self/mountinfo writes it (octal escapes for space, tab, newline, \\)."""
    return field.encode().decode("unicode_escape")


def read_write_mounts(mountinfo: str) -> list[Path]:
    """The mount points mounted read-write, from the text of /proc/self/mountinfo."""
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 5 and "rw" in fields[5].split(","):
            points.append(Path(_unescape(fields[4])))
    return points


def unwritable(mounts: list[Path], home: Path) -> list[Path]:
    """The read-write mounts in ``home`` this process cannot write."""
    return [
        path
        for path in mounts
        if path.is_relative_to(home) and path != home and not os.access(path, os.W_OK | os.X_OK)
    ]


def _setting(path: Path) -> str:
    # BENTOML_HOME is BentoML's own variable, read by BentoML; scorebox's settings do not hold it.
    if path == Path(os.environ.get("BENTOML_HOME", "~/bentoml")).expanduser():
        return "BENTOML_HOME"
    return _DEFAULT_SETTINGS.get(path, "the volume's mount point")


def main() -> None:
    """Check the mounts, then exec the command given as arguments."""
    if len(sys.argv) < 2:
        sys.exit("usage: python -m scorebox.container COMMAND [ARGUMENT...]")
    mounts = read_write_mounts(Path("/proc/self/mountinfo").read_text())
    for path in unwritable(mounts, Path.home()):
        uid = os.getuid()
        sys.exit(
            f"error: uid {uid} cannot write {path} (a volume made by another user?): give the "
            f"volume to uid {uid} (chown -R {uid} on it) or set {_setting(path)} to a place "
            "it can write"
        )
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
