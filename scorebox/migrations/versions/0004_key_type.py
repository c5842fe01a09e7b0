"""Jobs record their key column's SQL type, to bound chunks in that type; the predictions key
starts with the row id and compares bytes (COLLATE "C"), which makes upserts cheaper: the table
and model tag, equal within a chunk, are no longer compared first for every row.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import context, op

from scorebox.db import JOBS_TABLE
from scorebox.names import parse_table

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_KEY = ["row_id", "model_tag", "source_table"]


def upgrade() -> None:
    op.add_column(JOBS_TABLE, sa.Column("key_type", sa.Text))
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return  # only PostgreSQL's upserts are worth the rebuild
    predictions = parse_table(context.config.attributes["predictions_table"])
    table, schema = predictions.name, predictions.schema
    old_key = sa.inspect(conn).get_pk_constraint(table, schema=schema)["name"]
    op.drop_constraint(str(old_key), table, type_="primary", schema=schema)
    for column, kind in (("row_id", sa.Text), ("model_tag", sa.String), ("source_table", sa.Text)):
        op.alter_column(
            table,
            column,
            type_=kind(collation="C"),
            existing_type=kind(),
            existing_nullable=False,
            schema=schema,
        )
    op.create_primary_key(f"{table}_pkey", table, _KEY, schema=schema)


def downgrade() -> None:
    op.drop_column(JOBS_TABLE, "key_type")
