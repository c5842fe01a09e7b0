"""Schema migrations (Alembic) and the bounded wait for the database at start-up."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from scorebox.errors import ConfigError

VERSION_TABLE = "scorebox_alembic_version"
_SCRIPTS = Path(__file__).with_name("migrations")

log = logging.getLogger(__name__)


def wait_for_database(engine: Engine, timeout: float = 30.0, interval: float = 1.0) -> None:
    """Return once the database answers, or raise ConfigError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return
        except OperationalError as exc:
            if time.monotonic() >= deadline:
                url = engine.url.render_as_string(hide_password=True)
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                raise ConfigError(
                    f"cannot reach the database at {url} (SCOREBOX_DATABASE_URL): {reason}"
                ) from None
            log.info("database not ready, retrying", extra={"url": str(engine.url)})
            time.sleep(interval)


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


def _config(engine: Engine, predictions_table: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["predictions_table"] = predictions_table
    return config


def upgrade(engine: Engine, predictions_table: str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: the newest)."""
    config = _config(engine, predictions_table)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (``None`` before the first upgrade)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str | None:
    """The newest revision scorebox ships."""
    return ScriptDirectory(str(_SCRIPTS)).get_current_head()
