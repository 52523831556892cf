"""federation_audit_log

Revision ID: gateway_0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mosaic.sqltypes import UtcDateTime

revision: str = "gateway_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "federation_audit_log",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("peer_id", sa.Uuid, nullable=True),
        sa.Column("grant_id", sa.Uuid, nullable=True),
        sa.Column("subject_user_id", sa.Uuid, nullable=True),
        sa.Column("verb", sa.String(32), nullable=False),
        sa.Column("resource", sa.String(16), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("query_hash", sa.String(64), nullable=True),
        sa.Column("bytes_out", sa.BigInteger, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("source_address", sa.String(128), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
    )
    # Descending created_at: every audit read is "newest first".
    op.create_index("ix_audit_created_at", "federation_audit_log", [sa.text("created_at DESC")])
    op.create_index(
        "ix_audit_peer_created_at", "federation_audit_log", ["peer_id", sa.text("created_at DESC")]
    )
    op.create_index(
        "ix_audit_grant_created_at",
        "federation_audit_log",
        ["grant_id", sa.text("created_at DESC")],
    )


def downgrade() -> None:
    op.drop_table("federation_audit_log")
