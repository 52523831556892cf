"""The audit writer: group commit and no lost rows on both engines; on SQLite, rows stored
exactly as SQLAlchemy would store them, and a loop that never waits for a lock held by
another connection."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import re
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event
from sqlalchemy.dialects import sqlite

import federation_gateway.app as gateway_app
from federation_gateway import audit
from federation_gateway.audit import SQLITE_COLUMNS, AuditRecord, AuditWriter, sqlite_params
from federation_gateway.store import federation_audit_log
from mosaic.config import to_async_postgres_url
from mosaic.db import Database
from mosaic.logs import token_hint
from mosaic.sqltypes import utcnow


async def _migrated(url: str) -> Database:
    db = Database(url, schema="gateway", migrations_dir=gateway_app.MIGRATIONS)
    await db.migrate()
    return db


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = await _migrated(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    yield db
    await db.dispose()


@pytest.fixture
async def writer(database: Database) -> AsyncIterator[AuditWriter]:
    w = AuditWriter(database)
    yield w
    await w.close()


LIST_ALLOWED = {"verb": "list", "code": "OK", "outcome": "allowed", "reason": ""}


def _metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _audit_metrics() -> tuple[float, float, float, float, float]:
    """Rows counted as committed list/OK/allowed, commits, batches observed, rows in those
    batches, failed commits: the figures an operator's dashboard reads."""
    return (
        _metric("mosaic_audit_rows_total", LIST_ALLOWED),
        _metric("mosaic_audit_commits_total"),
        _metric("mosaic_audit_batch_rows_count"),
        _metric("mosaic_audit_batch_rows_sum"),
        _metric("mosaic_audit_commit_failures_total"),
    )


