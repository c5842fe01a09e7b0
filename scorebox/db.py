"""Database access: the engine and every table layout scorebox owns, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    func,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import NoSuchTableError
from sqlalchemy.types import TypeEngine

from scorebox.errors import ConfigError, DataError
from scorebox.names import TableName, parse_table


def insert_for(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT with ON CONFLICT support for the connection's dialect (PostgreSQL or SQLite)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def utcnow() -> datetime:
    """The time to store where the database's own clock cannot be used (SQLite)."""
    return datetime.now(UTC)


JOBS_TABLE = "scorebox_jobs"
CHUNKS_TABLE = "scorebox_chunks"
FAILED_ROWS_TABLE = "scorebox_failed_rows"
MODELS_TABLE = "scorebox_models"
ALIASES_TABLE = "scorebox_aliases"
ALIAS_MOVES_TABLE = "scorebox_alias_moves"
PREDICTION_LOG_TABLE = "scorebox_prediction_log"


def database_identity(engine: Engine) -> str:
    """Which scorebox installation a connection reaches, whatever URL reaches it (``localhost``
    or ``127.0.0.1``, any role): on PostgreSQL the cluster's identifier and the oid of the jobs
    table the connection sees (one database may hold several installations, in several schemas);
    an SQLite file's real path."""
    if engine.dialect.name != "postgresql":
        return os.path.realpath(engine.url.database or "")
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT (SELECT system_identifier FROM pg_control_system())::text || ':' || "
                "to_regclass(:jobs)::oid::text"
            ),
            {"jobs": JOBS_TABLE},
        ).scalar_one()
    if found is None:
        raise ConfigError(
            f"the database has no {JOBS_TABLE} table (SCOREBOX_DATABASE_URL); run "
            "`scorebox db upgrade`"
        )
    return str(found)


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (SQLAlchemy would pick psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def asyncpg_arguments(database_url: str, application_name: str) -> dict[str, Any]:
    """asyncpg's connect() arguments for a SQLAlchemy PostgreSQL URL; ``options=-c k=v`` (a
    search_path, say) become server settings."""
    url = make_url(database_url)
    settings: dict[str, str] = {}
    options = url.query.get("options")
    for part in options if isinstance(options, tuple) else (options,) if options else ():
        for token in str(part).split():
            if token.startswith("-c") and "=" in token:
                key, _, value = token.removeprefix("-c").partition("=")
                settings[key] = value
    return {
        "host": url.host or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username,
        "password": url.password,
        "database": url.database,
        "server_settings": settings | {"application_name": application_name},
        "timeout": 5,
    }


def make_engine(url: str, connect_timeout: int = 5, application_name: str = "scorebox") -> Engine:
    """An engine for ``url`` with connection checks on checkout; a PostgreSQL server that does
    not answer is given up on after ``connect_timeout`` seconds. ``application_name`` shows in
    ``pg_stat_activity`` (workers name their process there)."""
    if make_url(url).get_backend_name() == "sqlite":
        # Several processes (worker, CLI) share the file: wait for a lock instead of failing.
        return create_engine(url, connect_args={"timeout": 60})
    # UTF-8 on the wire whatever the database's encoding: on a SQL_ASCII database psycopg would
    # hand SQLAlchemy bytes, which it cannot read, before scorebox can say what is wrong.
    return create_engine(
        normalize_url(url),
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": connect_timeout,
            "application_name": application_name,
            "client_encoding": "utf8",
        },
    )


def _bytewise(kind: TypeEngine[str]) -> TypeEngine[str]:
    """``kind`` compared byte by byte on PostgreSQL (cheaper than a language's collation)."""
    return kind.with_variant(type(kind)(collation="C"), "postgresql")  # type: ignore[call-arg]


