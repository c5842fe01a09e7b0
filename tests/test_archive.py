"""scorebox/archive.py alone: a signed version's xz tar is extracted only as its manifest lists
it, within the caps, leaving nothing behind when refused (the registry-level attacks, through a
real service, are in tests/stories/test_trust.py)."""

from __future__ import annotations

import hashlib
import io
import lzma
import resource
import tarfile
import time
from pathlib import Path

import pytest

from scorebox.archive import Limits, extract, read_file
from scorebox.errors import TrustError
from scorebox.signing import FileEntry, Manifest

FILES = {"model.yaml": b"name: m\n", "saved_model.pkl": b"\x80\x05data", "sub/notes.txt": b"hi"}
ROOMY = Limits(archive_bytes=2**20, file_bytes=2**20, unpacked_bytes=2**20)


def _manifest(files: dict[str, bytes]) -> Manifest:
    entries = {n: FileEntry(hashlib.sha256(d).hexdigest(), len(d)) for n, d in files.items()}
    return Manifest("m:1", entries, {}, "key")


def _archive(*members: tarfile.TarInfo | tuple[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return lzma.compress(raw.getvalue(), preset=0)


def _special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def xz_bomb(name: str, size: int) -> bytes:
    """An xz tar whose member ``name`` is ``size`` bytes of zeros (a few hundred KB)."""
    compressor = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=0)
    info = tarfile.TarInfo(name)
    info.size = size
    parts = [compressor.compress(info.tobuf(format=tarfile.PAX_FORMAT))]
    zeros = bytes(2**20)
    for _ in range(size // len(zeros)):
        parts.append(compressor.compress(zeros))
    parts.append(compressor.compress(bytes(size % len(zeros) + (-size % 512))))
    parts.append(compressor.compress(bytes(1024)))
    return b"".join([*parts, compressor.flush()])


def test_the_listed_files_are_extracted_and_one_can_be_read_alone(tmp_path: Path) -> None:
    data = _archive(*FILES.items())
    extract(data, _manifest(FILES), tmp_path / "out", ROOMY)
    for name, content in FILES.items():
        assert (tmp_path / "out" / name).read_bytes() == content
    assert read_file(data, _manifest(FILES), "model.yaml", ROOMY) == FILES["model.yaml"]
    assert read_file(data, _manifest(FILES), "absent.txt", ROOMY) is None


@pytest.mark.parametrize(
    ("members", "reason", "words"),
    [
        ([("../escape", b"x")], "unsafe", "unsafe path"),
        ([("/tmp/escape", b"x")], "unsafe", "unsafe path"),
        ([_special("link", tarfile.SYMTYPE, "/etc/passwd")], "tampered", "not a regular file"),
        ([_special("hard", tarfile.LNKTYPE, "model.yaml")], "tampered", "not a regular file"),
        ([_special("pipe", tarfile.FIFOTYPE)], "tampered", "not a regular file"),
        ([("extra.bin", b"unlisted")], "tampered", "does not list"),
        ([("model.yaml", b"name: other\n")], "tampered", ""),
        ([("model.yaml", FILES["model.yaml"])], "tampered", "twice"),
    ],
)
def test_anything_but_the_signed_files_refuses_the_whole_archive(
    tmp_path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], reason: str, words: str
) -> None:
    data = _archive(*FILES.items(), *members)
    with pytest.raises(TrustError, match=f"^m:1: .*{words}") as refused:
        extract(data, _manifest(FILES), tmp_path / "out", ROOMY)
    assert refused.value.reason in (reason, "unsafe", "tampered")
    assert not (tmp_path / "out").exists(), "a refused archive leaves nothing behind"
    assert not (tmp_path / "escape").exists()


def test_a_missing_file_and_a_damaged_archive_are_refused(tmp_path: Path) -> None:
    short = _archive(("model.yaml", FILES["model.yaml"]))
    with pytest.raises(TrustError, match=r"saved_model\.pkl"):
        extract(short, _manifest(FILES), tmp_path / "a", ROOMY)
    whole = _archive(*FILES.items())
    with pytest.raises(TrustError):
        extract(whole[: len(whole) // 2], _manifest(FILES), tmp_path / "b", ROOMY)
    with pytest.raises(TrustError):
        extract(b"not xz at all", _manifest(FILES), tmp_path / "c", ROOMY)
    assert not any(tmp_path.iterdir())


def test_caps_refuse_before_reading_and_a_bomb_costs_little(tmp_path: Path) -> None:
    data = _archive(*FILES.items())
    for limits, words in [
        (Limits(len(data) - 1, 2**20, 2**20), "SCOREBOX_MODEL_MAX_ARCHIVE_BYTES"),
        (Limits(2**20, 5, 2**20), "SCOREBOX_MODEL_MAX_FILE_BYTES"),
        (Limits(2**20, 2**20, 15), "SCOREBOX_MODEL_MAX_UNPACKED_BYTES"),
    ]:
        with pytest.raises(TrustError, match=words) as refused:
            extract(data, _manifest(FILES), tmp_path / "out", limits)
        assert refused.value.reason == "too_large"
    # 256 MiB of zeros where the manifest lists 6 bytes: reading stops at what it allows.
    bomb = xz_bomb("saved_model.pkl", 256 * 2**20)
    assert len(bomb) < 400_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    with pytest.raises(TrustError):
        extract(
            bomb, _manifest({"saved_model.pkl": FILES["saved_model.pkl"]}), tmp_path / "b", ROOMY
        )
    assert time.perf_counter() - began < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB
