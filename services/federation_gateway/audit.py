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
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects import sqlite

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

    def row(self) -> dict[str, Any]:
        """The table row (dataclasses.asdict deep-copies every value; this does not)."""
        return {name: getattr(self, name) for name in _COLUMNS}


_COLUMNS = tuple(f.name for f in fields(AuditRecord))


class AuditWriter:
    """Commits audit rows in shared transactions; ``record`` returns once its row is durable."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: asyncio.Queue[tuple[AuditRecord, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0  # for benchmarks: rows per commit = recorded / commits
        self.recorded = 0
        # SQLite: commit each batch on one worker thread with the sqlite3 driver directly —
        # one thread hop per batch instead of aiosqlite's several, and no per-row ORM work —
        # binding values with SQLAlchemy's own type processors so rows read back the same.
        # Postgres: the async engine.
        self._sqlite: _SqliteAppender | None = None
        self._executor: ThreadPoolExecutor | None = None
        if db.is_sqlite:
            self._sqlite = _SqliteAppender(db.engine.url.database or "")
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="audit-commit")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._executor is not None:
            if self._sqlite is not None:
                self._executor.submit(self._sqlite.close)
            self._executor.shutdown(wait=True)
            self._executor = None

    async def record(self, record: AuditRecord) -> None:
        """Queue ``record`` and wait until the transaction holding it has committed."""
        self.start()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((record, done))  # unbounded: never blocks
        await done

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        if self._executor is not None and self._sqlite is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._sqlite.append, rows)
            return
        async with self._db.engine.begin() as conn:
            await conn.execute(insert(federation_audit_log), rows)

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._insert([rec.row() for rec, _ in batch])
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


class _SqliteAppender:
    """Appends audit rows to the SQLite file; used from one worker thread only."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        dialect = sqlite.dialect()
        compiled = insert(federation_audit_log).compile(dialect=dialect)
        self._sql = str(compiled)
        self._names = list(compiled.positiontup or [])
        columns = federation_audit_log.c
        self._processors = [
            columns[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in self._names
        ]
        if dialect.paramstyle != "qmark":  # pragma: no cover - sqlite3 is always qmark
            raise RuntimeError("unexpected SQLite paramstyle")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, timeout=30, isolation_level=None)
            # The same settings mosaic.db gives every SQLite connection.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._conn = conn
        return self._conn

    def append(self, rows: list[dict[str, Any]]) -> None:
        params = [
            tuple(
                proc(row[name]) if proc is not None else row[name]
                for name, proc in zip(self._names, self._processors, strict=True)
            )
            for row in rows
        ]
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(self._sql, params)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
