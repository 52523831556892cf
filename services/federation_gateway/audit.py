"""The append-only audit log, written with group commit.

A peer's response is sent only after its audit row is committed. Concurrent
requests share one transaction: a batch holds every record queued before the loop got
to its flush (requests woken together, such as the sharers of one resource-service
read) or while the previous commit ran, and all their callers are woken together — so
auditing adds one commit latency, not one commit per request in series.

On SQLite a batch is committed on the event loop itself when the write lock is free
(one multi-row INSERT appended to the WAL, no fsync with ``synchronous=NORMAL``: under
``make bench`` about 0.2-0.3 ms of CPU per commit of about 5 rows).
Measured under ``make bench``, handing each batch to a worker thread instead cost about
3 ms of waiting per request (the thread and the loop contend for the GIL row by row)
against about 1 ms inline. The loop never waits for a lock, though: the inline
connection has no busy timeout, and a batch that finds the lock taken (another replica
on the same file, a migration) is committed by the worker thread, which may wait.
Checkpoints, which copy the WAL into the database and fsync it, also run on that
thread, never on the loop.

Row ids are UUIDv7 (time-ordered, mosaic.ids), so inserts append to the key's index.

Since no request is answered without its row, a database that cannot take rows (disk
full, Postgres down) refuses every request while its ``SELECT 1`` still answers: the
writer keeps its last commit failure (when, and a generic kind: never SQL or values), and
while it has one health says NOT_SERVING and the doctor's ``audit_log`` row fails. It is
cleared by the next commit, or by a test write (``AuditWriter.recheck``) that readiness
and the doctor try at most once a second while the failure stands: a replica that a load
balancer stops sending requests to (because it is NOT_SERVING) would otherwise never
see the commit that clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import bindparam, delete, insert, select, union_all
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import sqlite

from federation_gateway.store import federation_audit_log
from mosaic.db import (
    DATABASE_RETRY_AFTER_S,
    Database,
    database_failure_kind,
    database_unavailable,
)
from mosaic.errors import unavailable
from mosaic.federation.v1 import common_pb2
from mosaic.ids import uuid7
from mosaic.sqltypes import utcnow

log = logging.getLogger("mosaic.audit")

# The audit log cannot be written (its database is down, full or locked): the request is
# refused, since nothing is answered without its committed audit row.
AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"

MAX_BATCH = 512
# close()'s wait for queued rows, within the 10 s a stop may take (8 s of it the server's
# grace for requests in flight).
CLOSE_DRAIN_S = 1.5
# Inline commits leave the WAL to grow; the worker thread checkpoints it (PASSIVE: it
# never blocks a writer) after this many commits.
CHECKPOINT_EVERY_COMMITS = 200
LOCKED_WAIT_S = 30.0
OUTCOMES = ("allowed", "denied", "error")
# While a commit failure stands, readiness and the doctor try a test write at most once
# per PROBE_EVERY_S and wait for it at most PROBE_WAIT_S (one that takes longer reports at
# a later look); PROBE_TIMEOUT_S bounds it. On SQLite it waits PROBE_LOCK_WAIT_S at most
# for the write lock.
PROBE_EVERY_S = 1.0
PROBE_WAIT_S = 0.5
PROBE_TIMEOUT_S = 5.0
PROBE_LOCK_WAIT_S = 1.0

AUDIT_ROWS = Counter(
    "mosaic_audit_rows",
    "Audit rows committed (one per peer request or enrollment attempt), by verb, status "
    "code, outcome and reason code.",
    ["verb", "code", "outcome", "reason"],
)
AUDIT_COMMITS = Counter("mosaic_audit_commits", "Audit transactions committed.")
AUDIT_COMMIT_FAILURES = Counter(
    "mosaic_audit_commit_failures",
    "Audit transactions that failed; none of their requests was answered with data.",
)
AUDIT_BATCH_ROWS = Histogram(
    "mosaic_audit_batch_rows",
    "Rows per committed audit transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)


class AuditUnavailable(RuntimeError):
    """The writer cannot commit now: it is stopping, or another connection held SQLite's
    write lock for over LOCKED_WAIT_S. Nothing of the batch was written."""


def audit_unavailable(error: BaseException) -> bool:
    """Whether a failed ``record`` means the log cannot be written now (the writer stopping,
    the database down, full or locked), rather than a bug."""
    return isinstance(error, AuditUnavailable) or database_unavailable(error)


async def commit_or_refuse(writer: AuditWriter, record: AuditRecord) -> None:
    """Commit a peer request's audit row. When the log cannot be written now, the peer gets
    UNAVAILABLE ``AUDIT_UNAVAILABLE`` (with a retry delay) instead of its answer or
    refusal: nothing is answered without its committed row. A bug stays a bug (INTERNAL)."""
    try:
        await writer.record(record)
    except Exception as exc:
        if not audit_unavailable(exc):
            raise
        log.warning(
            "audit row not committed; request refused",
            exc_info=exc,
            extra={"verb": record.verb, "grant_id": str(record.grant_id or "")},
        )
        raise unavailable(
            AUDIT_UNAVAILABLE,
            "the serving gateway cannot record requests right now; nothing was answered",
            remediation="retry shortly",
            retry_after_s=DATABASE_RETRY_AFTER_S,
        ) from None


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
    id: uuid.UUID = field(default_factory=uuid7)
    # Set by AuditWriter.record when not given: when the request is answered.
    created_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")

    def row(self) -> dict[str, Any]:
        """The table row (dataclasses.asdict deep-copies every value; this does not)."""
        return {name: getattr(self, name) for name in _COLUMNS}


_COLUMNS = tuple(f.name for f in fields(AuditRecord))

# The SQLite INSERT of one row, and its columns in the order sqlite_params gives values.
_SQLITE = sqlite.dialect()
_SQLITE_COMPILED = insert(federation_audit_log).compile(dialect=_SQLITE)
SQLITE_COLUMNS = tuple(_SQLITE_COMPILED.positiontup or ())
_INSERT_HEAD, _, _ROW_PLACEHOLDERS = str(_SQLITE_COMPILED).partition(" VALUES ")
# The test write's delete (_SqliteAppender.probe); sqlite_params gives the id first.
_DELETE_BY_ID = str(
    delete(federation_audit_log)
    .where(federation_audit_log.c.id == bindparam("id"))
    .compile(dialect=_SQLITE)
)


def _time_processor() -> Callable[[Any], Any]:
    column_type = federation_audit_log.c.created_at.type
    process = column_type.dialect_impl(_SQLITE).bind_processor(_SQLITE)
    if process is None:  # pragma: no cover - UtcDateTime always converts on SQLite
        raise RuntimeError("no SQLite bind processor for created_at")
    return process


_sqlite_time = _time_processor()


@functools.lru_cache(maxsize=64)
def _multi_insert(rows: int) -> str:
    """The INSERT of ``rows`` rows in one statement (values in SQLITE_COLUMNS order)."""
    return f"{_INSERT_HEAD} VALUES {', '.join([_ROW_PLACEHOLDERS] * rows)}"


def _flat(params: list[tuple[Any, ...]]) -> list[Any]:
    return [value for row in params for value in row]


def sqlite_params(rec: AuditRecord) -> tuple[Any, ...]:
    """``rec`` as the table's types store it on SQLite (UUIDs as 32 hex digits, the time as
    naive UTC text), in SQLITE_COLUMNS order. Written out because SQLAlchemy's generic
    per-column bind processing cost more per row than the insert itself."""
    return (
        rec.id.hex,
        _sqlite_time(rec.created_at),
        rec.request_id,
        None if rec.peer_id is None else rec.peer_id.hex,
        None if rec.grant_id is None else rec.grant_id.hex,
        None if rec.subject_user_id is None else rec.subject_user_id.hex,
        rec.verb,
        rec.resource,
        rec.status,
        rec.outcome,
        rec.reason,
        rec.query_hash,
        rec.bytes_out,
        rec.latency_ms,
        rec.source_address,
        rec.detail,
    )


@dataclass(frozen=True, slots=True)
class CommitFailure:
    """The last audit commit that failed: when, and what kind of failure (no SQL, no values)."""

    at: dt.datetime
    monotonic: float
    kind: str


def failure_kind(error: BaseException) -> str:
    """A generic name for why a commit failed, safe to show anywhere, with the error's type."""
    if isinstance(error, (TimeoutError, AuditUnavailable)):  # the write lock held too long
        return f"database locked ({type(error).__name__})"
    return database_failure_kind(error)


