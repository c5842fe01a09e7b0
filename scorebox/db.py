"""Database access: the engine and every table layout scorebox owns, in one place."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Double,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    func,
    inspect,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import NoSuchTableError

from scorebox.errors import DataError


def insert_for(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT with ON CONFLICT support for the connection's dialect (PostgreSQL or SQLite)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def utcnow() -> datetime:
    """The time to store: computed here rather than by the database, so that PostgreSQL and SQLite
    compare timestamps the same way."""
    return datetime.now(UTC)


JOBS_TABLE = "scorebox_jobs"
CHUNKS_TABLE = "scorebox_chunks"
FAILED_ROWS_TABLE = "scorebox_failed_rows"


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (SQLAlchemy would pick psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with connection checks on checkout."""
    if make_url(url).get_backend_name() == "sqlite":
        # Several processes (worker, CLI) share the file: wait for a lock instead of failing.
        return create_engine(url, connect_args={"timeout": 60})
    return create_engine(normalize_url(url), pool_pre_ping=True)


def split_name(name: str) -> tuple[str | None, str]:
    """Split ``schema.table`` into its parts (schema ``None`` when absent)."""
    schema, _, table = name.rpartition(".")
    return (schema or None), table


def build_metadata(predictions_table: str) -> MetaData:
    """The tables scorebox owns; the predictions table's name comes from settings."""
    metadata = MetaData()
    schema, name = split_name(predictions_table)
    Table(
        name,
        metadata,
        Column("row_id", BigInteger, primary_key=True, autoincrement=False),
        Column("model_tag", String(256), primary_key=True),
        Column("predicted_label", Text, comment="classification: the predicted class"),
        Column("predicted_value", Double, comment="regression: the predicted value"),
        Column(
            "probability",
            Double,
            comment="classification: probability of predicted_label",
        ),
        Column("probabilities", JSON, comment="classification: probability of every class"),
        Column(
            "scored_at",
            DateTime(timezone=True),
            nullable=False,
            server_default=func.now(),
        ),
        Column("job_id", Integer),
        schema=schema,
    )
    Table(
        JOBS_TABLE,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("table_name", Text, nullable=False),
        Column("model_tag", String(256), nullable=False),
        Column("mode", String(16), nullable=False),
        Column("status", String(16), nullable=False, server_default="queued"),
        Column("rows_total", BigInteger, nullable=False, server_default="0"),
        Column("rows_scored", BigInteger, nullable=False, server_default="0"),
        Column("rows_failed", BigInteger, nullable=False, server_default="0"),
        Column("error", Text),
        Column(
            "created_at",
            DateTime(timezone=True),
            nullable=False,
            server_default=func.now(),
        ),
        Column("started_at", DateTime(timezone=True)),
        Column("finished_at", DateTime(timezone=True)),
        Column("id_column", Text, nullable=False, server_default="id"),
        Column("features", JSON),
        Column("chunk_size", Integer, nullable=False, server_default="10000"),
        Column("chunks_total", Integer, nullable=False, server_default="0"),
    )
    Table(
        CHUNKS_TABLE,
        metadata,
        Column("job_id", ForeignKey(f"{JOBS_TABLE}.id", ondelete="CASCADE"), primary_key=True),
        Column("chunk_no", Integer, primary_key=True),
        Column("id_lo", BigInteger, nullable=False),
        Column("id_hi", BigInteger, nullable=False),
        Column("status", String(16), nullable=False, server_default="pending"),
        Column("attempt", Integer, nullable=False, server_default="0"),
        Column("lease_token", String(36)),
        Column("lease_expires_at", DateTime(timezone=True)),
        Column("rows_scored", BigInteger, nullable=False, server_default="0"),
        Column("rows_failed", BigInteger, nullable=False, server_default="0"),
        Column("error", Text),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index(f"ix_{CHUNKS_TABLE}_status", "status", "updated_at"),
    )
    Table(
        FAILED_ROWS_TABLE,
        metadata,
        Column("job_id", ForeignKey(f"{JOBS_TABLE}.id", ondelete="CASCADE"), primary_key=True),
        Column("row_id", BigInteger, primary_key=True),
        Column("reason", Text, nullable=False),
    )
    return metadata


def predictions_table(metadata: MetaData, predictions_table: str) -> Table:
    """The predictions table inside ``metadata`` built by :func:`build_metadata`."""
    schema, name = split_name(predictions_table)
    return metadata.tables[f"{schema}.{name}" if schema else name]


def reflect_table(conn: Connection, name: str) -> Table:
    """Load a user table's definition from the database, or explain that it is missing."""
    schema, table = split_name(name)
    if not inspect(conn).has_table(table, schema=schema):
        raise DataError(
            f"table {name!r} does not exist in the database; "
            "create it, run `scorebox seed`, or set SCOREBOX_FEATURE_TABLE"
        )
    try:
        return Table(table, MetaData(), schema=schema, autoload_with=conn)
    except NoSuchTableError:
        raise DataError(f"table {name!r} does not exist in the database") from None
