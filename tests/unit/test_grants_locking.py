"""grants-service on Postgres: transactions that write a peer and its grants lock the peer
first. Activation and renewal used to update the grant, then the peer, while a peer's
revocation updates the peer, then its grants: run together, Postgres found a deadlock and
one of them failed as INTERNAL."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from grants_service import domain
from grants_service.app import MIGRATIONS
from grants_service.store import GrantsStore
from mosaic.config import to_async_postgres_url
from mosaic.db import Database
from mosaic.scope import parse_scope

pytestmark = pytest.mark.postgres

# How long the first transaction holds its first lock before taking the second: long
# enough for the revocation to take the peer row in between, were it free.
HOLD_S = 0.5


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[GrantsStore]:
    db = Database(to_async_postgres_url(postgres_url), schema="grants", migrations_dir=MIGRATIONS)
    await db.migrate()
    try:
        yield GrantsStore(db)
    finally:
        await db.dispose()


@pytest.fixture
def slow_peer_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold the transaction between its grant update and its peer update."""
    original = GrantsStore._set_peer_certificate

    async def slow(*args: Any, **kwargs: Any) -> bool:
        await asyncio.sleep(HOLD_S)
        return await original(*args, **kwargs)

    monkeypatch.setattr(GrantsStore, "_set_peer_certificate", staticmethod(slow))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _grant(store: GrantsStore) -> tuple[uuid.UUID, uuid.UUID]:
    new = domain.NewGrant(
        subject_user_id=uuid.uuid4(),
        peer_name=f"p-{uuid.uuid4().hex[:8]}",
        scope=parse_scope({"resources": ["tasks"]}),
        expires_at=None,
    )
    grant, peer, _ = await store.create_grant(new, now=_now())
    return grant.id, peer.id


async def _activate(store: GrantsStore, grant_id: uuid.UUID, peer_id: uuid.UUID) -> None:
    await store.activate_grant_and_peer(
        grant_id=grant_id,
        peer_id=peer_id,
        cert_serial="a1",
        cert_pem="PEM",
        cert_not_after=None,
        token_id=None,
        now=_now(),
    )


async def _revoke_peer_soon(store: GrantsStore, peer_id: uuid.UUID) -> list[uuid.UUID]:
    await asyncio.sleep(HOLD_S / 5)  # the other transaction holds its first lock by now
    _, revoked = await store.set_peer_state(peer_id, target="revoked", reason="", now=_now())
    return revoked


async def test_activation_and_peer_revocation_do_not_deadlock(
    store: GrantsStore, slow_peer_update: None
) -> None:
    grant_id, peer_id = await _grant(store)
    _, revoked = await asyncio.gather(
        _activate(store, grant_id, peer_id), _revoke_peer_soon(store, peer_id)
    )
    # The revocation waited for the activation, then revoked the grant it had activated.
    assert revoked == [grant_id]
    assert (await store.get_grant(grant_id)).status == "revoked"


async def test_renewal_and_peer_revocation_do_not_deadlock(
    store: GrantsStore, slow_peer_update: None
) -> None:
    grant_id, peer_id = await _grant(store)
    await _activate(store, grant_id, peer_id)
    renewal = store.rotate_peer_certificate(
        peer_id,
        grant_id=grant_id,
        expected_serial="a1",
        new=domain.NewCertificate(cert_pem="PEM2", cert_serial="b2", cert_not_after=_now()),
        now=_now(),
    )
    _, revoked = await asyncio.gather(renewal, _revoke_peer_soon(store, peer_id))
    assert revoked == [grant_id]
    grant = await store.get_grant(grant_id)
    assert (grant.status, grant.cert_serial) == ("revoked", "b2")
