"""Storage: one async engine per service, on its own SQLite file or Postgres schema.

Migrations (Alembic) run at start-up, all pending ones of a service in one transaction on
either engine: a migration that fails leaves the database as it was.

A database that is down, unreachable, full or locked is an expected failure of a
dependency, not a bug: :func:`database_unavailable` tells it from a programming error
(bad SQL, a constraint), and the server interceptor answers it UNAVAILABLE
``DATABASE_UNAVAILABLE`` with a retry delay instead of INTERNAL.

On Postgres every service works inside its own schema: the connection's
``search_path`` is that schema, so table definitions carry no schema name and the
same models and migrations run unchanged on SQLite.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, event, pool, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from mosaic.errors import ServiceError, unavailable

T = TypeVar("T")

log = logging.getLogger("mosaic.db")

# Threads (each with its own reader connection) for SQLite reads too slow for the loop.
SQLITE_READ_WORKERS = 2

DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
DATABASE_RETRY_AFTER_S = 2.0
# SQLite primary result codes (the low byte of the extended code) of a database that
# cannot be used right now, not of a statement that is wrong: busy or locked (the busy
# timeout ran out: another writer holds the lock), out of memory, read-only, I/O error,
# disk full, file cannot be opened, lock protocol. Syntax errors and missing tables are
# OperationalError too (SQLITE_ERROR), hence the codes rather than the class.
_SQLITE_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
# Postgres SQLSTATEs of the same: classes 08 (connection exception), 53 (insufficient
# resources: disk full, out of memory, too many connections), 58 (system error: I/O), the
# server shutting down, crashed, or starting up (57P01-57P03), a read-only transaction
# (25006: the server is a standby, as after a failover), and the transient failures a
# retry gets past (40001 serialization failure, 40P01 deadlock).
_POSTGRES_UNAVAILABLE_CLASSES = ("08", "53", "58")
_POSTGRES_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03", "25006", "40001", "40P01"})


class DatabaseUnreachable(ConnectionError):
    """A new connection to the database could not be made (refused, reset, no such host,
    timed out). asyncpg raises the bare OSError or TimeoutError, which alone would not say
    it was the database that failed: :func:`_connect` names it."""


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is down, unreachable, full or locked (retry later)
    rather than that a statement is wrong (IntegrityError, ProgrammingError, bad SQL)."""
    if isinstance(exc, (DatabaseUnreachable, sa_exc.TimeoutError, sa_exc.DisconnectionError)):
        return True  # TimeoutError: no pooled connection came free in time
    orig: object = exc
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:  # SQLAlchemy saw the connection drop
            return True
        orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _SQLITE_UNAVAILABLE
    sqlstate = getattr(orig, "sqlstate", None)  # asyncpg's and SQLAlchemy's adapter's
    if isinstance(sqlstate, str) and sqlstate:
        return (
            sqlstate[:2] in _POSTGRES_UNAVAILABLE_CLASSES
            or sqlstate in _POSTGRES_UNAVAILABLE_STATES
        )
    return False


# What to call a database failure where an operator reads it (the doctor): no SQL, no
# values, no driver message.
_SQLITE_KINDS = {
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_IOERR: "disk I/O error",
    sqlite3.SQLITE_READONLY: "database read-only",
    sqlite3.SQLITE_CANTOPEN: "database file cannot be opened",
    sqlite3.SQLITE_CORRUPT: "database file corrupt",
    sqlite3.SQLITE_NOTADB: "database file corrupt",
    sqlite3.SQLITE_BUSY: "database locked",
}
_SQLSTATE_KINDS = {
    "53100": "disk full",
    "53": "database out of resources",
    "08": "connection lost",
    "57P01": "database shutting down",
    "57P02": "database crashed",
    "57P03": "database starting up",
}


def database_failure_kind(error: BaseException) -> str:
    """A generic name for a failed database call, safe to show anywhere, with the error's
    type (the driver's, under SQLAlchemy's wrapper)."""
    driver_error = getattr(error, "orig", None) or error
    kind = ""
    code = getattr(driver_error, "sqlite_errorcode", None)
    sqlstate = getattr(driver_error, "sqlstate", None)
    if isinstance(code, int):
        kind = _SQLITE_KINDS.get(code & 0xFF, "")
    elif isinstance(sqlstate, str):
        kind = _SQLSTATE_KINDS.get(sqlstate) or _SQLSTATE_KINDS.get(sqlstate[:2], "")
    elif isinstance(error, (OSError, sa_exc.InterfaceError, sa_exc.OperationalError)):
        kind = "database unreachable"
    name = type(driver_error).__name__
    return f"{kind} ({name})" if kind else name


