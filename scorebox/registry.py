"""The model registry of record, in the database: every trained version (its metadata, metrics and
the model itself as a .bentomodel archive with its SHA-256), aliases pointing at versions, and
every move of an alias. The local BentoML store is a cache: a machine that reaches only the
database imports a version into it on demand, after checking the archive's SHA-256."""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, delete, desc, func, insert, inspect, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from scorebox.db import MODELS_TABLE, Tables
from scorebox.errors import ConfigError, ModelError, ScoreboxError

# An alias is a plain lower-case name; a BentoML version is 16 lower-case letters and digits.
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
# What a version or an alias may look like (BentoML's version rule: 63 characters at most).
VERSION = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$")
LATEST = "latest"


def who() -> str:
    """Who is acting: the operating-system user and the machine."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Resolved:
    """A model reference resolved to one exact version."""

    tag: str
    ref: str  # what was asked for: an alias, `latest` or the version
    alias: str | None  # the alias, when the reference was one


def registry_ready(engine: Engine) -> bool:
    """Whether the registry's tables exist (the schema is at 0005 or later)."""
    with engine.connect() as conn:
        return inspect(conn).has_table(MODELS_TABLE)


def _tables() -> Tables:
    return Tables.build("predictions")


def record(engine: Engine, tag: str, by: str | None = None) -> str:
    """Put the local BentoML model ``tag`` into the registry (again: a no-op if it is there);
    return its archive's SHA-256."""
    import bentoml

    from scorebox.modelinfo import ModelInfo

    model = bentoml.models.get(tag)
    info = ModelInfo.from_metadata(model.info.metadata, str(model.tag))
    with tempfile.TemporaryDirectory() as folder:
        path = bentoml.models.export_model(str(model.tag), str(Path(folder) / "model.bentomodel"))
        data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    models = _tables().models
    with engine.begin() as conn:
        known = conn.execute(select(models.c.tag).where(models.c.tag == str(model.tag))).first()
        if known is None:
            conn.execute(
                insert(models).values(
                    tag=str(model.tag),
                    name=model.tag.name,
                    task=info.task,
                    estimator=info.estimator,
                    metrics=info.metrics,
                    metadata=dict(model.info.metadata),
                    artifact=data,
                    artifact_sha256=digest,
                    created_by=by or who(),
                )
            )
    return digest


def _model_row(conn: Connection, tag: str, columns: list[str] | None = None) -> Any:
    models = _tables().models
    chosen = [models.c[c] for c in columns] if columns else [models]
    return conn.execute(select(*chosen).where(models.c.tag == tag)).mappings().first()


def resolve(engine: Engine, name: str, ref: str) -> Resolved:
    """The exact version ``ref`` names for model ``name``: an alias, ``latest`` (the newest
    registered version, or the local store's when the registry has none) or a version
    (``name:version`` or just ``version``)."""
    if ":" in ref:
        given, _, ref = ref.partition(":")
        if given != name:
            raise ScoreboxError(f"{given}:{ref} is not a version of model {name}")
    if not VERSION.match(ref):
        raise ScoreboxError(
            f"{ref[:80]!r} names no version of {name}: give a version, `latest` or an alias "
            "(`scorebox models list` shows them)"
        )
    tables = _tables()
    with engine.connect() as conn:
        if ref == LATEST:
            newest = conn.execute(
                select(tables.models.c.tag)
                .where(tables.models.c.name == name)
                .order_by(desc(tables.models.c.created_at), desc(tables.models.c.tag))
                .limit(1)
            ).scalar()
            if newest is not None:
                return Resolved(str(newest), ref, None)
            return Resolved(_local_latest(name), ref, None)
        alias = conn.execute(
            select(tables.aliases.c.tag).where(
                tables.aliases.c.name == name, tables.aliases.c.alias == ref
            )
        ).scalar()
    if alias is not None:
        return Resolved(str(alias), ref, ref)
    return Resolved(f"{name}:{ref}", ref, None)


def _local_latest(name: str) -> str:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return str(bentoml.models.get(f"{name}:latest").tag)
    except NotFound:
        raise ModelError(
            f"no model {name}:latest in the registry or the BentoML store; run `scorebox train`"
        ) from None


