"""Enrollment token claims: a redeem that outlived its claim cannot undo the claim of the
redeem that took the token over."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from enrollment_service.app import MIGRATIONS
from enrollment_service.domain import new_token
from enrollment_service.store import TokenStore
from mosaic.db import Database

T0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[TokenStore]:
    db = Database(
        f"sqlite+aiosqlite:///{tmp_path / 'enrollment.db'}",
        schema="enrollment",
        migrations_dir=MIGRATIONS,
    )
    await db.migrate()
    yield TokenStore(db)
    await db.dispose()


async def test_a_stale_claim_does_not_release_the_claim_that_replaced_it(
    store: TokenStore,
) -> None:
    token = new_token(T0, dt.timedelta(minutes=15))
    await store.create(token, grant_id=uuid.uuid4(), peer_id=uuid.uuid4(), now=T0)
    slow = await store.claim(token.token_hash, now=T0, until=T0 + dt.timedelta(seconds=60))
    assert slow is not None
    later = T0 + dt.timedelta(seconds=61)  # the slow redeem's claim has run out
    fresh = await store.claim(token.token_hash, now=later, until=later + dt.timedelta(seconds=60))
    assert fresh is not None

    await store.release(slow, failed=True)  # the slow redeem gives up, late

    # The token is still the fresh redeem's: nobody else may claim it ...
    assert await store.claim(token.token_hash, now=later, until=later) is None
    # ... and the fresh redeem finishes it.
    assert await store.mark_used(fresh.id, serial="5e71a1", now=later)
    found = await store.find(token.token_hash)
    assert found is not None and found.state == "used" and found.failed_attempts == 0


async def test_a_redeem_releases_its_own_claim(store: TokenStore) -> None:
    token = new_token(T0, dt.timedelta(minutes=15))
    await store.create(token, grant_id=uuid.uuid4(), peer_id=uuid.uuid4(), now=T0)
    claim = await store.claim(token.token_hash, now=T0, until=T0 + dt.timedelta(seconds=60))
    assert claim is not None
    await store.release(claim, failed=True)
    found = await store.find(token.token_hash)
    assert found is not None and (found.state, found.failed_attempts) == ("unused", 1)