def database_unavailable_error(exc: BaseException) -> ServiceError | None:
    """What a caller learns when ``exc`` is the database being unavailable (None
    otherwise): nothing of the statement, the URL or the driver's message."""
    if not database_unavailable(exc):
        return None
    return unavailable(
        DATABASE_UNAVAILABLE,
        "the service's database is unavailable",
        remediation="retry shortly; operators: check the database (the service log has "
        "the error under this request id)",
        retry_after_s=DATABASE_RETRY_AFTER_S,
    )


class Database:
    """An async engine bound to one service's schema, plus its migrations."""

    def __init__(self, url: str, *, schema: str, migrations_dir: Path) -> None:
        self.url = url
        self.schema = schema
        self.migrations_dir = migrations_dir
        self.version_table = f"alembic_version_{schema}"
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(
                url, connect_args={"timeout": 30}, poolclass=pool.AsyncAdaptedQueuePool
            )
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(
                url,
                pool_size=10,
                max_overflow=10,
                pool_pre_ping=True,
                connect_args={"server_settings": {"search_path": schema}},
            )
            event.listen(self.engine.sync_engine, "do_connect", _connect)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._sqlite_reader: sqlite3.Connection | None = None
        self._sqlite_workers: ThreadPoolExecutor | None = None
        self._worker_local = threading.local()
        self._worker_readers: list[sqlite3.Connection] = []

    def session(self) -> AsyncSession:
        return self.sessions()

    def sqlite_reader(self) -> sqlite3.Connection:
        """A sqlite3 connection to the same file, for short indexed reads on the loop.

        A read of a few rows through an index takes microseconds; handing it to
        aiosqlite's worker thread and back costs more than the read itself, and so does
        SQLAlchemy's per-execution work (make bench), so hot read paths on SQLite run their
        precompiled SQL on this connection inline. It refuses writes (``query_only``);
        writes keep going through the async engine.
        """
        if not self.is_sqlite:
            raise RuntimeError("sqlite_reader() is for SQLite databases only")
        if self._sqlite_reader is None:
            self._sqlite_reader = self._open_sqlite_reader()
        return self._sqlite_reader

    async def sqlite_read_in_worker(
        self, sql: str, params: dict[str, Any], *, take: Callable[[sqlite3.Cursor], T]
    ) -> T:
        """Run a read that may take long (a full-text search over many rows) on a worker
        thread with a reader connection of its own, so the loop keeps serving meanwhile;
        ``take`` reads the rows it needs from the cursor, there too."""
        if not self.is_sqlite:
            raise RuntimeError("sqlite_read_in_worker() is for SQLite databases only")
        if self._sqlite_workers is None:
            self._sqlite_workers = ThreadPoolExecutor(
                max_workers=SQLITE_READ_WORKERS, thread_name_prefix="sqlite-read"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._sqlite_workers, self._worker_read, sql, params, take
        )

    def _worker_read(
        self, sql: str, params: dict[str, Any], take: Callable[[sqlite3.Cursor], T]
    ) -> T:
        conn: sqlite3.Connection | None = getattr(self._worker_local, "conn", None)
        if conn is None:
            conn = self._worker_local.conn = self._open_sqlite_reader()
            self._worker_readers.append(conn)
        cursor = conn.execute(sql, params)
        try:
            return take(cursor)
        finally:
            cursor.close()

    def _open_sqlite_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.url.split("///", 1)[1],
            timeout=30,
            isolation_level=None,  # autocommit: a read never holds a transaction open
            check_same_thread=False,  # used on one thread, closed by dispose() on another
        )
        _sqlite_pragmas(conn, None)
        conn.execute("PRAGMA query_only=ON")
        return conn

    def _alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(self.migrations_dir))
        cfg.attributes["version_table"] = self.version_table
        return cfg

    async def migrate(self) -> None:
        """Create the schema (Postgres) and upgrade to head in one transaction; replicas
        serialize on a lock (an advisory lock on Postgres, a file lock beside the SQLite
        file). A failure rolls every pending migration back and raises MigrationError,
        the cause's traceback going to the log."""
        try:
            if not self.is_sqlite:
                await self._migrate()
                return
            lock_path = Path(self.url.split("///", 1)[1] + ".migrate-lock")
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
                await self._migrate()
            finally:
                os.close(fd)  # closing releases the lock
        except Exception as exc:
            raise await self._migration_failed(exc) from exc

    async def _migrate(self) -> None:
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                # SQLAlchemy's recipe for pysqlite/aiosqlite, on this connection only: the
                # driver opens no transaction of its own (AUTOCOMMIT sets its
                # isolation_level to None until the connection goes back to the pool) and
                # the transaction starts at our BEGIN. The driver's own handling opens one
                # before INSERT, UPDATE or DELETE only, so each ALTER or CREATE of a
                # migration committed by itself and a failure left half a migration applied
                # (the version unchanged: every later start failed on what was there).
                # IMMEDIATE takes the write lock at once; replicas already wait on the file
                # lock, readers never wait (WAL). Foreign keys stay enforced as they were:
                # the pragma cannot change inside a transaction, and no migration recreates
                # a table that others reference (docs/CONTRIBUTING.md, "Migrations").
                await conn.execution_options(isolation_level="AUTOCOMMIT")
            async with conn.begin():
                if self.is_sqlite:
                    await conn.exec_driver_sql("BEGIN IMMEDIATE")
                else:
                    lock = zlib.crc32(f"mosaic-migrate-{self.schema}".encode())
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock})
                    await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                cfg = self._alembic_config()
                await conn.run_sync(_upgrade, cfg)

    async def _migration_failed(self, exc: Exception) -> MigrationError:
        head = ScriptDirectory.from_config(self._alembic_config()).get_current_head()
        try:
            current, _ = await self.revisions()
        except Exception:  # the database does not answer either: say what is known
            current = "unknown"
        log.error(
            "migration failed",
            exc_info=exc,
            extra={"schema": self.schema, "revision": current, "target": head},
        )
        return MigrationError(
            f"could not migrate its database from {current or 'empty'} to {head}: "
            f"{_first_line(exc)}",
            remediation="nothing was changed (the migration runs in one transaction): fix "
            "the cause (the log has the details) or restore the backup "
            "(docs/RUNBOOK.md), then start the service again",
        )

    async def revisions(self) -> tuple[str | None, str | None]:
        """(current revision in the database, head revision of the migration scripts)."""
        head = ScriptDirectory.from_config(self._alembic_config()).get_current_head()
        async with self.engine.connect() as conn:
            current = await conn.run_sync(
                lambda c: MigrationContext.configure(
                    c, opts={"version_table": self.version_table}
                ).get_current_revision()
            )
        return current, head

    async def ping_ms(self) -> float:
        started = time.perf_counter()
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return (time.perf_counter() - started) * 1000

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._sqlite_workers is not None:
            await asyncio.to_thread(self._sqlite_workers.shutdown)
            self._sqlite_workers = None
        for conn in self._worker_readers:
            conn.close()
        self._worker_readers.clear()
        if self._sqlite_reader is not None:
            self._sqlite_reader.close()
            self._sqlite_reader = None


