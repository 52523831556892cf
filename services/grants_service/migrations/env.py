"""Alembic environment for grants_service: its own tables, its own version table."""

from grants_service.store import metadata
from mosaic.db import run_migrations

run_migrations(metadata)
