"""grants_0002 and grants_0003 on a database that already holds peers and grants (an
upgrade in place): each active grant takes its peer's serial, the one certificate the gate
served it with before, so no enrolled peer is locked out by the upgrade; then each grant
whose serial is still its peer's latest takes that certificate too, so a repeat of a lost
answer still finds it. And grants_0004 empties the certificate grants_0003 as first
released (48c7fd7) gave grants that share a serial."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text

from grants_service.app import MIGRATIONS
from grants_service.store import metadata
from mosaic.config import to_async_postgres_url
from mosaic.db import Database
from tests.support.released_migrations import migrations_as_released

NOW = "2026-12-01 10:00:00.000000"
LATER = "2027-12-01 10:00:00.000000"


async def test_upgrading_gives_active_grants_their_peers_certificate(tmp_path: Path) -> None:
    path = tmp_path / "grants.db"
    db = Database(f"sqlite+aiosqlite:///{path}", schema="grants", migrations_dir=MIGRATIONS)
    cfg = db._alembic_config()

    def upgrade_to(conn: Connection, revision: str) -> None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(upgrade_to, "grants_0001")
    peer, active, pending, peer_b, shared_1, shared_2 = (uuid.uuid4().hex for _ in range(6))
    with sqlite3.connect(path) as raw:
        raw.execute(
            "INSERT INTO federation_peers (id, name, display_name, direction, state, "
            "cert_serial, cert_pem, cert_not_after, created_at, updated_at) VALUES "
            "(?, 'a', 'a', 'inbound', 'active', '5e71a1', 'PEM 5e71a1', ?, ?, ?)",
            (peer, LATER, NOW, NOW),
        )
        # A second peer with two active grants: grants_0002 gives both the peer's serial.
        raw.execute(
            "INSERT INTO federation_peers (id, name, display_name, direction, state, "
            "cert_serial, cert_pem, cert_not_after, created_at, updated_at) VALUES "
            "(?, 'b', 'b', 'inbound', 'active', 'b0b', 'PEM b0b', ?, ?, ?)",
            (peer_b, LATER, NOW, NOW),
        )
        for grant, status, of in (
            (active, "active", peer),
            (pending, "pending", peer),
            (shared_1, "active", peer_b),
            (shared_2, "active", peer_b),
        ):
            raw.execute(
                "INSERT INTO federation_grants (id, peer_id, subject_user_id, scope, status, "
                "sensitive, created_at) VALUES (?, ?, ?, '{}', ?, 0, ?)",
                (grant, of, uuid.uuid4().hex, status, NOW),
            )

    async with db.engine.begin() as conn:
        await conn.run_sync(upgrade_to, "grants_0002")
    with sqlite3.connect(path) as raw:
        serials = dict(raw.execute("SELECT id, cert_serial FROM federation_grants"))
        assert serials == {active: "5e71a1", pending: None, shared_1: "b0b", shared_2: "b0b"}
        # Another grant of the peer, enrolled before the peer's latest certificate.
        older = uuid.uuid4().hex
        raw.execute(
            "INSERT INTO federation_grants (id, peer_id, subject_user_id, scope, status, "
            "sensitive, created_at, cert_serial) VALUES (?, ?, ?, '{}', 'active', 0, ?, 'a1d')",
            (older, peer, uuid.uuid4().hex, NOW),
        )

    await db.migrate()
    assert (await db.revisions())[0] == "grants_0004"
    with sqlite3.connect(path) as raw:
        rows = {
            r[0]: r[1:]
            for r in raw.execute(
                "SELECT id, cert_serial, cert_pem, cert_not_after FROM federation_grants"
            )
        }
    assert rows == {
        active: ("5e71a1", "PEM 5e71a1", LATER),
        pending: (None, None, None),
        older: ("a1d", None, None),  # its certificate is not the peer's to copy
        # The peer's certificate names one of them, which one is not known: neither.
        shared_1: ("b0b", None, None),
        shared_2: ("b0b", None, None),
    }

    def drift(conn: Connection) -> list[object]:
        context = MigrationContext.configure(conn, opts={"version_table": db.version_table})
        return [d for d in compare_metadata(context, metadata) if "cert_" in str(d)]

    async with db.engine.connect() as conn:
        assert await conn.run_sync(drift) == []  # the model and the migration agree
    await db.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def grants_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'grants.db'}"
    return to_async_postgres_url(request.getfixturevalue("postgres_url"))


async def test_grants_sharing_a_serial_lose_the_certificate_48c7fd7_gave_them(
    grants_url: str, tmp_path: Path
) -> None:
    """A database migrated when grants_0003 copied the peer's certificate onto every grant
    holding the peer's serial: at head, the grants sharing it hold none (the repeat paths
    then fall back to the peer's row), a grant with a serial of its own keeps its own."""
    released = migrations_as_released(MIGRATIONS, "48c7fd7", "0003_grant_certificate.py", tmp_path)
    old = Database(grants_url, schema="grants", migrations_dir=released)
    cfg = old._alembic_config()

    def upgrade_to(conn: Connection, revision: str) -> None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    peer, peer_b, own, shared_1, shared_2 = (uuid.uuid4().hex for _ in range(5))
    async with old.engine.begin() as conn:
        if not old.is_sqlite:
            await conn.execute(text("CREATE SCHEMA grants"))
        await conn.run_sync(upgrade_to, "grants_0002")
        for peer_id, name, serial in ((peer, "a", "5e71a1"), (peer_b, "b", "b0b")):
            await conn.execute(
                text(
                    "INSERT INTO federation_peers (id, name, display_name, direction, state, "
                    "cert_serial, cert_pem, cert_not_after, created_at, updated_at) VALUES "
                    "(:id, :name, :name, 'inbound', 'active', :serial, :pem, "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"id": peer_id, "name": name, "serial": serial, "pem": f"PEM {serial}"},
            )
        # grants_0002 gives each active grant its peer's serial: peer b's two share one.
        for grant, of in ((own, peer), (shared_1, peer_b), (shared_2, peer_b)):
            await conn.execute(
                text(
                    "INSERT INTO federation_grants (id, peer_id, subject_user_id, scope, "
                    "status, sensitive, created_at, cert_serial) VALUES (:id, :peer, :user, "
                    "'{}', 'active', false, CURRENT_TIMESTAMP, :serial)"
                ),
                {
                    "id": grant,
                    "peer": of,
                    "user": uuid.uuid4().hex,
                    "serial": "5e71a1" if of == peer else "b0b",
                },
            )
        await conn.run_sync(upgrade_to, "grants_0003")
        copied = await conn.execute(
            text("SELECT count(*) FROM federation_grants WHERE cert_pem = 'PEM b0b'")
        )
        assert copied.scalar() == 2  # what 48c7fd7's backfill did
    await old.dispose()

    db = Database(grants_url, schema="grants", migrations_dir=MIGRATIONS)
    await db.migrate()
    current, head = await db.revisions()
    assert current == head
    async with db.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT id, cert_serial, cert_pem, cert_not_after IS NOT NULL "
                    "FROM federation_grants"
                )
            )
        ).all()
    await db.dispose()
    assert {uuid.UUID(str(r[0])).hex: tuple(r[1:]) for r in rows} == {
        own: ("5e71a1", "PEM 5e71a1", True),
        shared_1: ("b0b", None, False),
        shared_2: ("b0b", None, False),
    }
