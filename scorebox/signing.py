"""Signed model versions: what makes a version trustworthy is an Ed25519 signature by a key that
only training holds, over a manifest of the version (its tag, every file's SHA-256 and size, its
scorebox metadata).

Training signs (:func:`sign`) with the private key at SCOREBOX_SIGNING_KEY; every other process
holds public keys only (SCOREBOX_TRUSTED_KEYS, :class:`TrustedKeys`) and calls :func:`verify`
before it extracts, unpickles or serves anything of a version. The trust list comes from the
settings (inline keys, files or folders of ``*.pub`` files), never from the database or the
artifact, and files are read again when they change, so keys rotate without a restart.

Why Ed25519 from `cryptography` rather than the `model-signing` package: the manifest is ours (it
carries the metadata the rest of scorebox reads, so one signature covers both), verifying is one
call with no network and no certificate chain, and `cryptography` is already a dependency of the
stack (pip, BentoML); model-signing's key mode signs files only and pulls in sigstore's stack.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from scorebox.errors import ConfigError, TrustError

log = logging.getLogger(__name__)

# The file beside a version's files that holds its signed manifest (never listed in it).
SIGNATURE_FILE = "scorebox-signature.json"
SCHEME = "scorebox-ed25519-v1"
PUBLIC_PREFIX = "scorebox-ed25519"
# Domain separation: these bytes never mean anything else to a holder of the key.
_CONTEXT = b"scorebox model manifest v1\n"
# A signed manifest holds the metadata (features, profile): generous, but bounded before parsing.
MAX_SIGNATURE_BYTES = 8 * 2**20
_MAX_KEY_FILE_BYTES = 64 * 2**10
_RECHECK_SECONDS = 1.0


def key_id(public: Ed25519PublicKey) -> str:
    """A public key's short name: the first 16 hex digits of its raw bytes' SHA-256."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_line(public: Ed25519PublicKey, comment: str = "") -> str:
    """A public key as one line of a ``.pub`` file (or a SCOREBOX_TRUSTED_KEYS entry)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    line = f"{PUBLIC_PREFIX} {base64.b64encode(raw).decode()}"
    return f"{line} {comment}".rstrip()


def parse_public(line: str) -> Ed25519PublicKey:
    """A ``scorebox-ed25519 BASE64 [comment]`` line as a public key (ValueError if it is not)."""
    parts = line.split()
    if len(parts) < 2 or parts[0] != PUBLIC_PREFIX:
        raise ValueError(f"expected `{PUBLIC_PREFIX} BASE64`, got {line[:60]!r}")
    try:
        raw = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise ValueError("the key is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, this one {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


# --- the private key (training only) --------------------------------------------------------


def create_key(path: Path) -> Ed25519PrivateKey:
    """A new private key written to ``path`` (PKCS#8 PEM, readable by its owner only), with its
    public key beside it as ``<path>.pub``; an existing file is never overwritten."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists already; a signing key is never overwritten") from None
    except OSError as exc:
        raise ConfigError(f"cannot write a signing key to {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public_path(path).write_text(public_line(key.public_key(), f"created {_today()}") + "\n")
    return key


def public_path(private: Path) -> Path:
    return private.with_name(private.name + ".pub")


def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def load_key(path: Path) -> Ed25519PrivateKey:
    """The private key at ``path`` (a ConfigError naming SCOREBOX_SIGNING_KEY if unusable)."""
    try:
        if path.stat().st_size > _MAX_KEY_FILE_BYTES:
            raise ConfigError(f"SCOREBOX_SIGNING_KEY: {path} is too large to be a key")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"SCOREBOX_SIGNING_KEY: no key at {path}; create one with `scorebox keys create`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"SCOREBOX_SIGNING_KEY: cannot read {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"SCOREBOX_SIGNING_KEY: {path} is not an unencrypted PEM private key ({exc})"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"SCOREBOX_SIGNING_KEY: {path} is not an Ed25519 key")
    return key


# --- manifests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """What a signature vouches for: the version's tag, its files and its scorebox metadata."""

    tag: str
    files: dict[str, FileEntry]
    metadata: dict[str, Any]
    key: str  # the id of the key that signed it

    @property
    def unpacked_bytes(self) -> int:
        return sum(entry.size for entry in self.files.values())


def folder_files(folder: Path) -> dict[str, FileEntry]:
    """Every regular file under ``folder`` but the signature, by POSIX relative path."""
    files: dict[str, FileEntry] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise TrustError(
                f"{folder} holds a symlink ({relative}); refusing to sign it", "unsafe"
            )
        if not path.is_file() or relative == SIGNATURE_FILE:
            continue
        digest = hashlib.sha256()
        with path.open("rb") as source:
            while block := source.read(2**20):
                digest.update(block)
        files[relative] = FileEntry(digest.hexdigest(), path.stat().st_size)
    return files


def sign(
    key: Ed25519PrivateKey, tag: str, files: dict[str, FileEntry], metadata: dict[str, Any]
) -> str:
    """The signature envelope (JSON text) of version ``tag`` with these files and metadata."""
    manifest = json.dumps(
        {
            "scheme": SCHEME,
            "tag": tag,
            "files": {name: [e.sha256, e.size] for name, e in sorted(files.items())},
            "metadata": metadata,
        },
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    )
    signature = key.sign(_CONTEXT + manifest.encode())
    return json.dumps(
        {
            "scheme": SCHEME,
            "key": key_id(key.public_key()),
            "manifest": manifest,
            "signature": base64.b64encode(signature).decode(),
        },
        sort_keys=True,
    )


def verify(envelope: str | bytes | None, tag: str, trusted: TrustedKeys) -> Manifest:
    """The manifest of version ``tag`` if ``envelope`` is a valid signature of it by a trusted
    key; else a TrustError naming the version and the reason."""
    if envelope is None or not envelope:
        raise TrustError(f"{tag} is not signed", "unsigned")
    if len(envelope) > MAX_SIGNATURE_BYTES:
        raise TrustError(
            f"{tag}: its signature is larger than {MAX_SIGNATURE_BYTES} bytes", "malformed"
        )
    try:
        outer = json.loads(envelope)
        scheme, signer = outer["scheme"], outer["key"]
        manifest_text, signature = outer["manifest"], base64.b64decode(outer["signature"])
        if scheme != SCHEME or not isinstance(manifest_text, str) or not isinstance(signer, str):
            raise ValueError(scheme)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise TrustError(f"{tag}: its signature is malformed", "malformed") from None
    keys = trusted.keys()
    if not keys:
        raise TrustError(
            f"{tag}: no trusted keys are configured (SCOREBOX_TRUSTED_KEYS: "
            f"{trusted.described()}), so no version can be verified",
            "unknown_key",
        )
    public = keys.get(signer)
    if public is None:
        raise TrustError(
            f"{tag} is signed by key {signer[:16]!r}, which is not trusted (SCOREBOX_TRUSTED_KEYS)",
            "unknown_key",
        )
    try:
        public.key.verify(signature, _CONTEXT + manifest_text.encode())
    except InvalidSignature:
        raise TrustError(
            f"{tag}: its signature does not match its manifest (key {signer})", "bad_signature"
        ) from None
    try:
        body = json.loads(manifest_text)
        files = {
            str(name): FileEntry(str(digest), int(size))
            for name, (digest, size) in body["files"].items()
        }
        signed_tag, metadata = body["tag"], body["metadata"]
        if body["scheme"] != SCHEME or not isinstance(metadata, dict):
            raise ValueError("scheme")
    except (ValueError, KeyError, TypeError):
        raise TrustError(f"{tag}: its signed manifest is malformed", "malformed") from None
    if signed_tag != tag:
        raise TrustError(
            f"{tag}: its signature is for {str(signed_tag)[:200]}, another version", "wrong_version"
        )
    return Manifest(tag, files, metadata, signer)


# --- public keys (every process) ------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKey:
    key: Ed25519PublicKey
    source: str  # where it was read: a file, or "SCOREBOX_TRUSTED_KEYS"


class TrustedKeys:
    """The public keys named by SCOREBOX_TRUSTED_KEYS: comma-separated entries, each an inline
    ``scorebox-ed25519 BASE64`` key, a ``.pub`` file or a folder of them. Files are read again
    (at most once a second) when they change; ``generation`` counts the changes."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.generation = 0
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._checked = -1e9
        self._keys: dict[str, TrustedKey] = {}

    def described(self) -> str:
        return self.spec or "(empty)"

    def _entries(self) -> list[str]:
        return [part.strip() for part in self.spec.split(",") if part.strip()]

    def _files(self) -> list[Path]:
        found: list[Path] = []
        for entry in self._entries():
            if entry.startswith(PUBLIC_PREFIX + " "):
                continue
            path = Path(entry).expanduser()
            if path.is_dir():
                found += sorted(p for p in path.glob("*.pub") if p.is_file())
            else:
                found.append(path)
        return found

    def _stamp_now(self) -> tuple[Any, ...]:
        stamp: list[Any] = [self.spec]
        for path in self._files():
            try:
                info = path.stat()
                stamp.append((str(path), info.st_mtime_ns, info.st_size))
            except OSError:
                stamp.append((str(path), None))
        return tuple(stamp)

    def keys(self) -> dict[str, TrustedKey]:
        """The trusted keys by id, read again if their files changed."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= _RECHECK_SECONDS:
                self._checked = now
                stamp = self._stamp_now()
                if stamp != self._stamp:
                    self._keys = self._read()
                    self._stamp = stamp
                    self.generation += 1
            return self._keys

    def _read(self) -> dict[str, TrustedKey]:
        keys: dict[str, TrustedKey] = {}
        for entry in self._entries():
            if entry.startswith(PUBLIC_PREFIX + " "):
                self._add(keys, entry, "SCOREBOX_TRUSTED_KEYS")
        for path in self._files():
            try:
                if path.stat().st_size > _MAX_KEY_FILE_BYTES:
                    log.error("trusted keys: %s is too large to hold keys; ignored", path)
                    continue
                text = path.read_text(errors="replace")
            except OSError as exc:
                log.error("trusted keys: cannot read %s (%s); ignored", path, exc.strerror)
                continue
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip() and not line.lstrip().startswith("#"):
                    self._add(keys, line.strip(), f"{path}:{number}")
        return keys

    @staticmethod
    def _add(keys: dict[str, TrustedKey], line: str, source: str) -> None:
        try:
            public = parse_public(line)
        except ValueError as exc:
            log.error("trusted keys: %s: %s; ignored", source, exc)
            return
        keys.setdefault(key_id(public), TrustedKey(public, source))


def add_trusted(folder: Path, public: Ed25519PublicKey, comment: str = "") -> Path:
    """Write ``public`` into the folder of trusted keys as ``<key id>.pub``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key_id(public)}.pub"
    path.write_text(public_line(public, comment) + "\n")
    return path


def signing_key(path: Path, trusted_folder: Path | None, create: bool) -> Ed25519PrivateKey:
    """The key training signs with. When ``create`` (SCOREBOX_SIGNING_KEY was not set) and there
    is none yet, a key pair is created there and its public key added to ``trusted_folder``
    (the default trust folder, when SCOREBOX_TRUSTED_KEYS was not set either)."""
    if create and not path.exists():
        key = create_key(path)
        where = ""
        if trusted_folder is not None:
            where = (
                f"; its public key is trusted from {add_trusted(trusted_folder, key.public_key())}"
            )
        log.info("created a signing key at %s%s", path, where)
        return key
    return load_key(path)
