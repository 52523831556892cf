"""search: every database gets the search index resources_0006 makes today

resources_0006 was rewritten after it had reached main (released in 09d4a77, rewritten in
ebcface and b4e85e7), and a database that recorded resources_0006 never runs its text
again, so each kept the index of the release it was migrated with:

- at 09d4a77: SQLite split words at private-use characters and kept an emoji's variation
  selector (U+FE0F) inside the next word ("warning" did not find "⚠️Warning"); Postgres
  had no ``resources_search_words`` function, which ResourceStore.search calls, so every
  search failed ("function resources_search_words(text) does not exist") while the
  doctor said the migrations were at head;
- at ebcface: the same on Postgres; SQLite kept U+FE0F inside words.

This migration runs resources_0006's upgrade again: on SQLite it drops the FTS5 table and
its triggers and makes them with today's tokenizer, filled from ``resources``; on Postgres
it drops the index and ``search_tsv``, creates (or replaces) the function, and adds the
column and the index again. Both only ever drop what they make again, so running it on a
database that ran today's resources_0006 gives the same schema. It loads resources_0006's
module from its file, as resources_0006 loads resources_0005's: a released migration
never changes again (tests/unit/test_migrations_frozen.py), so this one keeps meaning
what it means today.

Downgrade: nothing to do. What the upgrade leaves is what resources_0006 as it stands
today makes, which is where a downgrade to resources_0006 goes.

Revision ID: resources_0007
Revises: resources_0006
Create Date: 2026-12-06
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

revision: str = "resources_0007"
down_revision: str | None = "resources_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _resources_0006().upgrade()


def downgrade() -> None:
    pass  # see the docstring: resources_0006's schema is the one this upgrade left


def _resources_0006() -> ModuleType:
    """resources_0006's module, loaded from its file (its name starts with a digit)."""
    path = Path(__file__).with_name("0006_search_marks.py")
    spec = importlib.util.spec_from_file_location("resources_0006", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
