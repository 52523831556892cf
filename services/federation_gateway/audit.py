"""The append-only audit log, written with group commit.

A peer's response is sent only after its audit row is committed. Concurrent
requests share one transaction: the writer drains every record queued while the
previous commit ran, inserts them together, and wakes all their callers — so
auditing adds one commit latency, not one commit per request in series.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import insert, select

from federation_gateway.store import federation_audit_log
from mosaic.db import Database
from mosaic.sqltypes import utcnow

log = logging.getLogger("mosaic.audit")

MAX_BATCH = 512
OUTCOMES = ("allowed", "denied", "error")


@dataclass
class AuditRecord:
    """One peer request (or enrollment attempt), allowed or not."""

    request_id: str
    verb: str
    status: str
    outcome: str
    peer_id: uuid.UUID | None = None
    grant_id: uuid.UUID | None = None
    subject_user_id: uuid.UUID | None = None
    resource: str | None = None
    reason: str | None = None
    query_hash: str | None = None
    bytes_out: int = 0
    latency_ms: float = 0.0
    source_address: str | None = None
    detail: str | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    created_at: dt.datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")


class AuditWriter:
    """Commits audit rows in shared transactions; ``record`` returns once its row is durable."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: asyncio.Queue[tuple[AuditRecord, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0  # for benchmarks: rows per commit = recorded / commits
        self.recorded = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def record(self, record: AuditRecord) -> None:
        """Queue ``record`` and wait until the transaction holding it has committed."""
        self.start()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((record, done))
        await done

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                async with self._db.engine.begin() as conn:
                    await conn.execute(
                        insert(federation_audit_log), [asdict(rec) for rec, _ in batch]
                    )
            except asyncio.CancelledError:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(RuntimeError("audit writer stopped"))
                raise
            except Exception as exc:  # every waiter learns the commit failed
                log.error("audit commit failed", exc_info=exc)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.commits += 1
            self.recorded += len(batch)
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def list(
        self,
        *,
        peer_id: uuid.UUID | None = None,
        since: dt.datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first, optionally for one peer and after a time."""
        query = select(federation_audit_log).order_by(federation_audit_log.c.created_at.desc())
        if peer_id is not None:
            query = query.where(federation_audit_log.c.peer_id == peer_id)
        if since is not None:
            query = query.where(federation_audit_log.c.created_at >= since)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query.limit(limit))).mappings().all()
        return [dict(r) for r in rows]
