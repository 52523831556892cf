"""issued_certificates

Revision ID: ca_0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mosaic.sqltypes import UtcDateTime

revision: str = "ca_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "issued_certificates",
        sa.Column("serial", sa.String(64), primary_key=True),
        sa.Column("grant_id", sa.Uuid, nullable=False),
        sa.Column("subject_user_id", sa.Uuid, nullable=False),
        sa.Column("peer_id", sa.Uuid, nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False),
        sa.Column("not_before", UtcDateTime, nullable=False),
        sa.Column("not_after", UtcDateTime, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("revoked_at", UtcDateTime, nullable=True),
        sa.Column("revoke_reason", sa.Text, nullable=True),
    )
    op.create_index("ix_issued_certificates_grant_id", "issued_certificates", ["grant_id"])
    op.create_index("ix_issued_certificates_revoked_at", "issued_certificates", ["revoked_at"])


def downgrade() -> None:
    op.drop_table("issued_certificates")
