"""Alembic environment: runs the migrations on the connection ``scorebox.migrate`` passes in."""

from alembic import context

from scorebox.db import Tables
from scorebox.migrate import VERSION_TABLE

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Tables.build(config.attributes["predictions_table"]).metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
