"""each grant keeps its own current certificate, not only its serial

A peer that lost B's answer to a redeem or a renewal repeats the call and is answered
with the certificate B made current for that grant. That certificate used to be read
from the peer's row, which holds only the latest certificate issued to the peer, so once
a peer holding several grants had enrolled or renewed another one, the lost answer could
no longer be fetched. Each grant now stores the certificate it is served with. Existing
grants whose serial is still the peer's latest take the peer's certificate; the others
(whose certificate is already older than the repeat windows) keep none.

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
    op.execute(
        "UPDATE federation_grants SET "
        "cert_pem = (SELECT p.cert_pem FROM federation_peers p"
        " WHERE p.id = federation_grants.peer_id"
        " AND p.cert_serial = federation_grants.cert_serial), "
        "cert_not_after = (SELECT p.cert_not_after FROM federation_peers p"
        " WHERE p.id = federation_grants.peer_id"
        " AND p.cert_serial = federation_grants.cert_serial) "
        "WHERE cert_serial IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("federation_grants") as batch:
        batch.drop_column("cert_not_after")
        batch.drop_column("cert_pem")
