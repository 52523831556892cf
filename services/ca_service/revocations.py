"""The revocation feed behind WatchRevocations: every new revocation, to every watcher.

A revocation made by this process is published at once (:meth:`RevocationFeed.publish`).
One made by another ca-service replica sharing the database is found by polling the
table about once a second, so a gateway watching any replica learns of every
revocation. Polling reads a sliding window of recent revocations (not a high-water
mark) so a replica whose clock is behind ours by less than the window is not missed;
after polls failed (a database outage), the next one reads back to the start of the last
one that succeeded.
The first poll, at start, is no different: it publishes what it finds, and reads back to
when the feed was made. The listener serves WatchRevocations before that poll (and while
it retries one that failed), so a watcher's snapshot may predate it; none predates the feed.
Watchers de-duplicate by serial: the same revocation may arrive both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from ca_service import store
from ca_service.store import IssuedRecord
from mosaic.sqltypes import utcnow

log = logging.getLogger("ca_service.revocations")

POLL_INTERVAL_S = 1.0
POLL_WINDOW = timedelta(minutes=10)
# Batches queued for one watcher before it is cut off as stalled (it reconnects and gets
# a snapshot, which holds everything it missed).
MAX_PENDING_BATCHES = 1000


class FeedClosed(Exception):
    """The feed stopped (the service is shutting down); watchers should reconnect."""


class WatcherBehind(FeedClosed):
    """This watcher stopped reading and was cut off; it should reconnect."""


_BEHIND: list[IssuedRecord] = []  # the sentinel that ends a stalled watcher's stream


class Subscription:
    """One watcher's queue of revocation batches."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[list[IssuedRecord] | None] = asyncio.Queue(MAX_PENDING_BATCHES)
        self._cut_off = False
        # Serials already sent, by when they were revoked. Only needed while the feed may
        # still hand the same revocation over again (inside its poll window); older ones
        # are dropped, so a long-lived stream does not keep every serial it ever sent.
        self._sent: dict[str, datetime] = {}
        self._pruned_at = utcnow()

    def mark_sent(self, records: Iterable[IssuedRecord]) -> None:
        now = utcnow()
        for record in records:
            self._sent[record.serial] = record.revoked_at or now

    def put(self, records: list[IssuedRecord] | None) -> None:
        if self._cut_off:
            return
        try:
            self._queue.put_nowait(records)
        except asyncio.QueueFull:
            # Grown this far, the watcher is not reading: end its stream rather than keep
            # growing. What is queued is dropped; its reconnection starts with a snapshot.
            self._cut_off = True
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None if records is None else _BEHIND)

    async def batches(self) -> AsyncIterator[list[IssuedRecord]]:
        """New revocations not yet sent to this watcher; raises FeedClosed at shutdown and
        WatcherBehind once it is cut off."""
        while True:
            batch = await self._queue.get()
            if batch is None:
                raise FeedClosed
            if batch is _BEHIND:
                raise WatcherBehind
            self._prune()
            fresh = [r for r in batch if r.serial not in self._sent]
            if fresh:
                self.mark_sent(fresh)
                yield fresh

    def _prune(self) -> None:
        now = utcnow()
        if now - self._pruned_at < POLL_WINDOW:
            return
        # After an outage the feed reads back further than its window, so keep twice it;
        # a serial re-sent after that is harmless (the gateway keeps a set).
        oldest = now - 2 * POLL_WINDOW
        self._sent = {serial: at for serial, at in self._sent.items() if at >= oldest}
        self._pruned_at = now


class RevocationFeed:
    """Fans revocations out to watchers; :meth:`run` polls the table for other replicas'."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        poll_interval_s: float = POLL_INTERVAL_S,
        window: timedelta = POLL_WINDOW,
    ) -> None:
        self._engine = engine
        self._poll_interval_s = poll_interval_s
        self._window = window
        self._subscribers: set[Subscription] = set()
        # serial -> revoked_at of revocations already fanned out, pruned to the window.
        self._known: dict[str, datetime] = {}
        self._closed = False
        # When the last read that succeeded began: after failed polls (a database outage)
        # the next one reads back from there, however long the outage lasted. Before the
        # first read, when the feed was made: a watcher may have read its snapshot any time
        # since, so the first read goes back that far too.
        self._last_read: datetime = utcnow()

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        """Register a watcher. Subscribe *before* reading the snapshot so nothing falls between."""
        if self._closed:
            raise FeedClosed
        subscription = Subscription()
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    def publish(self, records: list[IssuedRecord]) -> None:
        """Hand revocations this process just committed to every watcher."""
        fresh = [r for r in records if r.serial not in self._known]
        for record in fresh:
            self._known[record.serial] = record.revoked_at or utcnow()
        if fresh:
            for subscription in self._subscribers:
                subscription.put(fresh)

    async def run(self) -> None:
        """Poll for revocations committed by other replicas until cancelled: at once, then
        every poll interval."""
        try:
            while True:
                try:
                    await self._poll_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # A database hiccup must not end the feed; the next poll catches up.
                    log.warning("revocation poll failed", extra={"error": type(exc).__name__})
                await asyncio.sleep(self._poll_interval_s)
        finally:
            self.close()

    def close(self) -> None:
        """End every watch stream (they get UNAVAILABLE and reconnect elsewhere)."""
        self._closed = True
        for subscription in list(self._subscribers):
            subscription.put(None)

    async def _poll_once(self) -> None:
        started = utcnow()
        since = min(started, self._last_read) - self._window
        recent = await store.list_revoked(self._engine, revoked_since=since)
        self.publish(recent)
        self._known = {serial: at for serial, at in self._known.items() if at >= since}
        self._last_read = started
