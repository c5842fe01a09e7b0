"""The model registry: trained versions with their artifacts, aliases and their moves; jobs record
the model reference they were asked for (an alias, latest or a version) beside the exact tag.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from scorebox.db import ALIAS_MOVES_TABLE, ALIASES_TABLE, JOBS_TABLE, MODELS_TABLE, Tables

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    tables = Tables.build("predictions")
    conn = op.get_bind()
    for table in (tables.models, tables.aliases, tables.alias_moves):
        table.create(conn)
    op.add_column(JOBS_TABLE, sa.Column("model_ref", sa.Text))


def downgrade() -> None:
    op.drop_column(JOBS_TABLE, "model_ref")
    for name in (ALIAS_MOVES_TABLE, ALIASES_TABLE, MODELS_TABLE):
        op.drop_table(name)
