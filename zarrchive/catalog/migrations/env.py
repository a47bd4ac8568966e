"""Alembic's environment for the catalog: run with the connection zarrchive passes in (``zarrchive.catalog``)."""

from alembic import context

from zarrchive.catalog.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
