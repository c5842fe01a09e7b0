"""The model catalog: which version a reference names, what that version is, and its files on this
machine, each answer checked against the version's signature.

The registry of record is in the database (scorebox_models: every version's archive with its
signed manifest); the local BentoML store is a cache. Every read goes through a trusted key
(SCOREBOX_TRUSTED_KEYS): ``latest`` is the newest *signed* version, a version's metadata is read
from its signed manifest, a local copy is used only when its files are the ones signed, and an
archive is imported only after its signature checks, member by member within size caps
(scorebox/archive.py). The store keeps only SCOREBOX_MODEL_STORE_KEEP imported versions.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, desc, func, insert, inspect, select
from sqlalchemy.engine import Connection

from scorebox.archive import Limits, extract, read_file
from scorebox.db import MODELS_TABLE, Tables
from scorebox.errors import ModelError, ScoreboxError, TrustError
from scorebox.modelinfo import ModelInfo
from scorebox.signing import MAX_SIGNATURE_BYTES, SIGNATURE_FILE, Manifest, TrustedKeys, verify

log = logging.getLogger(__name__)

# What a version or an alias may look like (BentoML's version rule: 63 characters at most).
VERSION = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$")
LATEST = "latest"
# How many of the newest versions `latest` looks through for a signed one, a round.
_LATEST_PAGE = 20
_IMPORTS_INDEX = "scorebox-imports.json"


@dataclass(frozen=True)
class Resolved:
    """A model reference resolved to one exact version."""

    tag: str
    ref: str  # what was asked for: an alias, `latest` or the version
    alias: str | None  # the alias, when the reference was one


@dataclass(frozen=True)
class Version:
    """A version's files on this machine, whose signature was verified."""

    tag: str
    path: Path
    manifest: Manifest

    @property
    def info(self) -> ModelInfo:
        return ModelInfo.from_metadata(self.manifest.metadata, self.tag)

    def has(self, name: str) -> bool:
        return name in self.manifest.files

    def read(self, name: str) -> bytes:
        """File ``name`` of the version, refused unless it is the file that was signed."""
        entry = self.manifest.files.get(name)
        if entry is None:
            raise TrustError(f"{self.tag}: {name} is not among its signed files", "tampered")
        path = self.path / name
        try:
            size = path.stat().st_size
            if size != entry.size:
                raise TrustError(
                    f"model {self.tag}: {name} has {size:,} bytes, but {entry.size:,} were "
                    "signed; refusing to load it",
                    "tampered",
                )
            data = path.read_bytes()
        except FileNotFoundError:
            raise TrustError(
                f"{self.tag}: {name} is missing from {self.path}", "tampered"
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            raise TrustError(
                f"model {self.tag}: {name} has SHA-256 {digest}, but {entry.sha256} was signed; "
                "refusing to load it",
                "tampered",
            )
        return data


def _tables() -> Tables:
    return Tables.build("predictions")


def _read_signature(folder: Path) -> bytes | None:
    path = folder / SIGNATURE_FILE
    try:
        if path.stat().st_size > MAX_SIGNATURE_BYTES:
            return b"x" * (MAX_SIGNATURE_BYTES + 1)  # verify() says it is too large
        return path.read_bytes()
    except FileNotFoundError:
        return None


class Catalog:
    """The versions of the registry (``engine``; None: the local store alone), read through
    ``trusted`` keys, imported within ``limits``, ``keep`` imported versions on disk."""

    def __init__(
        self, engine: Engine | None, trusted: TrustedKeys, limits: Limits, keep: int = 8
    ) -> None:
        self.engine = engine
        self.trusted = trusted
        self.limits = limits
        self.keep = keep
        # (tag, SHA-256 of its signature, trust generation) -> verified or why not
        self._checked: dict[tuple[str, str, int], str | None] = {}

    @classmethod
    def from_settings(cls, settings: Any, engine: Engine | None) -> Catalog:
        return cls(
            engine,
            TrustedKeys(settings.trusted_keys_spec),
            Limits(
                settings.model_max_archive_bytes,
                settings.model_max_file_bytes,
                settings.model_max_unpacked_bytes,
            ),
            settings.model_store_keep,
        )

    def ready(self) -> bool:
        """Whether the registry's tables exist (the schema is at 0005 or later)."""
        if self.engine is None:
            return False
        with self.engine.connect() as conn:
            return inspect(conn).has_table(MODELS_TABLE)

    # --- which version ------------------------------------------------------------------

    def resolve(self, name: str, ref: str) -> Resolved:
        """The exact version ``ref`` names for model ``name``: an alias, ``latest`` (the newest
        version signed by a trusted key, or the local store's when there is no registry) or a
        version (``name:version`` or just ``version``)."""
        if ":" in ref:
            given, _, ref = ref.partition(":")
            if given != name:
                raise ScoreboxError(f"{given[:80]}:{ref[:80]} is not a version of model {name}")
        if not VERSION.match(ref):
            raise ScoreboxError(
                f"{ref[:80]!r} names no version of {name}: give a version, `latest` or an alias "
                "(`scorebox models list` shows them)"
            )
        if self.engine is None or not self.ready():
            return self._resolve_local(name, ref)
        tables = _tables()
        with self.engine.connect() as conn:
            if ref == LATEST:
                newest = self._newest_signed(conn, name)
                if newest is not None:
                    return Resolved(newest, ref, None)
                return self._resolve_local(name, ref)
            alias = conn.execute(
                select(tables.aliases.c.tag).where(
                    tables.aliases.c.name == name, tables.aliases.c.alias == ref
                )
            ).scalar()
        if alias is not None:
            return Resolved(str(alias), ref, ref)
        return Resolved(f"{name}:{ref}", ref, None)

    def _resolve_local(self, name: str, ref: str) -> Resolved:
        import bentoml
        from bentoml.exceptions import BentoMLException, NotFound

        try:
            return Resolved(str(bentoml.models.get(f"{name}:{ref}").tag), ref, None)
        except (NotFound, BentoMLException):
            where = "the registry or " if self.engine is not None else ""
            raise ModelError(
                f"no model {name}:{ref} in {where}the BentoML store; run `scorebox train` or set "
                "SCOREBOX_MODEL_NAME / SCOREBOX_MODEL_TAG (and BENTOML_HOME)"
            ) from None

    def _newest_signed(self, conn: Connection, name: str) -> str | None:
        """The newest version of ``name`` whose signature a trusted key verifies."""
        models = _tables().models
        digest = (
            func.encode(func.sha256(func.convert_to(models.c.signature, "UTF8")), "hex")
            if conn.dialect.name == "postgresql"
            else models.c.signature
        )
        self.trusted.keys()  # read again if the trusted keys changed
        generation = self.trusted.generation
        offset = 0
        while True:
            rows = conn.execute(
                select(models.c.tag, digest.label("digest"))
                .where(models.c.name == name)
                .order_by(desc(models.c.created_at), desc(models.c.tag))
                .offset(offset)
                .limit(_LATEST_PAGE)
            ).all()
            for tag, signed in rows:
                if signed is None:
                    continue
                key = (str(tag), hashlib.sha256(str(signed).encode()).hexdigest(), generation)
                if key not in self._checked:
                    if len(self._checked) > 4096:
                        self._checked.clear()
                    self._checked[key] = self._why_not(conn, str(tag))
                if self._checked[key] is None:
                    return str(tag)
            if len(rows) < _LATEST_PAGE:
                return None
            offset += _LATEST_PAGE

    def _why_not(self, conn: Connection, tag: str) -> str | None:
        try:
            self._row_manifest(conn, tag)
        except TrustError as exc:
            return str(exc)
        return None

    # --- what a version is --------------------------------------------------------------

    def _row_manifest(self, conn: Connection, tag: str) -> Manifest:
        models = _tables().models
        row = conn.execute(
            select(func.length(models.c.signature).label("size")).where(models.c.tag == tag)
        ).first()
        if row is None:
            raise ModelError(
                f"no model {tag} in the registry; `scorebox models list` shows the versions"
            )
        if row.size is not None and row.size > MAX_SIGNATURE_BYTES:
            raise TrustError(f"{tag}: its signature is too large", "malformed")
        envelope = conn.execute(select(models.c.signature).where(models.c.tag == tag)).scalar()
        return verify(envelope, tag, self.trusted)

    def manifest(self, tag: str) -> Manifest:
        """The verified manifest of registered version ``tag`` (from the registry, else from the
        local store); a TrustError says why it cannot be trusted."""
        if self.engine is not None and self.ready():
            models = _tables().models
            with self.engine.connect() as conn:
                known = conn.execute(select(models.c.tag).where(models.c.tag == tag)).first()
                if known is not None:
                    return self._row_manifest(conn, tag)
        return self.local(tag).manifest  # not registered: perhaps in this machine's store

    def info(self, tag: str) -> ModelInfo:
        """What version ``tag`` is, from its signed manifest."""
        return ModelInfo.from_metadata(self.manifest(tag).metadata, tag)

    # --- its files here -----------------------------------------------------------------

    def local(self, tag: str) -> Version:
        """Version ``tag``'s files in the local store, verified; imported from the registry
        first when the store lacks them (or holds an import that no longer verifies)."""
        folder = _folder(tag)
        if folder is not None:
            try:
                version = Version(tag, folder, verify(_read_signature(folder), tag, self.trusted))
                self._touch(tag)
                return version
            except TrustError:
                if not self._imported(tag):
                    raise  # training's own copy: the operator's to look at, never removed
                log.warning("removing %s from the local store: it no longer verifies", tag)
                with _store_lock():
                    self._forget(tag)
        return self._import(tag)

    def _import(self, tag: str) -> Version:
        if self.engine is None or not self.ready():
            raise ModelError(
                f"no model {tag} in the BentoML store; run `scorebox train` or set "
                "SCOREBOX_MODEL_NAME / SCOREBOX_MODEL_TAG (and BENTOML_HOME)"
            )
        models = _tables().models
        with self.engine.connect() as conn:
            manifest = self._row_manifest(conn, tag)  # before a byte of the archive is read
            self.limits.check_manifest(manifest)
            size = conn.execute(
                select(func.length(models.c.artifact)).where(models.c.tag == tag)
            ).scalar()
            if size is None or size > self.limits.archive_bytes:
                raise TrustError(
                    f"{tag}: its archive has {size or 0:,} bytes, more than "
                    f"SCOREBOX_MODEL_MAX_ARCHIVE_BYTES ({self.limits.archive_bytes:,})",
                    "too_large",
                )
            row = conn.execute(
                select(models.c.artifact, models.c.signature, models.c.artifact_sha256).where(
                    models.c.tag == tag
                )
            ).first()
        assert row is not None
        data, envelope = bytes(row.artifact), str(row.signature)
        digest = hashlib.sha256(data).hexdigest()
        if digest != row.artifact_sha256:  # damage in transit or at rest; trust is the signature's
            raise TrustError(
                f"model {tag}: the registry's archive has SHA-256 {digest}, but "
                f"{row.artifact_sha256} was recorded; refusing to import it",
                "tampered",
            )
        with _store_lock():
            folder = _folder(tag)
            if folder is not None:  # imported while this process waited
                return Version(tag, folder, verify(_read_signature(folder), tag, self.trusted))
            staging = Path(tempfile.mkdtemp(prefix=".scorebox-import-", dir=_home()))
            try:
                extract(data, manifest, staging / "files", self.limits)
                (staging / "files" / SIGNATURE_FILE).write_text(envelope)
                with _model_store().register(tag) as target:
                    for item in (staging / "files").iterdir():
                        shutil.move(item, Path(target) / item.name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._touch(tag, imported=True)
            self._prune(keep_also=tag)
        folder = _folder(tag)
        if folder is None:
            raise ModelError(f"{tag} was imported, but is not in the store now")
        return Version(tag, folder, manifest)

    def discard(self, tag: str) -> None:
        """Remove version ``tag`` from the local store if this catalog imported it (one of its
        files did not verify: the next use imports it again); training's own copy stays."""
        if self._imported(tag):
            log.warning("removing %s from the local store: its files do not verify", tag)
            with _store_lock():
                self._forget(tag)

    def _index(self) -> dict[str, float]:
        try:
            data = json.loads((_store_dir() / _IMPORTS_INDEX).read_text())
            return {str(k): float(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def _write_index(self, index: dict[str, float]) -> None:
        path = _store_dir() / _IMPORTS_INDEX
        temporary = path.with_name(path.name + f".{os.getpid()}")
        temporary.write_text(json.dumps(index))
        os.replace(temporary, path)

    def _imported(self, tag: str) -> bool:
        return tag in self._index()

    def _touch(self, tag: str, imported: bool = False) -> None:
        """Note that an imported version was used now (the least recently used go first)."""
        if not imported and tag not in self._index():
            return  # training's own copy, or a Bento's: never pruned
        try:
            with _store_lock():
                index = self._index()
                index[tag] = time.time()
                self._write_index(index)
        except OSError as exc:
            log.warning("cannot record the use of %s in the store: %s", tag, exc.strerror)

    def _forget(self, tag: str) -> None:
        with _store_lock():
            folder = _folder(tag)
            if folder is not None:  # BentoML finds another `latest` when this one is gone
                shutil.rmtree(folder, ignore_errors=True)
            index = self._index()
            index.pop(tag, None)
            self._write_index(index)

    def _prune(self, keep_also: str) -> None:
        """Remove the least recently used imported versions past ``keep``."""
        index = self._index()
        for tag in sorted(index, key=index.__getitem__, reverse=True)[self.keep :]:
            if tag != keep_also:
                log.info("removing %s from the local store (SCOREBOX_MODEL_STORE_KEEP)", tag)
                self._forget(tag)

    def check(self, tag: str) -> str:
        """Verify version ``tag`` completely: its signature, and every file of its archive in
        the registry (or of its local copy without a registry); what was checked, in words."""
        if self.engine is not None and self.ready():
            models = _tables().models
            with self.engine.connect() as conn:
                manifest = self._row_manifest(conn, tag)
                size = conn.execute(
                    select(func.length(models.c.artifact)).where(models.c.tag == tag)
                ).scalar()
                if size is None or size > self.limits.archive_bytes:
                    raise TrustError(f"{tag}: its archive is too large", "too_large")
                data = conn.execute(select(models.c.artifact).where(models.c.tag == tag)).scalar()
            with tempfile.TemporaryDirectory() as folder:
                extract(bytes(data or b""), manifest, Path(folder) / "files", self.limits)
            where = "its archive in the registry"
        else:
            version = self.local(tag)
            manifest = version.manifest
            for name in manifest.files:
                version.read(name)
            where = f"its files in {version.path}"
        source = self.trusted.keys()[manifest.key].source
        return (
            f"{tag}: signed by key {manifest.key} (trusted from {source}); {len(manifest.files)} "
            f"files of {where} match it"
        )

    def read_file(self, tag: str, name: str) -> bytes | None:
        """One file of a registered version's archive (the evaluation plot, say), verified."""
        if self.engine is None:
            return None
        models = _tables().models
        with self.engine.connect() as conn:
            manifest = self._row_manifest(conn, tag)
            if name not in manifest.files:
                return None
            size = conn.execute(
                select(func.length(models.c.artifact)).where(models.c.tag == tag)
            ).scalar()
            if size is None or size > self.limits.archive_bytes:
                raise TrustError(f"{tag}: its archive is too large", "too_large")
            data = conn.execute(select(models.c.artifact).where(models.c.tag == tag)).scalar()
        return read_file(bytes(data or b""), manifest, name, self.limits)

    # --- recording a version ------------------------------------------------------------

    def publish(self, tag: str, by: str) -> str:
        """Put the local, signed version ``tag`` into the registry (a no-op if it is there);
        return its archive's SHA-256. The database records when, and who (its role)."""
        import bentoml

        if self.engine is None:
            raise ModelError("no registry to record the model in (SCOREBOX_DATABASE_URL)")
        model = bentoml.models.get(tag)
        envelope = _read_signature(Path(model.path))
        if envelope is None:
            raise TrustError(f"{tag} is not signed; `scorebox models push` signs it", "unsigned")
        metadata = dict(model.info.metadata)
        info = ModelInfo.from_metadata(metadata, str(model.tag))
        with tempfile.TemporaryDirectory() as folder:
            path = bentoml.models.export_model(str(model.tag), str(Path(folder) / "m.bentomodel"))
            data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        models = _tables().models
        with self.engine.begin() as conn:
            known = conn.execute(select(models.c.tag).where(models.c.tag == str(model.tag))).first()
            if known is None:
                conn.execute(
                    insert(models).values(
                        tag=str(model.tag),
                        name=model.tag.name,
                        task=info.task,
                        estimator=info.estimator,
                        metrics=info.metrics,
                        metadata=metadata,
                        artifact=data,
                        artifact_sha256=digest,
                        signature=envelope.decode(),
                        created_by=by,
                    )
                )
        return digest

    # --- listing ------------------------------------------------------------------------

    def listing(self, name: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Registered versions, newest first, with their aliases and whether they verify:
        ``trusted`` is None for a version signed by a trusted key, else why it is not; its
        metrics and estimator come from the signed manifest (None when unreadable)."""
        if self.engine is None:
            return []
        tables = _tables()
        models, aliases = tables.models, tables.aliases
        query = select(
            models.c.tag,
            models.c.name,
            models.c.created_by,
            models.c.created_at,
            func.length(models.c.artifact).label("size"),
        ).order_by(desc(models.c.created_at), desc(models.c.tag))
        if name is not None:
            query = query.where(models.c.name == name)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
            pointing: dict[str, list[str]] = {}
            for alias, tag in conn.execute(select(aliases.c.alias, aliases.c.tag)).all():
                pointing.setdefault(str(tag), []).append(str(alias))
            for row in rows:
                row["aliases"] = sorted(pointing.get(row["tag"], []))
                row.update(self._described(conn, row["tag"]))
        return rows

    def _described(self, conn: Connection, tag: str) -> dict[str, Any]:
        """What a listing shows of a version: its trust, and its signed metadata if readable."""
        shown: dict[str, Any] = {"trusted": None, "unreadable": None, "info": None}
        try:
            manifest = self._row_manifest(conn, tag)
        except (TrustError, ModelError) as exc:
            shown["trusted"] = str(exc)
            return shown
        shown["key"] = manifest.key
        try:
            shown["info"] = ModelInfo.from_metadata(manifest.metadata, tag)
        except ModelError as exc:
            shown["unreadable"] = str(exc)
        return shown

    def show(self, tag: str) -> dict[str, Any]:
        """One registered version: who and when (as the database recorded), its aliases, its
        archive's SHA-256, its trust and signed metadata."""
        if self.engine is None:
            raise ModelError("no registry (SCOREBOX_DATABASE_URL)")
        tables = _tables()
        models = tables.models
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(
                        models.c.tag,
                        models.c.name,
                        models.c.artifact_sha256,
                        models.c.created_by,
                        models.c.created_at,
                    ).where(models.c.tag == tag)
                )
                .mappings()
                .first()
            )
            if row is None:
                raise ScoreboxError(
                    f"no model {tag} in the registry; `scorebox models list` shows them"
                )
            shown = dict(row)
            shown["aliases"] = sorted(
                conn.execute(
                    select(tables.aliases.c.alias).where(tables.aliases.c.tag == tag)
                ).scalars()
            )
            shown.update(self._described(conn, tag))
        return shown


def _home() -> Path:
    from bentoml._internal.configuration.containers import BentoMLContainer

    home = Path(BentoMLContainer.bentoml_home.get())
    home.mkdir(parents=True, exist_ok=True)
    return home


def _model_store() -> Any:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.model_store.get()


_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def _folder(tag: str) -> Path | None:
    """Version ``tag``'s folder in the model store, if there is one (found without parsing its
    model.yaml: what is trusted of a version comes from its signature)."""
    name, _, version = tag.partition(":")
    if not _NAME.match(name) or not VERSION.match(version):
        return None
    folder = _store_dir() / name / version
    return folder if folder.is_dir() else None


def _store_dir() -> Path:
    """The model store's folder (where BentoML keeps one folder a model name; files there are
    not models to it)."""
    folder = Path(_model_store()._path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


_held = threading.local()


@contextmanager
def _store_lock() -> Iterator[None]:
    """One writer at a time per model store (the service's workers start together, and servers
    may share a store); a thread that holds it may take it again."""
    if getattr(_held, "depth", 0):
        _held.depth += 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    with (_store_dir() / ".scorebox-import.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0
            fcntl.flock(lock, fcntl.LOCK_UN)