@contextmanager
def _store_lock() -> Iterator[None]:
    """One importer at a time per BentoML store (the service's workers start together)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    home = Path(BentoMLContainer.bentoml_home.get())
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".scorebox-import.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_local(engine: Engine | None, tag: str) -> Any:
    """The BentoML model ``tag`` from the local store, imported from the registry first when the
    store lacks it; the archive must hash to what the registry recorded."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(tag)
    except NotFound:
        pass
    if engine is None or not registry_ready(engine):
        raise ModelError(
            f"no model {tag} in the BentoML store; run `scorebox train` or set "
            "SCOREBOX_MODEL_NAME / SCOREBOX_MODEL_TAG (and BENTOML_HOME)"
        )
    with engine.connect() as conn:
        row = _model_row(conn, tag, ["artifact", "artifact_sha256"])
    if row is None:
        raise ModelError(
            f"no model {tag} in the BentoML store or the registry; `scorebox models list` shows "
            "the registered versions"
        )
    data = bytes(row["artifact"])
    digest = hashlib.sha256(data).hexdigest()
    if digest != row["artifact_sha256"]:
        raise ModelError(
            f"model {tag}: the registry's archive has SHA-256 {digest}, but "
            f"{row['artifact_sha256']} was recorded; refusing to import it"
        )
    with _store_lock():
        try:
            return bentoml.models.get(tag)
        except NotFound:
            pass
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.bentomodel"
            path.write_bytes(data)
            imported = bentoml.models.import_model(str(path))
    if str(imported.tag) != tag:
        raise ModelError(f"the registry's archive for {tag} holds {imported.tag}")
    return bentoml.models.get(tag)


def metadata_of(engine: Engine, tag: str) -> dict[str, Any]:
    """A registered version's BentoML metadata (a ScoreboxError if it is not registered)."""
    with engine.connect() as conn:
        row = _model_row(conn, tag, ["metadata"])
    if row is None:
        raise ScoreboxError(f"no model {tag} in the registry; `scorebox models list` shows them")
    return dict(row["metadata"])


def list_models(engine: Engine, name: str | None = None) -> list[dict[str, Any]]:
    """Registered versions, newest first, with the aliases pointing at each."""
    tables = _tables()
    models, aliases = tables.models, tables.aliases
    query = select(
        models.c.tag,
        models.c.name,
        models.c.task,
        models.c.estimator,
        models.c.metrics,
        models.c.created_by,
        models.c.created_at,
        func.length(models.c.artifact).label("size"),
    ).order_by(desc(models.c.created_at), desc(models.c.tag))
    if name is not None:
        query = query.where(models.c.name == name)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
        pointing: dict[str, list[str]] = {}
        for alias, tag in conn.execute(select(aliases.c.alias, aliases.c.tag)).all():
            pointing.setdefault(str(tag), []).append(str(alias))
    for row in rows:
        row["aliases"] = sorted(pointing.get(row["tag"], []))
    return rows


def show(engine: Engine, tag: str) -> dict[str, Any]:
    """One registered version: everything but the archive's bytes."""
    tables = _tables()
    with engine.connect() as conn:
        row = _model_row(
            conn,
            tag,
            [
                "tag",
                "name",
                "task",
                "estimator",
                "metrics",
                "metadata",
                "artifact_sha256",
                "created_by",
                "created_at",
            ],
        )
        if row is None:
            raise ScoreboxError(
                f"no model {tag} in the registry; `scorebox models list` shows them"
            )
        aliases = conn.execute(
            select(tables.aliases.c.alias).where(tables.aliases.c.tag == tag)
        ).scalars()
        shown = dict(row)
        shown["aliases"] = sorted(aliases)
    return shown


def _check_alias(alias: str) -> None:
    if alias == LATEST or not ALIAS.match(alias) or re.fullmatch(r"[a-z0-9]{16}", alias):
        raise ConfigError(
            f"alias {alias!r}: use a plain lower-case name such as champion or challenger "
            "(letters, digits, - and _; not `latest`, not a version)"
        )


def _move(
    conn: Connection,
    name: str,
    alias: str,
    to: str | None,
    action: str,
    reason: str | None,
    by: str,
) -> str | None:
    """Point ``alias`` at ``to`` (None: remove it) and record the move; return the old tag."""
    tables = _tables()
    aliases = tables.aliases
    where = and_(aliases.c.name == name, aliases.c.alias == alias)
    current = conn.execute(select(aliases.c.tag).where(where).with_for_update()).scalar()
    if current == to:
        return current
    if to is None:
        conn.execute(delete(aliases).where(where))
    elif current is None:
        conn.execute(insert(aliases).values(name=name, alias=alias, tag=to, moved_by=by))
    else:
        conn.execute(update(aliases).where(where).values(tag=to, moved_by=by, moved_at=func.now()))
    conn.execute(
        insert(tables.alias_moves).values(
            name=name,
            alias=alias,
            from_tag=current,
            to_tag=to,
            action=action,
            reason=reason,
            moved_by=by,
        )
    )
    return None if current is None else str(current)


