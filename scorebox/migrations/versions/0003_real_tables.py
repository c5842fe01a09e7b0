"""Predictions keyed by (source table, model tag, row id as text); text chunk bounds; per-job queue,
key kind and failed-row limit.

Existing predictions keep their rows: each gets the table its job scored (as the catalog names it,
schema.table) and its id as text.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import context, op

from scorebox.db import CHUNKS_TABLE, FAILED_ROWS_TABLE, JOBS_TABLE
from scorebox.errors import DataError
from scorebox.names import parse_table, resolve_table

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _canonical(conn: sa.Connection, written: str) -> str:
    """A table name as jobs wrote it, as the catalog names it now (unchanged if it is gone)."""
    try:
        return str(resolve_table(conn, written, "a job's table"))
    except (DataError, ValueError):
        return written


def upgrade() -> None:
    conn = op.get_bind()
    predictions = parse_table(context.config.attributes["predictions_table"])
    fallback = _canonical(conn, context.config.attributes["feature_table"])
    jobs = sa.table(JOBS_TABLE, sa.column("id"), sa.column("table_name"))
    for (written,) in conn.execute(sa.select(jobs.c.table_name).distinct()).all():
        canonical = _canonical(conn, written)
        if canonical != written:
            conn.execute(
                jobs.update().where(jobs.c.table_name == written).values(table_name=canonical)
            )

    with op.batch_alter_table(JOBS_TABLE) as batch:
        batch.alter_column("status", type_=sa.String(32), existing_type=sa.String(16))
        batch.add_column(
            sa.Column("key_kind", sa.String(16), nullable=False, server_default="integer")
        )
        batch.add_column(sa.Column("queue", sa.Text, nullable=False, server_default="celery"))
        batch.add_column(sa.Column("max_failed_rows", sa.BigInteger))
    with op.batch_alter_table(CHUNKS_TABLE) as batch:
        for column in ("id_lo", "id_hi"):
            batch.alter_column(
                column,
                type_=sa.Text,
                existing_type=sa.BigInteger,
                postgresql_using=f"{column}::text",
            )
    with op.batch_alter_table(FAILED_ROWS_TABLE) as batch:
        batch.alter_column(
            "row_id", type_=sa.Text, existing_type=sa.BigInteger, postgresql_using="row_id::text"
        )

    if conn.dialect.name == "sqlite":
        _rebuild_predictions(predictions.name, fallback)
        return
    op.add_column(predictions.name, sa.Column("source_table", sa.Text), schema=predictions.schema)
    target = sa.table(
        predictions.name, sa.column("source_table"), sa.column("job_id"), schema=predictions.schema
    )
    conn.execute(
        target.update().where(target.c.job_id == jobs.c.id).values(source_table=jobs.c.table_name)
    )
    conn.execute(
        target.update().where(target.c.source_table.is_(None)).values(source_table=fallback)
    )
    old_key = sa.inspect(conn).get_pk_constraint(predictions.name, schema=predictions.schema)
    with op.batch_alter_table(predictions.name, schema=predictions.schema) as batch:
        batch.alter_column("source_table", nullable=False, existing_type=sa.Text)
        batch.alter_column(
            "row_id", type_=sa.Text, existing_type=sa.BigInteger, postgresql_using="row_id::text"
        )
        batch.drop_constraint(str(old_key["name"]), type_="primary")
        batch.create_primary_key(
            f"{predictions.name}_pkey", ["source_table", "model_tag", "row_id"]
        )


def _rebuild_predictions(name: str, fallback: str) -> None:
    """SQLite cannot change a primary key in place: copy the rows into the new layout."""
    old = f"_{name}_0002"
    op.rename_table(name, old)
    op.create_table(
        name,
        sa.Column("source_table", sa.Text, primary_key=True),
        sa.Column("model_tag", sa.String(256), primary_key=True),
        sa.Column("row_id", sa.Text, primary_key=True),
        sa.Column("predicted_label", sa.Text),
        sa.Column("predicted_value", sa.Double),
        sa.Column("probability", sa.Double),
        sa.Column("probabilities", sa.JSON),
        sa.Column(
            "scored_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("job_id", sa.Integer),
    )
    quote = op.get_bind().dialect.identifier_preparer.quote
    op.execute(
        sa.text(
            f"INSERT INTO {quote(name)} (source_table, model_tag, row_id, predicted_label, "
            "predicted_value, probability, probabilities, scored_at, job_id) "
            "SELECT coalesce(j.table_name, :fallback), p.model_tag, CAST(p.row_id AS TEXT), "
            "p.predicted_label, p.predicted_value, p.probability, p.probabilities, p.scored_at, "
            f"p.job_id FROM {quote(old)} AS p LEFT JOIN {JOBS_TABLE} AS j ON j.id = p.job_id"
        ).bindparams(fallback=fallback)
    )
    op.drop_table(old)


def downgrade() -> None:
    raise NotImplementedError("0003 keeps text ids and source tables; restore from a backup")
