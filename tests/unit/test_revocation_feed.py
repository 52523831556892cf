"""ca-service's revocation feed after a database outage: the first poll that succeeds
reads back to the last one that did, so a revocation another replica committed meanwhile
reaches every watcher, however long the outage lasted."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from ca_service import revocations
from ca_service.app import MIGRATIONS
from ca_service.revocations import RevocationFeed, Subscription, WatcherBehind
from ca_service.store import IssuedRecord, issued_certificates
from mosaic.db import Database
from mosaic.sqltypes import utcnow


async def test_a_revocation_made_during_a_long_outage_is_still_delivered(tmp_path: Path) -> None:
    db = Database(
        f"sqlite+aiosqlite:///{tmp_path / 'ca.db'}", schema="ca", migrations_dir=MIGRATIONS
    )
    await db.migrate()
    try:
        feed = RevocationFeed(db.engine, window=timedelta(seconds=10))
        await feed._prime()
        # The polls since failed for a minute; meanwhile another replica revoked a
        # certificate, 30 s ago: older than the window, newer than the last good read.
        now = utcnow()
        feed._last_read = now - timedelta(minutes=1)
        async with db.engine.begin() as conn:
            await conn.execute(
                insert(issued_certificates).values(
                    serial="5e71a1",
                    grant_id=uuid.uuid4(),
                    subject_user_id=uuid.uuid4(),
                    peer_id=uuid.uuid4(),
                    backend="local",
                    fingerprint_sha256="0" * 64,
                    not_before=now - timedelta(hours=1),
                    not_after=now + timedelta(hours=1),
                    created_at=now - timedelta(hours=1),
                    revoked_at=now - timedelta(seconds=30),
                    revoke_reason="revoked by replica 2",
                )
            )
        with feed.subscribe() as subscription:
            await feed._poll_once()  # the database answers again
            batches = subscription.batches()
            batch = await asyncio.wait_for(batches.__anext__(), 5)
        assert [r.serial for r in batch] == ["5e71a1"]
    finally:
        await db.dispose()


def _record(serial: str, revoked_at: datetime) -> IssuedRecord:
    return IssuedRecord(
        serial=serial,
        grant_id=str(uuid.uuid4()),
        subject_user_id=str(uuid.uuid4()),
        peer_id=str(uuid.uuid4()),
        backend="local",
        fingerprint_sha256="0" * 64,
        not_before=revoked_at - timedelta(days=1),
        not_after=revoked_at + timedelta(days=1),
        created_at=revoked_at - timedelta(days=1),
        revoked_at=revoked_at,
        revoke_reason="test",
    )


async def test_a_stalled_watcher_is_cut_off_and_the_others_keep_their_revocations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(revocations, "MAX_PENDING_BATCHES", 3)
    feed = RevocationFeed(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'ca.db'}"))
    now = utcnow()
    with feed.subscribe() as stalled, feed.subscribe() as reading:
        batches = reading.batches()
        for i in range(5):
            feed.publish([_record(f"a{i}", now)])
            got = await asyncio.wait_for(batches.__anext__(), 5)
            assert [r.serial for r in got] == [f"a{i}"]
        # The stalled watcher's stream ends (it reconnects and gets a snapshot) instead
        # of holding every revocation since it stopped reading.
        with pytest.raises(WatcherBehind):
            await asyncio.wait_for(stalled.batches().__anext__(), 5)
        assert stalled._queue.qsize() == 0


async def test_a_long_lived_watcher_forgets_serials_past_the_poll_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    subscription = Subscription()
    now = utcnow()
    subscription.mark_sent([_record("old", now - timedelta(days=30)), _record("new", now)])
    subscription.put([_record("next", now)])
    monkeypatch.setattr(subscription, "_pruned_at", now - revocations.POLL_WINDOW)
    got = await asyncio.wait_for(subscription.batches().__anext__(), 5)
    assert [r.serial for r in got] == ["next"]
    assert set(subscription._sent) == {"new", "next"}
