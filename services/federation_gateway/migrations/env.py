"""Alembic environment for federation_gateway: its own tables, its own version table."""

from federation_gateway.store import metadata
from mosaic.db import run_migrations

run_migrations(metadata)
