"""Alembic environment for enrollment_service: its own tables, its own version table."""

from enrollment_service.store import metadata
from mosaic.db import run_migrations

run_migrations(metadata)
