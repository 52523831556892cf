"""ids sort bytewise on Postgres too

Keyset pagination orders by ``id`` and continues with ``id > after_id``. SQLite compares
text bytewise; a Postgres database created with a locale (en_US.UTF-8, ...) would sort
ids linguistically instead, so the same rows would page in a different order on the two
engines. The "C" collation makes Postgres bytewise as well, and its comparisons cheaper.
The primary key and ``ix_resources_owner_kind_id`` are rebuilt with the new collation.
Nothing to do on SQLite.

Revision ID: resources_0003
Revises: resources_0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "resources_0003"
down_revision: str | None = "resources_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute('ALTER TABLE resources ALTER COLUMN id TYPE varchar(64) COLLATE "C"')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute('ALTER TABLE resources ALTER COLUMN id TYPE varchar(64) COLLATE "default"')
