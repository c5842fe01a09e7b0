"""Reading a version's ``.bentomodel`` archive (an xz-compressed tar) from the registry without
trusting it: only after its signature was verified, and even then every member is checked against
the signed manifest as it streams by, with caps on the archive's size, each member's size, the
bytes unpacked and the decompressor's memory, so no archive can cost more than the caps.

Only regular files listed in the manifest (with exactly their signed size and SHA-256) are
written; a symlink, hard link, device, absolute or ``..`` path, a file listed twice or not at all
refuses the whole archive, and nothing of it is kept.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import posixpath
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from scorebox.errors import TrustError
from scorebox.signing import MAX_SIGNATURE_BYTES, SIGNATURE_FILE, Manifest

_BLOCK = 2**20
# What tar headers between two members may take (PAX and GNU long-name records included).
_HEADER_ALLOWANCE = 2**20
_DECOMPRESSOR_MEMORY = 256 * 2**20
_MAX_MEMBERS = 10_000


@dataclass(frozen=True)
class Limits:
    """Caps on one archive: SCOREBOX_MODEL_MAX_ARCHIVE_BYTES, _FILE_BYTES, _UNPACKED_BYTES."""

    archive_bytes: int
    file_bytes: int
    unpacked_bytes: int

    def check_manifest(self, manifest: Manifest) -> None:
        """Refuse a signed manifest whose files alone pass the caps."""
        for name, entry in manifest.files.items():
            if entry.size > self.file_bytes:
                raise TrustError(
                    f"{manifest.tag}: {name[:100]} has {entry.size:,} bytes, more than "
                    f"SCOREBOX_MODEL_MAX_FILE_BYTES ({self.file_bytes:,})",
                    "too_large",
                )
        if manifest.unpacked_bytes > self.unpacked_bytes:
            raise TrustError(
                f"{manifest.tag}: its files hold {manifest.unpacked_bytes:,} bytes, more than "
                f"SCOREBOX_MODEL_MAX_UNPACKED_BYTES ({self.unpacked_bytes:,})",
                "too_large",
            )


class _Unxz(io.RawIOBase):
    """The decompressed bytes of an xz stream, never more than its current ``allowance``."""

    def __init__(self, data: bytes, tag: str) -> None:
        self._data = memoryview(data)
        self._at = 0
        self._tag = tag
        self._xz = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=_DECOMPRESSOR_MEMORY)
        self.allowance = _HEADER_ALLOWANCE

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.allowance <= 0:
            raise TrustError(
                f"{self._tag}: its archive holds more than its manifest lists", "too_large"
            )
        want = min(len(buffer), _BLOCK, self.allowance)
        out = b""
        try:
            while not out and not self._xz.eof:
                if self._xz.needs_input:
                    if self._at >= len(self._data):
                        break
                    chunk = self._data[self._at : self._at + _BLOCK]
                    self._at += len(chunk)
                    out = self._xz.decompress(chunk, max_length=want)
                else:
                    out = self._xz.decompress(b"", max_length=want)
        except lzma.LZMAError as exc:
            raise TrustError(
                f"{self._tag}: its archive is not valid xz ({exc})", "unsafe"
            ) from None
        self.allowance -= len(out)
        buffer[: len(out)] = out
        return len(out)


def _name(member: tarfile.TarInfo, tag: str) -> str:
    """A member's path, refused unless it is a plain relative path inside the folder."""
    raw = member.name
    name = posixpath.normpath(raw).lstrip("/") if raw not in ("", ".") else "."
    if (
        "\x00" in raw
        or "\\" in raw
        or raw.startswith("/")
        or name == ".."
        or name.startswith("../")
        or len(raw) > 1024
    ):
        raise TrustError(f"{tag}: its archive holds an unsafe path {raw[:100]!r}", "unsafe")
    return name