def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
    """Connect as SQLAlchemy would, naming a failure to reach the server (see
    DatabaseUnreachable); the server's own refusals (SQLSTATE) pass unchanged."""
    try:
        return dialect.connect(*cargs, **cparams)
    except (OSError, TimeoutError) as exc:
        raise DatabaseUnreachable(f"cannot connect to the database: {type(exc).__name__}") from exc


class MigrationError(Exception):
    """A service's database could not be brought to its migrations' head; nothing changed."""

    def __init__(self, message: str, *, remediation: str) -> None:
        super().__init__(message)
        self.message = message
        self.remediation = remediation


def _first_line(exc: Exception) -> str:
    """The cause in a line: the driver's message without SQLAlchemy's SQL and parameters."""
    orig = getattr(exc, "orig", None)
    lines = str(orig if orig is not None else exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _upgrade(conn: Connection, cfg: Config) -> None:
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def run_migrations(
    target_metadata: MetaData, include_object: Callable[..., bool] | None = None
) -> None:
    """Body of every service's ``migrations/env.py``.

    At run time the connection comes from :meth:`Database.migrate`; for
    ``alembic revision --autogenerate`` during development, pass ``-x url=...``.
    """
    config = context.config
    connection: Connection | None = config.attributes.get("connection")
    version_table = config.attributes.get("version_table") or config.get_main_option(
        "version_table", "alembic_version"
    )
    if connection is None:
        from sqlalchemy import create_engine

        url = context.get_x_argument(as_dictionary=True)["url"]
        with create_engine(url).connect() as conn:
            _configure_and_run(conn, target_metadata, version_table, include_object)
            conn.commit()
        return
    _configure_and_run(connection, target_metadata, version_table, include_object)


def _configure_and_run(
    conn: Connection,
    target_metadata: MetaData,
    version_table: str | None,
    include_object: Callable[..., bool] | None,
) -> None:
    context.configure(
        connection=conn,
        target_metadata=target_metadata,
        version_table=version_table or "alembic_version",
        render_as_batch=conn.dialect.name == "sqlite",
        include_object=include_object,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
