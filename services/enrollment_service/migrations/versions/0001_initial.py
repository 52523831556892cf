"""federation_enrollment_tokens

Revision ID: enrollment_0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mosaic.sqltypes import UtcDateTime

revision: str = "enrollment_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "federation_enrollment_tokens",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("token_hint", sa.String(8), nullable=False),
        sa.Column("grant_id", sa.Uuid, nullable=False),
        sa.Column("peer_id", sa.Uuid, nullable=False),
        sa.Column(
            "state",
            sa.Enum("unused", "redeeming", "used", name="token_state", native_enum=False),
            nullable=False,
        ),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("claimed_until", UtcDateTime, nullable=True),
        sa.Column("used_at", UtcDateTime, nullable=True),
        sa.Column("used_by_serial", sa.String(64), nullable=True),
        sa.Column("failed_attempts", sa.Integer, nullable=False),
    )
    op.create_index(
        "ix_federation_enrollment_tokens_grant_id", "federation_enrollment_tokens", ["grant_id"]
    )


def downgrade() -> None:
    op.drop_table("federation_enrollment_tokens")