def incompatibility(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why a service serving a version with metadata ``old`` cannot switch to one with
    ``new`` (another task, other features or classes: its callers would break), if it cannot."""
    if old.get("task") != new.get("task"):
        return f"it is {new.get('task')}, not {old.get('task')}"
    features = [(f["name"], f["kind"]) for f in old.get("features", [])]
    theirs = [(f["name"], f["kind"]) for f in new.get("features", [])]
    if features != theirs:
        changed = sorted({name for name, _ in set(features) ^ set(theirs)}) or ["their order"]
        return "its features differ (" + ", ".join(changed)[:200] + ")"
    if old.get("classes") != new.get("classes"):
        return f"its classes differ ({new.get('classes')} against {old.get('classes')})"
    return None


def set_alias(
    engine: Engine,
    alias: str,
    tag: str,
    reason: str | None = None,
    by: str | None = None,
    force: bool = False,
) -> str | None:
    """Point ``alias`` of the tag's model at registered version ``tag``; return where it
    pointed before. A version its services could not switch to (another task, other features
    or classes) is refused unless ``force``."""
    _check_alias(alias)
    name = tag.partition(":")[0]
    aliases = _tables().aliases
    try:
        with engine.begin() as conn:
            row = _model_row(conn, tag, ["tag", "metadata"])
            if row is None:
                raise ScoreboxError(
                    f"no model {tag} in the registry; `scorebox models list` shows the versions "
                    "(`scorebox models push TAG` records a local one)"
                )
            current = conn.execute(
                select(aliases.c.tag)
                .where(aliases.c.name == name, aliases.c.alias == alias)
                .with_for_update()
            ).scalar()
            if current is not None and current != tag and not force:
                old = _model_row(conn, str(current), ["metadata"])
                why = incompatibility(dict(old["metadata"]), dict(row["metadata"])) if old else None
                if why is not None:
                    raise ScoreboxError(
                        f"{alias} points at {current}; {tag} cannot replace it: {why}, so services "
                        f"that serve {alias} would break their callers (they refuse to switch). "
                        "Use another alias, or --force and restart those services"
                    )
            return _move(conn, name, alias, tag, "move", reason, by or who())
    except IntegrityError:
        raise ScoreboxError(
            f"alias {alias} was changed by someone else at the same moment; run the command again"
        ) from None


def remove_alias(engine: Engine, name: str, alias: str, by: str | None = None) -> str:
    """Remove ``alias`` of model ``name``; return the tag it pointed at."""
    with engine.begin() as conn:
        old = _move(conn, name, alias, None, "remove", None, by or who())
    if old is None:
        raise ScoreboxError(f"model {name} has no alias {alias!r}")
    return old


def history(engine: Engine, name: str, alias: str | None = None) -> list[dict[str, Any]]:
    """The moves of ``alias`` (or of every alias of model ``name``), oldest first."""
    moves = _tables().alias_moves
    query = select(moves).where(moves.c.name == name).order_by(moves.c.id)
    if alias is not None:
        query = query.where(moves.c.alias == alias)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def rollback(engine: Engine, name: str, alias: str, by: str | None = None) -> tuple[str, str]:
    """Move ``alias`` back one step: to the version it pointed at before its last move (a
    rollback undoes a move, so rolling back twice goes back two moves). Return (from, to)."""
    with engine.begin() as conn:
        tables = _tables()
        moves, aliases = tables.alias_moves, tables.aliases
        # Lock the alias (or, if it was removed, its history) before reading where it went.
        conn.execute(
            select(aliases.c.tag)
            .where(aliases.c.name == name, aliases.c.alias == alias)
            .with_for_update()
        ).all()
        conn.execute(
            select(moves.c.id)
            .where(moves.c.name == name, moves.c.alias == alias)
            .order_by(desc(moves.c.id))
            .limit(1)
            .with_for_update()
        ).all()
        rows = conn.execute(
            select(moves.c.to_tag, moves.c.action)
            .where(moves.c.name == name, moves.c.alias == alias)
            .order_by(moves.c.id)
        ).all()
        stack: list[str | None] = []
        for to_tag, action in rows:
            if action == "rollback":
                if stack:
                    stack.pop()
            else:
                stack.append(to_tag)
        if len(stack) < 2 or stack[-2] is None:
            raise ScoreboxError(
                f"alias {alias!r} of model {name} has no earlier version to roll back to "
                f"(`scorebox models history {name}` shows its moves)"
            )
        target = str(stack[-2])
        old = _move(conn, name, alias, target, "rollback", None, by or who())
    return (old if old is not None else "(removed)"), target
