"""no grant keeps a certificate it shares with another grant of its peer

grants_0003 was rewritten after it had reached main (released in 48c7fd7, rewritten in
5628638), and a database that recorded grants_0003 never runs its text again. The
backfill released first copied the peer's certificate onto every grant of the peer whose
serial was the peer's latest, also when several grants of the peer held that serial
(grants_0002 gave every active grant of a peer the peer's one serial). That certificate
names only one of them: for the others, a repeated redeem or renewal (mosaic.repeats)
finds a certificate of another grant and refuses it without falling back to the peer's
row as it would for a grant holding no certificate.

This migration empties ``cert_pem`` and ``cert_not_after`` of every grant whose serial
another grant of the same peer holds too: exactly the grants the rewritten backfill
leaves empty that the first one filled. No other grant can hold such a serial: since
grants_0002 every certificate is issued for one grant, so a serial two grants share is
grants_0002's backfill. Rows already empty are not touched, so running it again changes
nothing; on a database that ran the rewritten grants_0003 it finds nothing to change.

Downgrade: nothing to do. The certificates emptied named other grants and served no one;
the schema is unchanged.

Revision ID: grants_0004
Revises: grants_0003
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "grants_0004"
down_revision: str | None = "grants_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE federation_grants SET cert_pem = NULL, cert_not_after = NULL "
        "WHERE (cert_pem IS NOT NULL OR cert_not_after IS NOT NULL) "
        "AND EXISTS (SELECT 1 FROM federation_grants g "
        "WHERE g.peer_id = federation_grants.peer_id "
        "AND g.cert_serial = federation_grants.cert_serial "
        "AND g.id <> federation_grants.id)"
    )


def downgrade() -> None:
    pass  # see the docstring: nothing to restore
