"""Alembic environment for resource_service: its own tables, its own version table."""

from mosaic.db import run_migrations
from resource_service.store import metadata

run_migrations(metadata)
