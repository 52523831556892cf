"""audit log: read newest-first through the UUIDv7 primary key; one index per peer

Every request commits one audit row, and every index is written with it. Reads (`mosaic
federation audit list [--peer] [--since]`) order by id, a UUIDv7 whose leading bits are
the creation time, so the primary key replaces the created_at index, (peer_id, id)
replaces (peer_id, created_at), and the grant index, which no query used, goes.

Revision ID: gateway_0002
Revises: gateway_0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "gateway_0002"
down_revision: str | None = "gateway_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "federation_audit_log"


def upgrade() -> None:
    op.drop_index("ix_audit_created_at", table_name=TABLE)
    op.drop_index("ix_audit_grant_created_at", table_name=TABLE)
    op.drop_index("ix_audit_peer_created_at", table_name=TABLE)
    op.create_index("ix_audit_peer_id", TABLE, ["peer_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_peer_id", table_name=TABLE)
    op.create_index("ix_audit_created_at", TABLE, [sa.text("created_at DESC")])
    op.create_index("ix_audit_peer_created_at", TABLE, ["peer_id", sa.text("created_at DESC")])
    op.create_index("ix_audit_grant_created_at", TABLE, ["grant_id", sa.text("created_at DESC")])
