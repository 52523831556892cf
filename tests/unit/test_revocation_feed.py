"""ca-service's revocation feed: a revocation another replica commits reaches every
watcher, whether it falls during a database outage (the first poll that succeeds reads
back to the last one that did, however long the outage lasted) or while this replica is
starting (its listener serves WatchRevocations before the feed's first read)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ca_service import revocations, store
from ca_service.app import MIGRATIONS
from ca_service.revocations import RevocationFeed, Subscription, WatcherBehind
from ca_service.servicer import CertificateAuthorityServicer
from ca_service.store import IssuedRecord, issued_certificates
from mosaic.config import to_async_postgres_url
from mosaic.db import Database
from mosaic.federation.v1 import ca_pb2, ca_pb2_grpc
from mosaic.sqltypes import utcnow


async def _revoked_by_another_replica(
    engine: AsyncEngine, serial: str, revoked_at: datetime
) -> None:
    """The row another replica's RevokeCertificate commits: only a poll can deliver it."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(issued_certificates).values(
                serial=serial,
                grant_id=uuid.uuid4(),
                subject_user_id=uuid.uuid4(),
                peer_id=uuid.uuid4(),
                backend="local",
                fingerprint_sha256="0" * 64,
                not_before=revoked_at - timedelta(hours=1),
                not_after=revoked_at + timedelta(hours=1),
                created_at=revoked_at - timedelta(hours=1),
                revoked_at=revoked_at,
                revoke_reason="revoked by replica 2",
            )
        )


async def test_a_revocation_made_during_a_long_outage_is_still_delivered(tmp_path: Path) -> None:
    db = Database(
        f"sqlite+aiosqlite:///{tmp_path / 'ca.db'}", schema="ca", migrations_dir=MIGRATIONS
    )
    await db.migrate()
    try:
        feed = RevocationFeed(db.engine, window=timedelta(seconds=10))
        await feed._poll_once()
        # The polls since failed for a minute; meanwhile another replica revoked a
        # certificate, 30 s ago: older than the window, newer than the last good read.
        now = utcnow()
        feed._last_read = now - timedelta(minutes=1)
        await _revoked_by_another_replica(db.engine, "5e71a1", now - timedelta(seconds=30))
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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def ca_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """ca-service's table on either engine; replicas in production share one on Postgres."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'ca.db'}"
    else:
        url = to_async_postgres_url(request.getfixturevalue("postgres_url"))
    db = Database(url, schema="ca", migrations_dir=MIGRATIONS)
    await db.migrate()
    yield db
    await db.dispose()


async def _serve_watch(feed: RevocationFeed, engine: AsyncEngine) -> tuple[grpc.aio.Server, str]:
    """ca-service's real WatchRevocations on a plain in-process server. Watching needs no
    CA backend, configuration or TLS, so those are left out (the ACL and TLS in front of
    it are tested in integration/test_ca_service.py)."""
    servicer = CertificateAuthorityServicer(
        config=cast(Any, SimpleNamespace(cert_max_lifetime_s=3600, cert_default_lifetime_s=3600)),
        engine=engine,
        backend=cast(Any, None),
        feed=feed,
        server_root=cast(Any, None),
    )
    server = grpc.aio.server()
    ca_pb2_grpc.add_CertificateAuthorityServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _revocation_after_snapshot(
    feed: RevocationFeed,
    engine: AsyncEngine,
    *,
    revoked_at: datetime,
) -> list[str]:
    """A replica starting: its listener serves a watch (the snapshot is read), another
    replica revokes a certificate, and only then does the feed start polling, as
    ServiceHost starts background jobs after the listeners. Returns the serials of the
    first message after the snapshot (a test failure if none comes)."""
    server, address = await _serve_watch(feed, engine)
    poller: asyncio.Task[None] | None = None
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            watch = ca_pb2_grpc.CertificateAuthorityStub(channel).WatchRevocations(
                ca_pb2.WatchRevocationsRequest(), timeout=60
            )
            stream = watch.__aiter__()
            first = await stream.__anext__()
            assert first.snapshot and not first.revocations
            await _revoked_by_another_replica(engine, "5e71a1", revoked_at)
            poller = asyncio.create_task(feed.run())
            # Delivered by the feed's first read that succeeds; without it the gateway
            # would hear of the revocation only when its stream next broke.
            try:
                update = await asyncio.wait_for(stream.__anext__(), 10)
            except TimeoutError:
                pytest.fail("the watcher never heard of the other replica's revocation")
            watch.cancel()
            return [r.serial for r in update.revocations]
    finally:
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        await server.stop(0)


async def test_a_revocation_made_while_a_replica_starts_reaches_its_early_watchers(
    ca_database: Database,
) -> None:
    """The feed's first read finds the other replica's revocation; it must hand it to the
    watchers already served, not just note it as seen (which kept every later poll from
    publishing it)."""
    # No second poll within the test: the first read alone must deliver.
    feed = RevocationFeed(ca_database.engine, poll_interval_s=3600)
    serials = await _revocation_after_snapshot(feed, ca_database.engine, revoked_at=utcnow())
    assert serials == ["5e71a1"]


async def test_a_revocation_made_while_a_starting_replica_cannot_read_reaches_its_watchers(
    ca_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed's first read fails (this replica cannot reach the database yet) and
    succeeds only after longer than the poll window; the watcher's snapshot was read
    before, so the first read that succeeds must reach back to when the feed was made,
    not one window before itself."""
    clock = [utcnow()]
    monkeypatch.setattr(revocations, "utcnow", lambda: clock[0])
    feed = RevocationFeed(ca_database.engine, poll_interval_s=0.01, window=timedelta(seconds=10))
    real_list_revoked = store.list_revoked
    feed_reads = 0

    async def list_revoked(engine: AsyncEngine, **kwargs: Any) -> list[IssuedRecord]:
        nonlocal feed_reads
        if kwargs.get("revoked_since") is not None:  # the feed's, not the snapshot's
            feed_reads += 1
            if feed_reads == 1:
                clock[0] += timedelta(minutes=1)  # the retry comes a minute later
                raise ConnectionRefusedError("database unreachable")
        return await real_list_revoked(engine, **kwargs)

    monkeypatch.setattr(store, "list_revoked", list_revoked)
    serials = await _revocation_after_snapshot(
        feed, ca_database.engine, revoked_at=clock[0] + timedelta(seconds=30)
    )
    assert feed_reads >= 2
    assert serials == ["5e71a1"]
