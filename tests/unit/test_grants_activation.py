"""grants-service's activation (the last step of a redeem) on the real store (SQLite): a
grant whose expiry has passed is not activated, even if nothing moved it to expired yet
(the servicer expires due grants first, but the expiry may pass between that and the
activation's own conditional UPDATE)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update

from grants_service import domain
from grants_service.app import MIGRATIONS
from grants_service.store import GrantsStore, federation_grants
from mosaic.db import Database
from mosaic.scope import parse_scope


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[GrantsStore]:
    db = Database(
        f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", schema="grants", migrations_dir=MIGRATIONS
    )
    await db.migrate()
    try:
        yield GrantsStore(db)
    finally:
        await db.dispose()


async def _pending_grant(
    store: GrantsStore, expires_in: dt.timedelta
) -> tuple[uuid.UUID, uuid.UUID]:
    """A pending grant for a new peer, whose expiry is ``expires_in`` from now (set in the
    table directly: the clock cannot be moved, and CreateGrant refuses a past expiry)."""
    now = dt.datetime.now(dt.UTC)
    grant, peer, _ = await store.create_grant(
        domain.NewGrant(
            subject_user_id=uuid.uuid4(),
            peer_name="a",
            scope=parse_scope({"resources": ["tasks"]}),
            expires_at=None,
        ),
        now=now,
    )
    async with store._engine.begin() as conn:
        await conn.execute(
            update(federation_grants)
            .where(federation_grants.c.id == grant.id)
            .values(expires_at=now + expires_in)
        )
    return grant.id, peer.id


async def _activate(store: GrantsStore, grant_id: uuid.UUID, peer_id: uuid.UUID) -> str:
    try:
        await store.activate_grant_and_peer(
            grant_id=grant_id,
            peer_id=peer_id,
            cert_serial="5e01",
            cert_pem="PEM",
            cert_not_after=None,
            token_id=uuid.uuid4(),
            now=dt.datetime.now(dt.UTC),
        )
    except domain.TransitionRefused as exc:
        return exc.reason
    return "OK"


@pytest.mark.parametrize(
    ("expires_in", "outcome", "states"),
    [
        (dt.timedelta(hours=1), "OK", ("active", "active")),
        (-dt.timedelta(seconds=1), "GRANT_EXPIRED", ("pending", "pending")),
    ],
)
async def test_a_grant_whose_expiry_has_passed_is_not_activated(
    store: GrantsStore, expires_in: dt.timedelta, outcome: str, states: tuple[str, str]
) -> None:
    grant_id, peer_id = await _pending_grant(store, expires_in)

    assert await _activate(store, grant_id, peer_id) == outcome
    grant = await store.get_grant(grant_id)
    peer = await store.get_peer(str(peer_id))
    assert (grant.status, peer.state) == states
    assert grant.cert_serial == ("5e01" if outcome == "OK" else None)
