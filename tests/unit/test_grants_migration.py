"""grants_0002 and grants_0003 on a database that already holds peers and grants (an
upgrade in place): each active grant takes its peer's serial, the one certificate the gate
served it with before, so no enrolled peer is locked out by the upgrade; then each grant
whose serial is still its peer's latest takes that certificate too, so a repeat of a lost
answer still finds it."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from grants_service.app import MIGRATIONS
from grants_service.store import metadata
from mosaic.db import Database

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
    assert (await db.revisions())[0] == "grants_0003"
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
