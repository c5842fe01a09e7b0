"""Predictions and jobs tables.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import context, op

from scorebox.db import JOBS_TABLE
from scorebox.names import parse_table

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = parse_table(context.config.attributes["predictions_table"])
    schema, name = table.schema, table.name
    op.create_table(
        name,
        sa.Column("row_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("model_tag", sa.String(256), primary_key=True),
        sa.Column("predicted_label", sa.Text),
        sa.Column("predicted_value", sa.Double),
        sa.Column("probability", sa.Double),
        sa.Column("probabilities", sa.JSON),
        sa.Column(
            "scored_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("job_id", sa.Integer),
        schema=schema,
    )
    op.create_table(
        JOBS_TABLE,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("model_tag", sa.String(256), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("rows_total", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_scored", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_failed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    table = parse_table(context.config.attributes["predictions_table"])
    schema, name = table.schema, table.name
    op.drop_table(JOBS_TABLE)
    op.drop_table(name, schema=schema)
