"""Aliases of model versions (champion, challenger, ...): moving, removing and rolling them back,
and their history. On PostgreSQL the history is written by a trigger (migration 0007), so every
change of an alias is recorded however it was made; this module tells the trigger what a move
is (move, rollback or remove), why, and who the client says it is. Which version an alias names
is the catalog's to answer (scorebox/catalog.py)."""

from __future__ import annotations

import getpass
import os
import re
import socket
from typing import Any

from sqlalchemy import Engine, and_, delete, desc, func, insert, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from scorebox.catalog import LATEST, Catalog
from scorebox.db import Tables
from scorebox.errors import ConfigError, ModelError, ScoreboxError

# An alias is a plain lower-case name; a BentoML version is 16 lower-case letters and digits.
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def who() -> str:
    """Who is acting, as the client says: the operating-system user and the machine."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _tables() -> Tables:
    return Tables.build("predictions")


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
    recorded_by_trigger = conn.dialect.name == "postgresql"
    if recorded_by_trigger:
        conn.execute(
            text(
                "SELECT set_config('scorebox.alias_action', :action, true), "
                "set_config('scorebox.alias_reason', :reason, true), "
                "set_config('scorebox.actor', :actor, true)"
            ),
            {"action": action, "reason": reason or "", "actor": by},
        )
    if to is None:
        conn.execute(delete(aliases).where(where))
    elif current is None:
        conn.execute(insert(aliases).values(name=name, alias=alias, tag=to, moved_by=by))
    else:
        conn.execute(update(aliases).where(where).values(tag=to, moved_by=by, moved_at=func.now()))
    if not recorded_by_trigger:  # SQLite (the demo) has no triggers of ours
        conn.execute(
            insert(tables.alias_moves).values(
                name=name,
                alias=alias,
                from_tag=current,
                to_tag=to,
                action=action,
                reason=reason,
                moved_by=by,
                declared_by=by,
            )
        )
    return None if current is None else str(current)


def _features(metadata: dict[str, Any]) -> list[tuple[Any, Any]]:
    found = metadata.get("features", [])
    if not isinstance(found, list) or not all(isinstance(f, dict) for f in found):
        return [("(unreadable)", None)]
    return [(f.get("name"), f.get("kind")) for f in found]


def incompatibility(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why a service serving a version with metadata ``old`` cannot switch to one with
    ``new`` (another task, other features or classes: its callers would break), if it cannot."""
    if old.get("task") != new.get("task"):
        return f"it is {new.get('task')}, not {old.get('task')}"
    features, theirs = _features(old), _features(new)
    if features != theirs:
        changed = sorted({str(name) for name, _ in set(features) ^ set(theirs)}) or ["their order"]
        return "its features differ (" + ", ".join(changed)[:200] + ")"
    if old.get("classes") != new.get("classes"):
        return f"its classes differ ({new.get('classes')} against {old.get('classes')})"
    return None


def set_alias(
    catalog: Catalog,
    alias: str,
    tag: str,
    reason: str | None = None,
    by: str | None = None,
    force: bool = False,
) -> str | None:
    """Point ``alias`` of the tag's model at registered version ``tag``, which must be signed by
    a trusted key; return where it pointed before. A version its services could not switch to
    (another task, other features or classes) is refused unless ``force``."""
    _check_alias(alias)
    name = tag.partition(":")[0]
    aliases = _tables().aliases
    if catalog.engine is None:
        raise ScoreboxError("aliases live in the registry (SCOREBOX_DATABASE_URL)")
    new = catalog.manifest(tag).metadata  # refuses an unsigned or unknown version
    try:
        with catalog.engine.begin() as conn:
            current = conn.execute(
                select(aliases.c.tag)
                .where(aliases.c.name == name, aliases.c.alias == alias)
                .with_for_update()
            ).scalar()
            if current is not None and current != tag and not force:
                try:
                    old: dict[str, Any] | None = catalog.manifest(str(current)).metadata
                except ModelError:
                    old = None  # moving away from a version no service can load is welcome
                why = incompatibility(old, new) if old is not None else None
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
