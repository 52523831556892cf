"""resources

Revision ID: resources_0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mosaic.sqltypes import UtcDateTime

revision: str = "resources_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("resource", sa.String(16), nullable=False),
        sa.Column("owner_user_id", sa.Uuid, nullable=False),
        sa.Column("team_id", sa.Uuid, nullable=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_resources_owner_kind_id", "resources", ["owner_user_id", "resource", "id"])


def downgrade() -> None:
    op.drop_table("resources")
