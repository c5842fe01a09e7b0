"""Chunk ledger and failed rows for batch-scoring jobs.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from scorebox.db import CHUNKS_TABLE, FAILED_ROWS_TABLE, JOBS_TABLE

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(JOBS_TABLE, sa.Column("id_column", sa.Text, nullable=False, server_default="id"))
    op.add_column(JOBS_TABLE, sa.Column("features", sa.JSON))
    op.add_column(
        JOBS_TABLE, sa.Column("chunk_size", sa.Integer, nullable=False, server_default="10000")
    )
    op.add_column(
        JOBS_TABLE, sa.Column("chunks_total", sa.Integer, nullable=False, server_default="0")
    )
    op.create_table(
        CHUNKS_TABLE,
        sa.Column(
            "job_id",
            sa.Integer,
            sa.ForeignKey(f"{JOBS_TABLE}.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("chunk_no", sa.Integer, primary_key=True),
        sa.Column("id_lo", sa.BigInteger, nullable=False),
        sa.Column("id_hi", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_token", sa.String(36)),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("rows_scored", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_failed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index(f"ix_{CHUNKS_TABLE}_status", CHUNKS_TABLE, ["status", "updated_at"])
    op.create_table(
        FAILED_ROWS_TABLE,
        sa.Column(
            "job_id",
            sa.Integer,
            sa.ForeignKey(f"{JOBS_TABLE}.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("row_id", sa.BigInteger, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table(FAILED_ROWS_TABLE)
    op.drop_index(f"ix_{CHUNKS_TABLE}_status", CHUNKS_TABLE)
    op.drop_table(CHUNKS_TABLE)
    op.drop_column(JOBS_TABLE, "chunks_total")
    op.drop_column(JOBS_TABLE, "chunk_size")
    op.drop_column(JOBS_TABLE, "features")
    op.drop_column(JOBS_TABLE, "id_column")
