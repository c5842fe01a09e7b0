"""Schema migrations (Alembic) and the bounded wait for the database at start-up."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from scorebox.db import Tables
from scorebox.errors import ConfigError, database_reason
from scorebox.names import parse_table

VERSION_TABLE = "scorebox_alembic_version"
_SCRIPTS = Path(__file__).with_name("migrations")

log = logging.getLogger(__name__)


# Worth waiting for: a server that is starting (or restarting) up.
_STARTING = ("the database system is starting up", "the database system is shutting down")
_REFUSED = "Connection refused"


def wait_for_database(
    engine: Engine,
    timeout: float = 30.0,
    interval: float = 0.5,
    refused_timeout: float = 2.0,
    waiting: Callable[[str], None] = lambda _: None,
) -> None:
    """Return once the database answers. A server that is starting is waited for up to
    ``timeout`` seconds (``waiting`` hears of it once); a refused connection (a wrong port, or a
    server not listening yet) quietly up to ``refused_timeout``; anything else (wrong database,
    role, password or host) is a ConfigError at once."""
    start = time.monotonic()
    told = False
    while True:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                _check_encoding(conn)
            return
        except OperationalError as exc:
            reason = database_reason(exc)
            reason = reason.removeprefix("connection failed: ")
            waited = time.monotonic() - start
            starting = any(s in str(exc.orig) for s in _STARTING)
            refused = _REFUSED in str(exc.orig)
            limit = timeout if starting else refused_timeout if refused else 0.0
            url = engine.url.render_as_string(hide_password=True)
            if waited >= limit:
                raise ConfigError(
                    f"cannot reach the database at {url} (SCOREBOX_DATABASE_URL): {reason}"
                ) from None
            if starting and not told:
                waiting(f"waiting for the database at {url} ({reason})")
                told = True
            log.info("database not ready, retrying", extra={"url": url})
            time.sleep(interval)


def _check_encoding(conn: Connection) -> None:
    """A ConfigError unless a PostgreSQL database stores text as UTF-8 (a SQL_ASCII one accepts
    any bytes and hands them back undecoded)."""
    if conn.dialect.name != "postgresql":
        return
    encoding = conn.execute(text("SHOW server_encoding")).scalar_one()
    if encoding != "UTF8":
        url = conn.engine.url.render_as_string(hide_password=True)
        raise ConfigError(
            f"the database at {url} (SCOREBOX_DATABASE_URL) uses the {encoding} encoding; "
            "scorebox needs UTF8: create the database with ENCODING 'UTF8' (initdb or "
            "CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0) and point "
            "SCOREBOX_DATABASE_URL at it"
        )


def create_database_if_missing(engine: Engine) -> bool:
    """Create the PostgreSQL database named in the URL when the server lacks it; True if created."""
    url = engine.url
    if url.get_backend_name() != "postgresql" or not url.database:
        return False
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        wait_for_database(admin)
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
            ).first()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(url.database)
            conn.execute(text(f"CREATE DATABASE {quoted}"))
            log.info("created database %s", url.database)
            return True
    finally:
        admin.dispose()


def _config(predictions_table: str, feature_table: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["predictions_table"] = predictions_table
    config.attributes["feature_table"] = feature_table
    return config


def _check_schema(conn: Connection, predictions_table: str) -> None:
    schema = parse_table(predictions_table).schema
    if schema is not None and schema not in inspect(conn).get_schema_names():
        raise ConfigError(
            f"schema {schema!r} of SCOREBOX_PREDICTIONS_TABLE={predictions_table!r} does not "
            f'exist; create it (CREATE SCHEMA "{schema}") or name a table in another schema'
        )


def upgrade(
    engine: Engine, predictions_table: str, feature_table: str = "features", revision: str = "head"
) -> bool:
    """Bring the schema to ``revision`` (default: the newest), then make sure the predictions
    table the settings name exists (a renamed one is created with the newest layout). Returns
    True when that table was created by this call."""
    config = _config(predictions_table, feature_table)
    with engine.begin() as conn:
        _check_schema(conn, predictions_table)
        name = parse_table(predictions_table)
        existed = inspect(conn).has_table(name.name, schema=name.schema)
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        if revision != "head":
            return False
        predictions = Tables.build(predictions_table).predictions
        if not inspect(conn).has_table(name.name, schema=name.schema):
            predictions.create(conn)
            log.info("created predictions table %s", predictions_table)
    return not existed


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (``None`` before the first upgrade)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str | None:
    """The newest revision scorebox ships."""
    return ScriptDirectory(str(_SCRIPTS)).get_current_head()


def check_schema(engine: Engine, predictions_table: str) -> None:
    """A ConfigError naming the fix unless scorebox's tables are at this version's revision and
    the predictions table the settings name exists."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        found = (
            "missing" if current is None else f"at revision {current}, this version needs {head}"
        )
        raise ConfigError(f"scorebox's tables are {found}: run `scorebox db upgrade`")
    name = parse_table(predictions_table)
    with engine.connect() as conn:
        if not inspect(conn).has_table(name.name, schema=name.schema):
            raise ConfigError(
                f"predictions table {predictions_table!r} (SCOREBOX_PREDICTIONS_TABLE) does not "
                "exist: run `scorebox db upgrade` to create it"
            )
