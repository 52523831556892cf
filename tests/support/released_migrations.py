"""A service's migrations as an earlier release had them, for building the databases that
release left (tests/fixtures/released_migrations/README.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures/released_migrations"


def migrations_as_released(migrations: Path, release: str, filename: str, into: Path) -> Path:
    """A copy of ``migrations`` (a service's migrations directory) under ``into`` in which
    ``versions/<filename>`` is the text release ``release`` shipped."""
    released = FIXTURES / release / migrations.parent.name / f"{filename}.txt"
    copy = into / f"migrations-{release}"
    shutil.copytree(migrations, copy, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(released, copy / "versions" / filename)
    return copy