def _record(n: int) -> AuditRecord:
    return AuditRecord(
        request_id=f"req-{n:08d}",
        verb="list",
        status="OK",
        outcome="allowed",
        grant_id=uuid.UUID(int=n + 1),
        resource="tasks",
        bytes_out=n,
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """The gateway's database on either engine."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    else:
        url = to_async_postgres_url(request.getfixturevalue("postgres_url"))
    db = await _migrated(url)
    yield db
    await db.dispose()


def _every_column_set() -> AuditRecord:
    return AuditRecord(
        request_id="req-every-column",
        verb="search",
        status="NOT_FOUND",
        outcome="allowed",
        peer_id=uuid.uuid4(),
        grant_id=uuid.uuid4(),
        subject_user_id=uuid.uuid4(),
        resource="notes",
        reason="RESOURCE_NOT_FOUND",
        query_hash="ab" * 32,
        bytes_out=1234,
        latency_ms=2.5,
        source_address="ipv4:127.0.0.1:40000",
        detail="x",
    )


def _rows(database: Database) -> list[tuple[str, str, int]]:
    path = database.url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT id, request_id, bytes_out FROM federation_audit_log ORDER BY id"
        ).fetchall()


async def test_concurrent_records_share_commits_and_none_is_lost(
    any_database: Database,
) -> None:
    writer = AuditWriter(any_database)
    rows_before, commits_before, batches_before, batched_before, failed_before = _audit_metrics()
    try:
        await asyncio.gather(*(writer.record(_record(n)) for n in range(200)))
        # A second wave while nothing is pending: the writer starts again by itself.
        await asyncio.gather(*(writer.record(_record(n)) for n in range(200, 300)))
        rows = await writer.list(limit=1000)
    finally:
        await writer.close()

    assert sorted(r["request_id"] for r in rows) == [f"req-{n:08d}" for n in range(300)]
    assert writer.recorded == 300
    assert writer.commits < 300  # group commit: callers shared transactions
    assert writer.commits_on_worker == 0
    assert _audit_metrics() == (
        rows_before + 300,
        commits_before + writer.commits,
        batches_before + writer.commits,
        batched_before + 300,
        failed_before,
    )


async def test_rows_read_back_as_recorded(any_database: Database) -> None:
    writer = AuditWriter(any_database)
    rec = _every_column_set()
    try:
        await writer.record(rec)
        (row,) = await writer.list()
    finally:
        await writer.close()

    assert row == rec.row()


def test_sqlite_params_store_what_sqlalchemy_would_store() -> None:
    """The hand-written row encoding matches the table's own bind processing, column by
    column, and covers every column (a new column fails here until it is added)."""
    dialect = sqlite.dialect()
    rec = _every_column_set()
    expected = []
    for name in SQLITE_COLUMNS:
        process = federation_audit_log.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        value = getattr(rec, name)
        expected.append(process(value) if process is not None else value)

    assert set(SQLITE_COLUMNS) == set(federation_audit_log.c.keys())
    assert sqlite_params(rec) == tuple(expected)
    bare = AuditRecord(request_id="req-2", verb="list", status="OK", outcome="allowed")
    assert sqlite_params(bare)[3:6] == (None, None, None)  # peer, grant, subject


async def test_close_commits_what_is_queued_then_refuses_new_records(
    database: Database,
) -> None:
    """At shutdown the server cancels the requests still running; each queues its row with
    record_soon. close() lets those rows commit before it stops the writer."""
    writer = AuditWriter(database)
    pending = asyncio.ensure_future(writer.record(_record(1)))
    await asyncio.sleep(0)  # queued; its flush has not run yet
    assert not pending.done()
    for n in (2, 3, 4):
        writer.record_soon(_record(n))
    await writer.close()

    await asyncio.wait_for(pending, 5)
    assert sorted(r[1] for r in _rows(database)) == [f"req-0000000{n}" for n in (1, 2, 3, 4)]
    with pytest.raises(RuntimeError, match="stopped"):
        await writer.record(_record(5))


async def test_close_gives_up_on_rows_that_cannot_commit_in_time(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "LOCKED_WAIT_S", 1.0)  # the worker's own wait for the lock
    path = database.url.split("///", 1)[1]
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock throughout
    writer = AuditWriter(database)
    try:
        pending = asyncio.ensure_future(writer.record(_record(1)))
        await asyncio.sleep(0.05)
        await writer.close(drain_s=0.3)
        with pytest.raises(RuntimeError, match="stopped"):
            await asyncio.wait_for(pending, 5)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_row_ids_are_time_ordered_uuid7(writer: AuditWriter, database: Database) -> None:
    for n in range(3):
        await writer.record(_record(n))
        await asyncio.sleep(0.002)  # distinct milliseconds

    rows = _rows(database)
    ids = [uuid.UUID(r[0]) for r in rows]
    assert {i.version for i in ids} == {7}
    # Ordered by id is ordered by creation.
    assert [r[1] for r in rows] == ["req-00000000", "req-00000001", "req-00000002"]


async def test_a_held_write_lock_neither_blocks_the_loop_nor_loses_the_row(
    writer: AuditWriter, database: Database
) -> None:
    path = database.url.split("///", 1)[1]
    locked = threading.Event()
    release = threading.Event()

    def hold_write_lock() -> None:  # another replica writing to the same file
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(30)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold_write_lock)
    holder.start()
    try:
        await asyncio.to_thread(locked.wait, 10)
        pending = asyncio.create_task(writer.record(_record(7)))
        ticks = 0
        for _ in range(20):  # the loop keeps running other work meanwhile
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 20
        assert not pending.done()  # and the caller still waits for its row
    finally:
        release.set()
        await asyncio.to_thread(holder.join, 10)
    await asyncio.wait_for(pending, 30)

    assert [r[1] for r in _rows(database)] == ["req-00000007"]
    assert writer.commits_on_worker == 1


@pytest.mark.parametrize(
    "code",
    [sqlite3.SQLITE_BUSY, 517, 261],  # SQLITE_BUSY, _BUSY_SNAPSHOT, _BUSY_RECOVERY
    ids=["busy", "busy-snapshot", "busy-recovery"],
)
def test_every_kind_of_busy_hands_the_batch_to_the_worker(code: int) -> None:
    """A busy inline commit must come back as "not written" (the worker thread then waits
    for the lock), never as a failed commit: that would answer INTERNAL to every request
    of the batch and leave none of them a row."""

    class BusyConnection:
        def execute(self, sql: str, values: Any) -> None:
            error = sqlite3.OperationalError("database is locked")
            error.sqlite_errorcode = code
            raise error

    assert audit._SqliteAppender._run(BusyConnection(), "INSERT ...", ()) is False  # type: ignore[arg-type]


async def test_a_failed_commit_reaches_every_waiter(
    writer: AuditWriter, database: Database
) -> None:
    path = database.url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE federation_audit_log")

    *_, failed_before = _audit_metrics()
    results = await asyncio.gather(
        *(writer.record(_record(n)) for n in range(5)), return_exceptions=True
    )

    assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
    # A database that cannot take the batch fails it once, not once per row (a row-by-row
    # retry is for a row the database refuses, below).
    *_, failed = _audit_metrics()
    assert failed == failed_before + 1


async def test_one_bad_row_fails_only_its_own_request(any_database: Database) -> None:
    """A batch is one transaction, so a row the database refuses (here a duplicate id) fails
    the commit of every row in it. Its rows are then committed one by one: the others'
    requests are answered, only the bad row's caller learns its commit failed."""
    writer = AuditWriter(any_database)
    records = [_record(n) for n in range(4)]
    records[3].id = records[1].id
    try:
        rows_before, commits_before, *_, failed_before = _audit_metrics()
        results = await asyncio.gather(*(writer.record(r) for r in records), return_exceptions=True)
        assert results[:3] == [None, None, None]
        assert isinstance(results[3], Exception), results
        await writer.record(_record(9))
        stored = sorted(r["request_id"] for r in await writer.list(limit=10))
    finally:
        await writer.close()
    assert stored == ["req-00000000", "req-00000001", "req-00000002", "req-00000009"]
    rows, commits, *_, failed = _audit_metrics()
    assert (rows, commits, failed) == (rows_before + 4, commits_before + 4, failed_before + 1)


async def test_a_batch_larger_than_one_statement_binds_is_still_one_transaction(
    writer: AuditWriter, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite limits the values one statement binds; a larger batch spans statements in
    one explicit transaction, still all or nothing."""
    monkeypatch.setattr(audit._SqliteAppender, "_rows_per_statement", lambda self, conn: 3)

    await asyncio.gather(*(writer.record(_record(n)) for n in range(8)))
    assert len(_rows(database)) == 8
    assert writer.commits == 1

    appender = audit._SqliteAppender(database.url.split("///", 1)[1], busy_timeout_s=1.0)
    try:
        failing = [_record(n) for n in range(10, 18)]
        for rec in failing:
            rec.created_at = utcnow()
        failing[7].id = failing[0].id  # the duplicate is in the batch's third statement
        with pytest.raises(sqlite3.IntegrityError):
            appender.append([sqlite_params(r) for r in failing])
    finally:
        appender.close()
    assert len(_rows(database)) == 8  # the batch's first two statements were rolled back


async def test_inline_commits_are_checkpointed_off_the_loop(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(database.url.split("///", 1)[1])
    monkeypatch.setattr(audit, "CHECKPOINT_EVERY_COMMITS", 5)
    writer = AuditWriter(database)
    before = path.stat().st_size
    try:
        for n in range(60):  # one commit each
            await writer.record(_record(n))
        # The rows get copied from the WAL into the database file while the writer runs
        # (the inline connection never checkpoints by itself; close() is not needed).
        for _ in range(500):
            if path.stat().st_size > before:
                break
            await asyncio.sleep(0.02)
        assert path.stat().st_size > before
    finally:
        await writer.close()
    assert len(_rows(database)) == 60


async def test_without_periodic_checkpoints_the_file_would_not_grow(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control for the test above: with checkpoints pushed out of reach, the rows stay
    in the WAL, so that test's growth comes from the writer's own checkpoints."""
    path = Path(database.url.split("///", 1)[1])
    monkeypatch.setattr(audit, "CHECKPOINT_EVERY_COMMITS", 10_000)
    writer = AuditWriter(database)
    before = path.stat().st_size
    try:
        for n in range(60):
            await writer.record(_record(n))
        await asyncio.sleep(0.2)
        assert path.stat().st_size == before
    finally:
        await writer.close()


BASE = dt.datetime(2026, 11, 23, 19, 0, 0, 100_000, tzinfo=dt.UTC)
PEERS = (uuid.UUID(int=0xA), uuid.UUID(int=0xB))


def _at(k: int) -> dt.datetime:
    return BASE + dt.timedelta(microseconds=300 * k)  # 3-4 rows per millisecond


def _timed_record(k: int) -> AuditRecord:
    return dataclasses.replace(_record(k), peer_id=PEERS[k % 2], created_at=_at(k))


async def test_list_is_newest_first_per_peer_and_since_exactly(any_database: Database) -> None:
    writer = AuditWriter(any_database)
    order = list(range(40))
    random.Random(6).shuffle(order)  # committed out of time order
    try:
        for k in order:
            await writer.record(_timed_record(k))
        everything = await writer.list(limit=100)
        newest = await writer.list(limit=5)
        of_b = await writer.list(peer_id=PEERS[1], limit=100)
        since = await writer.list(since=_at(25), limit=100)
        since_a = await writer.list(peer_id=PEERS[0], since=_at(25), limit=100)
        later = await writer.list(since=_at(40), limit=100)
    finally:
        await writer.close()

    def ids(rows: list[dict[str, Any]]) -> list[int]:
        return [int(r["request_id"][4:]) for r in rows]

    assert ids(everything) == list(range(39, -1, -1))
    assert ids(newest) == [39, 38, 37, 36, 35]
    assert ids(of_b) == list(range(39, 0, -2))
    # _at(25) is inside a millisecond that also holds rows 23 and 24: exact, not rounded.
    assert _at(24).microsecond // 1000 == _at(25).microsecond // 1000
    assert ids(since) == list(range(39, 24, -1))
    assert ids(since_a) == [38, 36, 34, 32, 30, 28, 26]
    assert later == []


async def test_a_peers_list_includes_rows_of_its_grants_that_name_no_peer(
    any_database: Database,
) -> None:
    """A request refused before the gateway knew its grant's peer (grants-service or
    ca-service down) names no peer: listed for the peer that holds the grant, not for
    another, and in time order with the peer's other rows, under since and limit."""
    writer = AuditWriter(any_database)
    mine, other = uuid.UUID(int=0x61), uuid.UUID(int=0x62)

    def row(k: int, peer: uuid.UUID | None, grant: uuid.UUID) -> AuditRecord:
        return dataclasses.replace(_record(k), peer_id=peer, grant_id=grant, created_at=_at(k))

    try:
        for k in range(12):
            if k % 3 == 0:
                await writer.record(row(k, None, mine))  # refused before the peer was known
            elif k % 3 == 1:
                await writer.record(row(k, PEERS[0], mine))
            else:
                await writer.record(row(k, None, other))  # another peer's grant
        listed = await writer.list(peer_id=PEERS[0], grant_ids=[mine], limit=100)
        newest = await writer.list(peer_id=PEERS[0], grant_ids=[mine], limit=3)
        since = await writer.list(peer_id=PEERS[0], grant_ids=[mine], since=_at(6), limit=100)
        named_only = await writer.list(peer_id=PEERS[0], limit=100)
    finally:
        await writer.close()

    def ids(rows: list[dict[str, Any]]) -> list[int]:
        return [int(r["request_id"][4:]) for r in rows]

    assert ids(listed) == [10, 9, 7, 6, 4, 3, 1, 0]
    assert ids(newest) == [10, 9, 7]
    assert ids(since) == [10, 9, 7, 6]
    assert ids(named_only) == [10, 7, 4, 1]
    assert {r["peer_id"] for r in listed} == {PEERS[0], None}


async def test_list_reads_through_an_index_without_sorting(
    writer: AuditWriter, database: Database
) -> None:
    """On a large log, "newest first" must stop after ``limit`` rows, not sort the table:
    the descending created_at indexes (global and per peer) serve every list query."""
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
        if sql.lstrip().upper().startswith("SELECT"):
            statements.append((sql, params))

    event.listen(database.engine.sync_engine, "before_cursor_execute", capture)
    await writer.list(limit=10)
    await writer.list(peer_id=PEERS[0], limit=10)
    await writer.list(since=BASE, limit=10)
    await writer.list(peer_id=PEERS[1], since=BASE, limit=10)
    # A peer's rows with those of its grants that name no peer: two index reads, each
    # stopping at ``limit``; only those limit-long parts are sorted, to be merged.
    await writer.list(peer_id=PEERS[0], grant_ids=[uuid.UUID(int=1), uuid.UUID(int=3)], limit=10)
    event.remove(database.engine.sync_engine, "before_cursor_execute", capture)

    assert len(statements) == 5
    path = database.url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        for n, (sql, params) in enumerate(statements):
            steps = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
            plan = " | ".join(steps)
            reads = [step for step in steps if "federation_audit_log" in step]
            assert reads and all("USING INDEX" in step for step in reads), plan
            assert n == 4 or "TEMP B-TREE" not in plan, plan
            assert "ix_audit_" in plan, plan


async def test_the_audit_log_has_the_design_indexes(database: Database) -> None:
    """DESIGN.md: descending created_at indexes, global, per peer and per grant."""
    path = database.url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        found = {
            name: [(row[2], row[3]) for row in conn.execute(f"PRAGMA index_xinfo({name})")]
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index'"
                " AND tbl_name = 'federation_audit_log' AND name LIKE 'ix_%'"
            )
        }
    keys = {
        name: [(col, desc) for col, desc in cols if col is not None] for name, cols in found.items()
    }
    assert keys == {
        "ix_audit_created_at": [("created_at", 1)],
        "ix_audit_peer_created_at": [("peer_id", 0), ("created_at", 1)],
        "ix_audit_grant_created_at": [("grant_id", 0), ("created_at", 1)],
    }


async def test_a_nul_from_a_caller_does_not_fail_the_commit(any_database: Database) -> None:
    """Postgres refuses NUL in text. An enrolling peer's token reaches the audit row only
    as its hint, and a token that is not one (a NUL, escapes) is not quoted at all; the
    row's detail is also cleaned, so no caller can make a commit (shared with other
    peers' requests) fail."""
    writer = AuditWriter(any_database)
    try:
        hostile = "\x00\x1b[2J<b>"
        assert token_hint(hostile) == "(malformed)"
        assert token_hint("Ab3_-xYz9QQQQ") == "Ab3_-xYz…"
        records = [_record(n) for n in range(3)]
        records[1].detail = f"token {hostile}"
        await asyncio.gather(*(writer.record(r) for r in records))
        rows = await writer.list(limit=10)
    finally:
        await writer.close()
    details = {r["request_id"]: r["detail"] for r in rows}
    assert details["req-00000001"] == "token \ufffd\x1b[2J<b>"
    assert len(details) == 3


async def test_a_recent_commit_failure_fails_the_doctor_and_health_until_a_commit_succeeds(
    writer: AuditWriter,
) -> None:
    """The database answers `SELECT 1` but cannot take rows (its disk full): every request
    is refused, so the doctor's audit_log row and readiness must say so, with a generic
    kind and nothing of the SQL; the next commit that succeeds clears it. (The page limit
    is the inline connection's alone, so the test write sees no failure: no recheck here.)"""
    await writer.record(_record(0))
    assert await writer.problem() is None and (await writer.check()).ok
    writer._probe_started = float("inf")  # no test write while this test looks
    assert writer._sqlite is not None
    inline = writer._sqlite._inline._connection()
    pages = inline.execute("PRAGMA page_count").fetchone()[0]
    inline.execute(f"PRAGMA max_page_count = {pages}")  # no room for one more page
    with pytest.raises(sqlite3.OperationalError):
        await writer.record(dataclasses.replace(_record(1), detail="x" * 20_000))

    assert await writer.problem() == "audit_log: commits failing, disk full (OperationalError)"
    row = await writer.check()
    assert (row.name, row.ok) == ("audit_log", False)
    assert "disk full" in row.detail and "INSERT" not in row.detail
    assert "disk space" in row.remediation

    inline.execute("PRAGMA max_page_count = 1073741823")
    await writer.record(_record(2))
    assert writer.last_failure is None and await writer.problem() is None
    assert (await writer.check()).ok


async def test_a_commit_failure_clears_without_a_request_once_writes_commit_again(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica out of a load balancer's rotation (health NOT_SERVING) gets no request
    whose commit would clear a failure, so the doctor and readiness look again by
    themselves. A real failure: another connection (another replica on the same file, a
    migration) holds SQLite's write lock for longer than the writer waits. While it does,
    the failure stands and the doctor says a test write just failed too; once it lets go,
    the failure clears within a look or two, with no request, and the test writes left no
    row."""
    monkeypatch.setattr(audit, "LOCKED_WAIT_S", 0.2)
    monkeypatch.setattr(audit, "PROBE_LOCK_WAIT_S", 0.1)
    writer = AuditWriter(database)
    holder = sqlite3.connect(database.engine.url.database or "", isolation_level=None)
    try:
        await writer.record(_record(0))
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(audit.AuditUnavailable):
            await writer.record(_record(1))
        for _ in range(3):  # each look past PROBE_EVERY_S tries a write, which fails
            row = await writer.check()
            assert not row.ok, row.detail
            await asyncio.sleep(audit.PROBE_EVERY_S)
        assert "database locked" in row.detail and "still failing" in row.detail, row.detail
        assert re.search(r"a test write \d+ s ago failed too", row.detail), row.detail

        holder.execute("ROLLBACK")
        deadline = asyncio.get_running_loop().time() + 5 * audit.PROBE_EVERY_S
        while not (row := await writer.check()).ok:
            assert asyncio.get_running_loop().time() < deadline, row.detail
            await asyncio.sleep(0.1)
        assert row.detail == "commits succeed"
        assert await writer.problem() is None and writer.last_failure is None
        rows = await writer.list(limit=10)
        assert [r["request_id"] for r in rows] == ["req-00000000"]
    finally:
        holder.close()
        await writer.close()


async def test_a_test_write_leaves_no_row_and_fails_while_the_database_takes_none(
    any_database: Database,
) -> None:
    """The test write itself, on both engines: it succeeds on a database that takes rows and
    leaves none, and it fails (the failure stands) while the table cannot be written."""
    writer = AuditWriter(any_database)
    try:
        await writer.record(_record(0))
        writer.last_failure = failed = audit.CommitFailure(utcnow(), 0.0, "test")
        async with any_database.engine.begin() as conn:
            await conn.exec_driver_sql(
                "ALTER TABLE federation_audit_log RENAME TO federation_audit_log_away"
            )
        await writer.recheck()
        assert writer.last_failure is failed and writer.last_probe_failure is not None
        async with any_database.engine.begin() as conn:
            await conn.exec_driver_sql(
                "ALTER TABLE federation_audit_log_away RENAME TO federation_audit_log"
            )
        writer._probe_started = -audit.PROBE_EVERY_S
        await writer.recheck()
        assert writer.last_failure is None
        rows = await writer.list(limit=10)
        assert [r["request_id"] for r in rows] == ["req-00000000"]
    finally:
        await writer.close()


def test_failure_kinds_name_no_sql() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    assert audit.failure_kind(full) == "disk full (OperationalError)"
    assert audit.failure_kind(TimeoutError("lock")) == "database locked (TimeoutError)"
    assert audit.failure_kind(ConnectionRefusedError()) == (
        "database unreachable (ConnectionRefusedError)"
    )
    assert audit.failure_kind(ValueError("INSERT INTO secret")) == "ValueError"