class AuditWriter:
    """Commits audit rows in shared transactions; ``record`` returns once its row is committed.

    Committed means: on Postgres, durable; on SQLite (WAL, ``synchronous=NORMAL``, as every
    connection of the instance), it survives a crash of the gateway process, but the last
    commits before a power loss or an OS crash may roll back, since the WAL is not fsynced
    at each commit.

    No writer task and no queue: the first record of a batch schedules a flush with
    ``call_soon``, so the batch holds every record queued before the loop gets to it (the
    requests woken together, e.g. the sharers of one resource-service read). One batch is
    committed at a time; records that arrive while a commit runs off the loop form the
    next batch.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: list[tuple[AuditRecord, asyncio.Future[None]]] = []
        self._flush_scheduled = False
        self._committing: asyncio.Future[None] | None = None  # a batch committed off the loop
        self._closed = False
        self.commits = 0  # for benchmarks: rows per commit = recorded / commits
        self.recorded = 0
        self._row_counters: dict[tuple[str, str, str, str], Counter] = {}
        self._background: set[asyncio.Future[None]] = set()  # record_soon's tasks
        # record_when_done's tasks (also in _background) and the work each waits for.
        self._awaiting_work: dict[asyncio.Future[None], asyncio.Future[Any]] = {}
        self._one_at_a_time = 0  # rows at the head of _pending to commit alone (_settle)
        # SQLite: see _SqliteCommits; Postgres: the async engine.
        self._sqlite = _SqliteCommits(db.engine.url.database or "") if db.is_sqlite else None
        # The last commit failure: cleared by the next commit or test write (recheck).
        self.last_failure: CommitFailure | None = None
        self.last_probe_failure: CommitFailure | None = None  # the last test write that failed
        self._probe: asyncio.Future[None] | None = None
        self._probe_started = -PROBE_EVERY_S

    async def recheck(self) -> None:
        """While a commit failure stands, look again: try a test write (``_probe``) at most
        once per PROBE_EVERY_S and clear the failure once one commits, so the replica
        serves again without waiting for a request it would refuse. Waits for the write at
        most PROBE_WAIT_S. Readiness (every second) and the doctor call this, never a
        request."""
        failure = self.last_failure
        if failure is None or self._closed:
            return
        probe = self._probe
        if probe is None or probe.done():
            if time.monotonic() - self._probe_started < PROBE_EVERY_S:
                return
            self._probe_started = time.monotonic()
            probe = self._probe = asyncio.ensure_future(self._run_probe(failure))
        await asyncio.wait([probe], timeout=PROBE_WAIT_S)

    async def _run_probe(self, failure: CommitFailure) -> None:
        record = AuditRecord(
            request_id="audit-probe",
            verb="probe",
            status="OK",
            outcome="allowed",
            created_at=utcnow(),
        )
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                if self._sqlite is not None:
                    await self._sqlite.probe(sqlite_params(record))
                else:
                    await self._probe_postgres(record)
        except Exception as exc:
            kind = (
                f"no answer within {PROBE_TIMEOUT_S:.0f} s"
                if isinstance(exc, TimeoutError)
                else failure_kind(exc)
            )
            self.last_probe_failure = CommitFailure(utcnow(), time.monotonic(), kind)
            return
        if self.last_failure is failure:  # no commit failed while the probe ran
            self.last_failure = None
            log.info(
                "audit log writable again (a test write committed)",
                extra={"failed_at": failure.at.isoformat(), "kind": failure.kind},
            )

    async def _probe_postgres(self, record: AuditRecord) -> None:
        """Insert a row and roll it back. Postgres places the row in a table page at the
        INSERT (extending the table's file when it must, which a full disk refuses) and
        refuses it when it is down, read-only or in recovery; only the commit's WAL flush
        is left untried, and a server whose WAL cannot be written stops altogether."""
        async with self._db.engine.connect() as conn:
            await conn.execute(insert(federation_audit_log), [record.row()])
            await conn.rollback()

    async def problem(self) -> str | None:
        """For readiness: while commits fail, every request is refused (after a recheck)."""
        await self.recheck()
        failure = self.last_failure
        return None if failure is None else f"audit_log: commits failing, {failure.kind}"

    async def check(self) -> common_pb2.Check:
        """The doctor's ``audit_log`` row, as of now (after a recheck)."""
        await self.recheck()
        failure = self.last_failure
        if failure is None:
            return common_pb2.Check(name="audit_log", ok=True, detail="commits succeed")
        now = time.monotonic()
        detail = (
            f"the last commit failed {now - failure.monotonic:.0f} s ago "
            f"({failure.at:%H:%M:%S} UTC): {failure.kind}"
        )
        probe = self.last_probe_failure
        if probe is not None and probe.monotonic >= failure.monotonic:
            detail += (
                f"; still failing: a test write {now - probe.monotonic:.0f} s ago failed too "
                f"({probe.kind})"
            )
        else:
            detail += "; checking again (a test write each second)"
        return common_pb2.Check(
            name="audit_log",
            ok=False,
            detail=detail + "; every request is refused until a write commits",
            remediation="free disk space where the gateway's database lives (SQLite: "
            "HOME/data/), or check that its database server answers (Postgres); "
            "the gateway's log says `audit commit failed`. This clears by itself within "
            "about a second of the database taking writes again",
        )

    @property
    def commits_on_worker(self) -> int:
        """SQLite: batches that found the write lock taken (committed by the worker)."""
        return self._sqlite.on_worker if self._sqlite is not None else 0

    async def record(self, record: AuditRecord) -> None:
        """Queue ``record`` and wait until the transaction holding it has committed.

        The row's time is set here, when its request is answered (``latency_ms`` says how
        long before that it began): this process's rows then commit in the order of their
        times, so a reader polling with ``--since`` the newest time it has seen misses none
        of them (other replicas writing the same table commit in their own order).
        """
        if self._closed:
            raise AuditUnavailable("audit writer stopped")
        if record.created_at is None:
            record.created_at = utcnow()
        # Postgres refuses NUL in text, and the detail may quote what a caller sent.
        if record.detail and "\x00" in record.detail:
            record.detail = record.detail.replace("\x00", "\ufffd")
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._pending.append((record, done))
        self._schedule_flush(loop)
        await done

    def record_soon(self, record: AuditRecord) -> None:
        """``record`` in a task of its own, for a caller being cancelled that cannot wait
        for the commit: the row is still written (the task is kept until it is done)."""
        task = asyncio.ensure_future(self.record(record))
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def record_when_done(
        self,
        record: AuditRecord,
        work: asyncio.Future[Any],
        settle: Callable[[AuditRecord, asyncio.Future[Any]], None],
    ) -> None:
        """``record`` once ``work`` is done, after ``settle`` has made it say how ``work``
        ended: for a caller being cancelled while work that outlives it still runs (a
        renewal the CA has issued for). Should the writer close first, ``work`` gets half
        of the drain time, then the row is written as it stands."""
        task = asyncio.ensure_future(self._record_when_done(record, work, settle))
        self._background.add(task)
        self._awaiting_work[task] = work
        task.add_done_callback(self._background_done)

    async def _record_when_done(
        self,
        record: AuditRecord,
        work: asyncio.Future[Any],
        settle: Callable[[AuditRecord, asyncio.Future[Any]], None],
    ) -> None:
        try:
            await asyncio.wait([work])  # never raises what work raised
        except asyncio.CancelledError:
            pass  # the writer is closing (close()): the row as it stands, still written
        else:
            settle(record, work)
        await self.record(record)

    def _background_done(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        self._awaiting_work.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("audit row not written", exc_info=task.exception())

    async def close(self, drain_s: float = CLOSE_DRAIN_S) -> None:
        """Stop: first let the rows already queued (those of requests cancelled by the
        server's shutdown included) commit, for at most ``drain_s``; then a commit still
        in flight is abandoned and every waiter left is told. Rows waiting for work that
        outlived its caller (record_when_done) are queued as they stand if that work is
        not done within half of ``drain_s``."""
        deadline = asyncio.get_running_loop().time() + drain_s
        unfinished = [work for work in self._awaiting_work.values() if not work.done()]
        if unfinished:
            await asyncio.wait(unfinished, timeout=drain_s / 2)
            for task, work in list(self._awaiting_work.items()):
                if not work.done():
                    task.cancel()  # its row is written as it stands (_record_when_done)
        while self._pending or self._committing is not None or self._background:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                log.error(
                    "audit rows not written at shutdown",
                    extra={"rows": len(self._pending) + len(self._background)},
                )
                break
            waiting: list[asyncio.Future[Any]] = [*self._background]
            waiting += [done for _, done in self._pending]
            if self._committing is not None:
                waiting.append(self._committing)
            await asyncio.wait(waiting, timeout=left)
        self._closed = True
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._committing is not None:
            self._committing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committing
        for _, done in self._pending:
            if not done.done():
                done.set_exception(AuditUnavailable("audit writer stopped"))
        self._pending.clear()
        if self._sqlite is not None:
            self._sqlite.close()

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._flush_scheduled and self._committing is None and self._pending:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closed or self._committing is not None or not self._pending:
            return
        # After a failed batch its rows go one at a time, so one row the database refuses
        # fails only its own request, not the others that happened to share its commit.
        size = 1 if self._one_at_a_time else MAX_BATCH
        batch = self._pending[:size]
        del self._pending[:size]
        self._one_at_a_time = max(0, self._one_at_a_time - len(batch))
        if self._sqlite is not None:
            params = [sqlite_params(rec) for rec, _ in batch]
            try:
                committed = self._sqlite.commit_inline(params)
            except Exception as exc:  # every waiter learns the commit failed
                self._settle(batch, exc)
            else:
                if committed:
                    self._settle(batch, None)
                else:  # the write lock is taken: wait for it off the loop
                    self._commit_off_loop(batch, self._sqlite.commit_on_worker(params))
        else:
            self._commit_off_loop(batch, self._insert_postgres([rec for rec, _ in batch]))
        if self._committing is None:
            self._schedule_flush(asyncio.get_running_loop())

    def _commit_off_loop(
        self,
        batch: list[tuple[AuditRecord, asyncio.Future[None]]],
        commit: Coroutine[Any, Any, None],
    ) -> None:
        task = asyncio.ensure_future(commit)
        self._committing = task

        def committed(finished: asyncio.Future[None]) -> None:
            self._committing = None
            if finished.cancelled():
                self._settle(batch, AuditUnavailable("audit writer stopped"))
            else:
                self._settle(batch, finished.exception())
            if not self._closed:
                self._schedule_flush(asyncio.get_running_loop())

        task.add_done_callback(committed)

    async def _insert_postgres(self, records: list[AuditRecord]) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(insert(federation_audit_log), [rec.row() for rec in records])

    def _settle(
        self, batch: list[tuple[AuditRecord, asyncio.Future[None]]], error: BaseException | None
    ) -> None:
        if error is not None and len(batch) > 1 and not self._closed and _row_error(error):
            # Retry each row alone (see _flush): nothing was written, all or none. Only for
            # an error one row can cause; a database that is down or locked fails the whole
            # batch at once, rather than once per row.
            log.warning(
                "audit batch failed; committing its rows one by one",
                extra={"rows": len(batch), "error": type(error).__name__},
            )
            self._pending[:0] = batch
            self._one_at_a_time += len(batch)
            return
        if error is None:
            self.commits += 1
            self.recorded += len(batch)
            self.last_failure = None
            self._count(batch)
        elif not self._closed:
            AUDIT_COMMIT_FAILURES.inc()
            self.last_failure = CommitFailure(utcnow(), time.monotonic(), failure_kind(error))
            log.error("audit commit failed", exc_info=error)
        for _, done in batch:
            if not done.done():
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

    def _count(self, batch: list[tuple[AuditRecord, asyncio.Future[None]]]) -> None:
        AUDIT_COMMITS.inc()
        AUDIT_BATCH_ROWS.observe(len(batch))
        counters = self._row_counters
        for rec, _ in batch:
            key = (rec.verb, rec.status, rec.outcome, rec.reason or "")
            counter = counters.get(key)
            if counter is None:
                counter = counters[key] = AUDIT_ROWS.labels(*key)
            counter.inc()

    async def list(
        self,
        *,
        peer_id: uuid.UUID | None = None,
        grant_ids: Sequence[uuid.UUID] = (),
        since: dt.datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first, optionally for one peer and after a time. A peer's rows are those
        naming it, and those naming no peer but one of ``grant_ids`` (its grants): a
        request refused before the gateway knew its grant's peer is still the peer's."""
        columns = federation_audit_log.c
        newest = columns.created_at.desc()
        query = select(federation_audit_log).order_by(newest)
        if since is not None:
            query = query.where(columns.created_at >= since)
        if peer_id is not None and grant_ids:
            # Each part reads its own index newest first and stops at ``limit``; one
            # statement, so both parts see the same commits (a poller's --since).
            named = query.where(columns.peer_id == peer_id)
            unnamed = query.where(columns.peer_id.is_(None), columns.grant_id.in_(grant_ids))
            both = union_all(
                select(named.limit(limit).subquery()), select(unnamed.limit(limit).subquery())
            ).subquery()
            query = select(both).order_by(both.c.created_at.desc())
        elif peer_id is not None:
            query = query.where(columns.peer_id == peer_id)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query.limit(limit))).mappings().all()
        return [dict(r) for r in rows]


def _row_error(error: BaseException) -> bool:
    """Whether ``error`` may come from one row's values (a constraint, a value the column
    refuses), rather than from the database (down, locked, full)."""
    if isinstance(error, (sqlite3.IntegrityError, sqlite3.DataError)):
        return True
    if isinstance(error, (sa_exc.IntegrityError, sa_exc.DataError)):
        return True
    # SQLAlchemy's asyncpg adapter raises a bare DBAPIError for some data errors (a NUL in
    # text); Postgres's SQLSTATE says what it is: class 22 data, class 23 integrity.
    sqlstate = getattr(getattr(error, "orig", None), "sqlstate", None) or ""
    return isinstance(error, sa_exc.DBAPIError) and sqlstate[:2] in ("22", "23")


class _SqliteCommits:
    """Commits audit batches to the SQLite file with the sqlite3 driver directly (no per-row
    ORM work): inline on the loop when the write lock is free, else on one worker thread,
    which also runs the checkpoints (module docstring)."""

    def __init__(self, path: str) -> None:
        self._inline = _SqliteAppender(path, busy_timeout_s=0.0, autocheckpoint=False)
        self._worker = _SqliteAppender(path, busy_timeout_s=LOCKED_WAIT_S)
        # Test writes (AuditWriter.recheck), on the worker thread; connects at the first.
        self._prober = _SqliteAppender(path, busy_timeout_s=PROBE_LOCK_WAIT_S)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="audit-sqlite")
        self._checkpoint: asyncio.Future[None] | None = None
        self._since_checkpoint = 0
        self._closed = False
        self.on_worker = 0

    def commit_inline(self, params: list[tuple[Any, ...]]) -> bool:
        """Commit on the calling (loop) thread; False, with nothing written, when another
        connection holds the write lock."""
        if not self._inline.append(params):
            return False
        self._committed()
        return True

    async def commit_on_worker(self, params: list[tuple[Any, ...]]) -> None:
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(self._executor, self._worker.append, params):
            raise AuditUnavailable(f"audit log write lock held for over {LOCKED_WAIT_S:.0f} s")
        self.on_worker += 1
        self._committed()

    async def probe(self, params: tuple[Any, ...]) -> None:
        """A test write (_SqliteAppender.probe) on the worker thread; raises if it fails."""
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(self._executor, self._prober.probe, params):
            raise AuditUnavailable(f"audit log write lock held for over {PROBE_LOCK_WAIT_S:.0f} s")

    def _committed(self) -> None:
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY_COMMITS and (
            self._checkpoint is None or self._checkpoint.done()
        ):
            self._since_checkpoint = 0
            loop = asyncio.get_running_loop()
            self._checkpoint = loop.run_in_executor(self._executor, self._worker.checkpoint)
            self._checkpoint.add_done_callback(_checkpoint_done)

    def close(self) -> None:
        """Close both connections, after a last checkpoint; idempotent."""
        self._inline.close()
        if self._closed:
            return
        self._closed = True
        self._executor.submit(self._worker.checkpoint)
        self._executor.submit(self._worker.close)
        self._executor.submit(self._prober.close)
        self._executor.shutdown(wait=True)


def _checkpoint_done(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("audit checkpoint failed", exc_info=future.exception())


class _SqliteAppender:
    """Appends audit rows to the SQLite file through one connection, used from one thread.

    ``busy_timeout_s=0`` makes ``append`` return False at once when another connection
    holds the write lock, instead of waiting for it.
    """

    def __init__(self, path: str, *, busy_timeout_s: float, autocheckpoint: bool = True) -> None:
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        self._autocheckpoint = autocheckpoint
        self._conn: sqlite3.Connection | None = None
        self._per_statement = 1  # rows one INSERT may bind: set when the connection opens

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,  # opened on the loop, closed by close() anywhere
            )
            # The settings mosaic.db gives every SQLite connection, but this one's busy
            # timeout (set by connect's ``timeout``).
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            if not self._autocheckpoint:
                conn.execute("PRAGMA wal_autocheckpoint=0")
            self._per_statement = self._rows_per_statement(conn)
            self._conn = conn
        return self._conn

    def append(self, params: list[tuple[Any, ...]]) -> bool:
        """Insert rows (``sqlite_params``) in one transaction; False (nothing written) if
        the write lock was taken for longer than the busy timeout.

        A batch is one multi-row INSERT in autocommit mode, which SQLite runs as its own
        transaction: all rows or none, and one call into SQLite where BEGIN, a row-by-row
        executemany and COMMIT made one per row and two more. Measured alone, CPU per
        commit is the same for 1 and 5 rows (about 75 and 180-195 us) and falls for
        larger batches (16 rows: 414-440 -> 356-393 us).
        """
        conn = self._connection()
        per_statement = self._per_statement
        if len(params) <= per_statement:
            return self._run(conn, _multi_insert(len(params)), _flat(params))
        if not self._run(conn, "BEGIN IMMEDIATE", ()):
            return False
        try:
            for start in range(0, len(params), per_statement):
                chunk = params[start : start + per_statement]
                conn.execute(_multi_insert(len(chunk)), _flat(chunk))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return True

    def probe(self, params: tuple[Any, ...]) -> bool:
        """Commit a transaction that adds the row ``params`` and deletes it again; False if
        the write lock was taken for longer than the busy timeout.

        It must commit: SQLite writes a transaction's pages (to the WAL) only when it
        commits, so a full disk refuses the commit, not the insert, and a rolled-back
        insert (or ``BEGIN IMMEDIATE`` and ``ROLLBACK``, which only takes the lock) would
        report success on a disk that takes no commit. The insert and the delete touch
        the pages an audit commit touches, and leave no row.
        """
        conn = self._connection()
        if not self._run(conn, "BEGIN IMMEDIATE", ()):
            return False
        try:
            conn.execute(_multi_insert(1), params)
            conn.execute(_DELETE_BY_ID, (params[0],))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return True

    @staticmethod
    def _run(conn: sqlite3.Connection, sql: str, values: Sequence[Any]) -> bool:
        """Execute one statement; False when it could not take the write lock in time."""
        try:
            conn.execute(sql, values)
        except sqlite3.OperationalError as exc:
            # Extended codes too: SQLITE_BUSY_SNAPSHOT (another writer committed between
            # this statement's read and its write), SQLITE_BUSY_RECOVERY, ...
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                return False
            raise
        return True

    @staticmethod
    def _rows_per_statement(conn: sqlite3.Connection) -> int:
        """How many rows one INSERT may bind under SQLite's variable limit."""
        limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        return max(1, limit // len(SQLITE_COLUMNS))

    def checkpoint(self) -> None:
        """Copy the WAL into the database file without blocking writers."""
        self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
