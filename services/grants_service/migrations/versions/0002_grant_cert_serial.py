"""each grant keeps the serial of its own current certificate

A peer may hold several grants, each enrolled (and renewed) with a certificate of its
own. The gate used to compare a certificate with the *peer's* one current serial, so
enrolling a second grant switched the first grant's certificate off. Each grant now
records its current certificate; the peer's serial stays as the latest one issued to it
(shown by `peer show`). Existing active grants take the peer's serial, which was the one
certificate the gate accepted for them until now.

Revision ID: grants_0002
Revises: grants_0001
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "grants_0002"
down_revision: str | None = "grants_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("federation_grants") as batch:
        batch.add_column(sa.Column("cert_serial", sa.String(64), nullable=True))
    op.execute(
        "UPDATE federation_grants SET cert_serial = ("
        "SELECT p.cert_serial FROM federation_peers p WHERE p.id = federation_grants.peer_id"
        ") WHERE status = 'active'"
    )


def downgrade() -> None:
    with op.batch_alter_table("federation_grants") as batch:
        batch.drop_column("cert_serial")
