"""Monitoring: jobs keep their model's training profile, chunks the counts of the rows they
scored (drift), and the service's sampled online predictions have a table of their own.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from scorebox.db import CHUNKS_TABLE, JOBS_TABLE, PREDICTION_LOG_TABLE, Tables

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(JOBS_TABLE, sa.Column("reference", sa.JSON))
    op.add_column(CHUNKS_TABLE, sa.Column("profile", sa.JSON))
    Tables.build("predictions").prediction_log.create(op.get_bind())


def downgrade() -> None:
    op.drop_table(PREDICTION_LOG_TABLE)
    op.drop_column(CHUNKS_TABLE, "profile")
    op.drop_column(JOBS_TABLE, "reference")