def _members(data: bytes, manifest: Manifest, limits: Limits) -> Iterator[tuple[str, IO[bytes]]]:
    """(name, stream) of each file of the archive that the manifest lists, checked as they are
    read (the caller reads each stream to its end); raises on anything else."""
    tag = manifest.tag
    if len(data) > limits.archive_bytes:
        raise TrustError(
            f"{tag}: its archive has {len(data):,} bytes, more than "
            f"SCOREBOX_MODEL_MAX_ARCHIVE_BYTES ({limits.archive_bytes:,})",
            "too_large",
        )
    limits.check_manifest(manifest)
    source = _Unxz(data, tag)
    try:
        with tarfile.open(fileobj=source, mode="r|") as archive:
            yield from _walk(archive, source, manifest)
    except tarfile.TarError as exc:
        raise TrustError(f"{tag}: its archive is damaged ({exc})", "unsafe") from None


def _walk(
    archive: tarfile.TarFile, source: _Unxz, manifest: Manifest
) -> Iterator[tuple[str, IO[bytes]]]:
    tag = manifest.tag
    seen: set[str] = set()
    count = 0
    while True:
        source.allowance = _HEADER_ALLOWANCE
        member = archive.next()
        if member is None:
            break
        count += 1
        if count > _MAX_MEMBERS:
            raise TrustError(f"{tag}: its archive holds too many members", "unsafe")
        name = _name(member, tag)
        if member.isdir():
            continue
        if not member.isfile():
            raise TrustError(
                f"{tag}: its archive holds {name[:100]!r}, which is not a regular file", "unsafe"
            )
        if name in seen:
            raise TrustError(f"{tag}: its archive holds {name[:100]!r} twice", "unsafe")
        seen.add(name)
        if name == SIGNATURE_FILE:  # the registry's copy is the one verified
            if member.size > MAX_SIGNATURE_BYTES:
                raise TrustError(f"{tag}: its archive's signature file is too large", "too_large")
            source.allowance += member.size
            _drain(archive.extractfile(member))
            continue
        entry = manifest.files.get(name)
        if entry is None:
            raise TrustError(
                f"{tag}: its archive holds {name[:100]!r}, which its signature does not list",
                "tampered",
            )
        if member.size != entry.size:
            raise TrustError(
                f"{tag}: {name[:100]} has {member.size:,} bytes in the archive, "
                f"{entry.size:,} when it was signed",
                "tampered",
            )
        source.allowance += member.size
        stream = archive.extractfile(member)
        if stream is None:
            raise TrustError(f"{tag}: cannot read {name[:100]!r} from its archive", "unsafe")
        checked = _Checked(stream, entry.sha256, f"{tag}: {name[:100]}")
        yield name, cast(IO[bytes], checked)
        checked.finish()
    missing = sorted(set(manifest.files) - seen)
    if missing:
        raise TrustError(
            f"{tag}: its archive lacks {', '.join(m[:100] for m in missing[:3])}, which its "
            "signature lists",
            "tampered",
        )


def _drain(stream: Any) -> None:
    if stream is not None:
        while stream.read(_BLOCK):
            pass


class _Checked(io.RawIOBase):
    """A member's bytes, hashed as they are read; :meth:`finish` checks the hash."""

    def __init__(self, stream: IO[bytes], sha256: str, what: str) -> None:
        self._stream = stream
        self._digest = hashlib.sha256()
        self._sha256 = sha256
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(min(len(buffer), _BLOCK))
        self._digest.update(data)
        buffer[: len(data)] = data
        return len(data)

    def finish(self) -> None:
        _drain(self)
        if self._digest.hexdigest() != self._sha256:
            raise TrustError(f"{self._what} is not the file that was signed", "tampered")


def extract(data: bytes, manifest: Manifest, destination: Path, limits: Limits) -> None:
    """Write the archive's files into ``destination`` (a new folder), each checked against the
    signed manifest; on any problem nothing is left there."""
    destination.mkdir(parents=True)
    try:
        for name, stream in _members(data, manifest, limits):
            target = destination.joinpath(*name.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("xb") as out:
                shutil.copyfileobj(stream, out, _BLOCK)
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


def read_file(data: bytes, manifest: Manifest, name: str, limits: Limits) -> bytes | None:
    """One file of the archive (None if the manifest does not list it), checked like the rest:
    the archive is read to its end, so a damaged or unsigned remainder still refuses it."""
    found: bytes | None = None
    for member, stream in _members(data, manifest, limits):
        if member == name:
            found = stream.read()
    return found
