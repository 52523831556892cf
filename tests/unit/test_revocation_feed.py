"""ca-service's revocation feed after a database outage: the first poll that succeeds
reads back to the last one that did, so a revocation another replica committed meanwhile
reaches every watcher, however long the outage lasted."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert

from ca_service.app import MIGRATIONS
from ca_service.revocations import RevocationFeed
from ca_service.store import issued_certificates
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
