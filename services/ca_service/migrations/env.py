"""Alembic environment for ca_service: its own tables, its own version table."""

from ca_service.store import metadata
from mosaic.db import run_migrations

run_migrations(metadata)
