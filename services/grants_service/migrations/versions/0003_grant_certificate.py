"""each grant keeps its own current certificate, not only its serial

A peer that lost B's answer to a redeem or a renewal repeats the call and is answered
with the certificate B made current for that grant. That certificate used to be read
from the peer's row, which holds only the latest certificate issued to the peer, so once
a peer holding several grants had enrolled or renewed another one, the lost answer could
no longer be fetched. Each grant now stores the certificate it is served with.

The backfill gives a grant the peer's certificate when the grant's serial is the peer's
latest and no other grant of the peer has that serial (grants_0002 gave every active grant
of a peer the peer's one serial, and that certificate names only one of them). The other
grants keep none: a lost answer for them could not be repeated before either; the repeat
paths then fall back to the peer's row as before (mosaic.repeats), which still checks
the certificate's serial, grant, subject and key.

Revision ID: grants_0003
Revises: grants_0002
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mosaic.sqltypes import UtcDateTime

revision: str = "grants_0003"
down_revision: str | None = "grants_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("federation_grants") as batch:
        batch.add_column(sa.Column("cert_pem", sa.Text, nullable=True))
        batch.add_column(sa.Column("cert_not_after", UtcDateTime, nullable=True))
    match = (
        " WHERE p.id = federation_grants.peer_id"
        " AND p.cert_serial = federation_grants.cert_serial"
        " AND NOT EXISTS (SELECT 1 FROM federation_grants g"
        " WHERE g.peer_id = federation_grants.peer_id"
        " AND g.cert_serial = federation_grants.cert_serial"
        " AND g.id <> federation_grants.id)"
    )
    op.execute(
        "UPDATE federation_grants SET "  # noqa: S608 (constant fragments only)
        f"cert_pem = (SELECT p.cert_pem FROM federation_peers p{match}), "
        f"cert_not_after = (SELECT p.cert_not_after FROM federation_peers p{match}) "
        "WHERE cert_serial IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("federation_grants") as batch:
        batch.drop_column("cert_not_after")
        batch.drop_column("cert_pem")
