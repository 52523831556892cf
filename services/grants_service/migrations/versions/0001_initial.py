"""federation_peers and federation_grants

Revision ID: grants_0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mosaic.sqltypes import UtcDateTime

revision: str = "grants_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "federation_peers",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column(
            "direction",
            sa.Enum("inbound", "outbound", name="peer_direction", native_enum=False),
            nullable=False,
        ),
        sa.Column(
            "state",
            sa.Enum(
                "pending", "active", "suspended", "revoked", name="peer_state", native_enum=False
            ),
            nullable=False,
        ),
        sa.Column("state_reason", sa.Text, nullable=True),
        sa.Column("endpoint", sa.String(512), nullable=True),
        sa.Column("cert_pem", sa.Text, nullable=True),
        sa.Column("cert_serial", sa.String(64), nullable=True),
        sa.Column("cert_not_after", UtcDateTime, nullable=True),
        sa.Column("ca_bundle_pem", sa.Text, nullable=True),
        sa.Column("sealed_client_key", sa.LargeBinary, nullable=True),
        sa.Column("remote_grant_id", sa.Uuid, nullable=True),
        sa.Column("remote_subject_user_id", sa.Uuid, nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )
    op.create_table(
        "federation_grants",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column(
            "peer_id",
            sa.Uuid,
            sa.ForeignKey("federation_peers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("subject_user_id", sa.Uuid, nullable=False),
        sa.Column("scope", sa.JSON, nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending", "active", "revoked", "expired", name="grant_status", native_enum=False
            ),
            nullable=False,
        ),
        sa.Column("sensitive", sa.Boolean, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("activated_at", UtcDateTime, nullable=True),
        sa.Column("expires_at", UtcDateTime, nullable=True),
        sa.Column("revoked_at", UtcDateTime, nullable=True),
        sa.Column("revoke_reason", sa.Text, nullable=True),
        sa.Column("enrollment_token_id", sa.Uuid, nullable=True),
    )
    op.create_index("ix_federation_grants_peer_id", "federation_grants", ["peer_id"])
    op.create_index("ix_federation_grants_status", "federation_grants", ["status"])


def downgrade() -> None:
    op.drop_table("federation_grants")
    op.drop_table("federation_peers")
