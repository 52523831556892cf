"""Alembic environment for resource_service: its own tables, its own version table."""

from typing import Any

from mosaic.db import run_migrations
from resource_service.store import FTS_TABLE, SEARCH_COLUMN, SEARCH_INDEX, metadata


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Keep autogenerate away from the search artifacts resources_0002 makes by hand."""
    if type_ == "table" and name is not None and name.startswith(FTS_TABLE):
        return False
    return not (
        (type_ == "column" and name == SEARCH_COLUMN) or (type_ == "index" and name == SEARCH_INDEX)
    )


run_migrations(metadata, include_object)