def _predictions(metadata: MetaData, name: TableName) -> Table:
    # Keyed row id first and bytewise: a chunk's rows share their table and model tag, which an
    # index would otherwise compare first for every row.
    return Table(
        name.name,
        metadata,
        Column("row_id", _bytewise(Text()), primary_key=True, comment="the row's key, as text"),
        Column("model_tag", _bytewise(String(256)), primary_key=True),
        Column(
            "source_table",
            _bytewise(Text()),
            primary_key=True,
            comment="the scored table (schema.table)",
        ),
        Column("predicted_label", Text, comment="classification: the predicted class"),
        Column("predicted_value", Double, comment="regression: the predicted value"),
        Column("probability", Double, comment="classification: probability of predicted_label"),
        Column("probabilities", JSON, comment="classification: probability of every class"),
        Column("scored_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("job_id", Integer),
        schema=name.schema,
    )


@dataclass(frozen=True)
class Tables:
    """scorebox's own tables; the predictions table's name comes from settings."""

    metadata: MetaData
    predictions: Table
    jobs: Table
    chunks: Table
    failed: Table
    models: Table
    aliases: Table
    alias_moves: Table
    prediction_log: Table

    @classmethod
    def build(cls, predictions_table: str) -> Tables:
        """The layouts, with the predictions table named ``predictions_table``."""
        metadata = MetaData()
        predictions = _predictions(metadata, parse_table(predictions_table))
        jobs = Table(
            JOBS_TABLE,
            metadata,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("table_name", Text, nullable=False),
            Column("model_tag", String(256), nullable=False),
            Column("mode", String(16), nullable=False),
            Column("status", String(32), nullable=False, server_default="queued"),
            Column("rows_total", BigInteger, nullable=False, server_default="0"),
            Column("rows_scored", BigInteger, nullable=False, server_default="0"),
            Column("rows_failed", BigInteger, nullable=False, server_default="0"),
            Column("error", Text),
            Column(
                "created_at", DateTime(timezone=True), nullable=False, server_default=func.now()
            ),
            Column("started_at", DateTime(timezone=True)),
            Column("finished_at", DateTime(timezone=True)),
            Column("id_column", Text, nullable=False, server_default="id"),
            Column("features", JSON),
            Column("chunk_size", Integer, nullable=False, server_default="10000"),
            Column("chunks_total", Integer, nullable=False, server_default="0"),
            Column("key_kind", String(16), nullable=False, server_default="integer"),
            Column("key_type", Text, comment="the id column's SQL type (PostgreSQL)"),
            Column("queue", Text, nullable=False, server_default="celery"),
            Column("max_failed_rows", BigInteger),
            Column("model_ref", Text, comment="what was asked for: an alias, latest or a version"),
            Column("reference", JSON, comment="the model's features and training profile"),
        )
        chunks = Table(
            CHUNKS_TABLE,
            metadata,
            Column("job_id", ForeignKey(f"{JOBS_TABLE}.id", ondelete="CASCADE"), primary_key=True),
            Column("chunk_no", Integer, primary_key=True),
            Column("id_lo", Text, nullable=False, comment="first key of the chunk, as text"),
            Column("id_hi", Text, nullable=False, comment="last key of the chunk, as text"),
            Column("status", String(16), nullable=False, server_default="pending"),
            Column("attempt", Integer, nullable=False, server_default="0"),
            Column("lease_token", String(36)),
            Column("lease_expires_at", DateTime(timezone=True)),
            Column("rows_scored", BigInteger, nullable=False, server_default="0"),
            Column("rows_failed", BigInteger, nullable=False, server_default="0"),
            Column("error", Text),
            Column(
                "updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()
            ),
            Column("profile", JSON, comment="the scored rows' counts in training's bins"),
            Index(f"ix_{CHUNKS_TABLE}_status", "status", "updated_at"),
        )
        failed = Table(
            FAILED_ROWS_TABLE,
            metadata,
            Column("job_id", ForeignKey(f"{JOBS_TABLE}.id", ondelete="CASCADE"), primary_key=True),
            Column("row_id", Text, primary_key=True),
            Column("reason", Text, nullable=False),
        )
        models, aliases, alias_moves = _registry(metadata)
        log = Table(
            PREDICTION_LOG_TABLE,
            metadata,
            Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
            Column("logged_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
            Column("model_tag", String(256), nullable=False),
            Column("request_id", String(64), nullable=False),
            Column("features", JSON, nullable=False, comment="the record as sent"),
            Column("prediction", JSON, nullable=False, comment="the answer for it"),
            # BRIN: the log is appended in time order, and a B-tree would cost every insert.
            Index(f"ix_{PREDICTION_LOG_TABLE}_logged_at", "logged_at", postgresql_using="brin"),
        )
        return cls(metadata, predictions, jobs, chunks, failed, models, aliases, alias_moves, log)


def _registry(metadata: MetaData) -> tuple[Table, Table, Table]:
    """The model registry: every trained version with its metadata and artifact, the aliases
    that point at versions, and every move of an alias."""
    models = Table(
        MODELS_TABLE,
        metadata,
        Column("tag", String(256), primary_key=True, comment="name:version"),
        Column("name", String(128), nullable=False),
        Column("task", String(32), nullable=False),
        Column("estimator", String(64), nullable=False),
        Column("metrics", JSON, nullable=False),
        Column("metadata", JSON, nullable=False, comment="the BentoML model's metadata"),
        Column("artifact", LargeBinary, nullable=False, comment="the model as a .bentomodel file"),
        Column("artifact_sha256", String(64), nullable=False),
        Column("signature", Text, comment="the signed manifest (scorebox/signing.py)"),
        # On PostgreSQL a trigger writes both (migration 0007): the inserter cannot choose them.
        Column("created_by", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index(f"ix_{MODELS_TABLE}_name", "name", "created_at"),
    )
    aliases = Table(
        ALIASES_TABLE,
        metadata,
        Column("name", String(128), primary_key=True, comment="the model's name"),
        Column("alias", String(64), primary_key=True),
        Column("tag", ForeignKey(f"{MODELS_TABLE}.tag"), nullable=False),
        Column("moved_by", Text, nullable=False),
        Column("moved_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    moves = Table(
        ALIAS_MOVES_TABLE,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(128), nullable=False),
        Column("alias", String(64), nullable=False),
        Column("from_tag", String(256)),
        Column("to_tag", String(256)),
        Column("action", String(16), nullable=False, comment="move, rollback, remove or direct"),
        Column("reason", Text),
        Column("moved_by", Text, nullable=False, comment="the database role"),
        Column("declared_by", Text, comment="who the client said it was (user@host)"),
        Column("moved_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index(f"ix_{ALIAS_MOVES_TABLE}_alias", "name", "alias", "id"),
    )
    return models, aliases, moves


def reflect(conn: Connection, name: TableName) -> Table:
    """A user table's definition, loaded from the database (``name`` already resolved)."""
    try:
        return Table(name.name, MetaData(), schema=name.schema, autoload_with=conn)
    except NoSuchTableError:
        raise DataError(f"table {str(name)!r} does not exist in the database") from None
