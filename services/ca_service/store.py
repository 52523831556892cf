"""ca-service tables: the record of every certificate it issued, and revocations."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Column,
    Index,
    MetaData,
    RowMapping,
    String,
    Table,
    Text,
    Uuid,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mosaic.sqltypes import UtcDateTime

metadata = MetaData()

issued_certificates = Table(
    "issued_certificates",
    metadata,
    Column("serial", String(64), primary_key=True),
    Column("grant_id", Uuid, nullable=False),
    Column("subject_user_id", Uuid, nullable=False),
    Column("peer_id", Uuid, nullable=False),
    Column("backend", String(16), nullable=False),
    Column("fingerprint_sha256", String(64), nullable=False),
    Column("not_before", UtcDateTime, nullable=False),
    Column("not_after", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),
    Column("revoke_reason", Text, nullable=True),
    Index("ix_issued_certificates_grant_id", "grant_id"),
    Index("ix_issued_certificates_revoked_at", "revoked_at"),
)


@dataclass(frozen=True)
class IssuedRecord:
    """One row of issued_certificates; identifiers as lowercase strings, times in UTC."""

    serial: str
    grant_id: str
    subject_user_id: str
    peer_id: str
    backend: str
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    created_at: datetime
    revoked_at: datetime | None = None
    revoke_reason: str | None = None


def _record(row: RowMapping) -> IssuedRecord:
    return IssuedRecord(
        serial=row["serial"],
        grant_id=str(row["grant_id"]),
        subject_user_id=str(row["subject_user_id"]),
        peer_id=str(row["peer_id"]),
        backend=row["backend"],
        fingerprint_sha256=row["fingerprint_sha256"],
        not_before=row["not_before"],
        not_after=row["not_after"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        revoke_reason=row["revoke_reason"],
    )


_sqlite_write_locks: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


@contextlib.asynccontextmanager
async def _write(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A write transaction. On SQLite, writers of this process queue here instead of in
    SQLite's busy handler, which sleeps up to 100 ms between retries (seconds-long tails
    under concurrent issuance); Postgres needs no such queue."""
    if engine.dialect.name != "sqlite":
        async with engine.begin() as conn:
            yield conn
        return
    lock = _sqlite_write_locks.setdefault(engine, asyncio.Lock())
    async with lock, engine.begin() as conn:
        yield conn


async def record_issued(engine: AsyncEngine, record: IssuedRecord) -> None:
    """Insert the record of a certificate about to be handed out."""
    async with _write(engine) as conn:
        await conn.execute(
            insert(issued_certificates).values(
                serial=record.serial,
                grant_id=uuid.UUID(record.grant_id),
                subject_user_id=uuid.UUID(record.subject_user_id),
                peer_id=uuid.UUID(record.peer_id),
                backend=record.backend,
                fingerprint_sha256=record.fingerprint_sha256,
                not_before=record.not_before,
                not_after=record.not_after,
                created_at=record.created_at,
            )
        )


async def get_certificate(engine: AsyncEngine, serial: str) -> IssuedRecord | None:
    async with engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    select(issued_certificates).where(issued_certificates.c.serial == serial)
                )
            )
            .mappings()
            .first()
        )
    return _record(row) if row is not None else None


async def revoke(
    engine: AsyncEngine,
    *,
    serial: str | None = None,
    grant_id: str | None = None,
    reason: str,
    now: datetime,
) -> tuple[list[IssuedRecord], set[str]]:
    """Revoke one certificate (by serial) or every certificate of a grant.

    Returns every matching record after the change, and the serials this call revoked.
    A certificate already revoked keeps its first revocation time and reason, so
    revoking again is harmless (``UPDATE … WHERE revoked_at IS NULL``: one winner).
    """
    if (serial is None) == (grant_id is None):
        raise ValueError("pass exactly one of serial and grant_id")
    table = issued_certificates
    match = (
        table.c.serial == serial
        if serial is not None
        else table.c.grant_id == uuid.UUID(str(grant_id))
    )
    async with _write(engine) as conn:
        newly = (
            (
                await conn.execute(
                    update(table)
                    .where(match, table.c.revoked_at.is_(None))
                    .values(revoked_at=now, revoke_reason=reason)
                    .returning(table.c.serial)
                )
            )
            .scalars()
            .all()
        )
        rows = (
            (await conn.execute(select(table).where(match).order_by(table.c.created_at)))
            .mappings()
            .all()
        )
    return [_record(r) for r in rows], set(newly)


async def list_revoked(
    engine: AsyncEngine,
    *,
    revoked_since: datetime | None = None,
    unexpired_at: datetime | None = None,
) -> list[IssuedRecord]:
    """Revoked certificates, oldest revocation first: all of them, or those revoked at or
    after ``revoked_since``, or those still valid at ``unexpired_at``."""
    table = issued_certificates
    query = select(table).where(table.c.revoked_at.is_not(None))
    if revoked_since is not None:
        query = query.where(table.c.revoked_at >= revoked_since)
    if unexpired_at is not None:
        query = query.where(table.c.not_after > unexpired_at)
    async with engine.connect() as conn:
        rows = (await conn.execute(query.order_by(table.c.revoked_at))).mappings().all()
    return [_record(r) for r in rows]


async def revoked_page(
    engine: AsyncEngine, *, unexpired_at: datetime, after_serial: str, limit: int
) -> list[IssuedRecord]:
    """Up to ``limit`` revoked certificates still valid at ``unexpired_at``, in serial order,
    after ``after_serial``."""
    table = issued_certificates
    query = (
        select(table)
        .where(
            table.c.revoked_at.is_not(None),
            table.c.not_after > unexpired_at,
            table.c.serial > after_serial,
        )
        .order_by(table.c.serial)
        .limit(limit)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [_record(r) for r in rows]
