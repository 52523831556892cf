"""Migrating a service's database: several replicas starting at once on the same SQLite
file, and a migration that fails midway."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection

import grants_service.app as grants_app
from mosaic.db import Database, MigrationError

MIGRATE = """
import asyncio, sys, time
from mosaic.db import Database
import federation_gateway.app as app

async def main():
    db = Database(sys.argv[1], schema="gateway", migrations_dir=app.MIGRATIONS)
    # Every process has imported everything; now start together.
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
    await db.migrate()
    current, head = await db.revisions()
    await db.dispose()
    assert current == head, (current, head)

asyncio.run(main())
"""


def test_concurrent_migrations_on_one_sqlite_file_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    start_at = str(time.time() + 4.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE, url, start_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(6)
    ]
    results = [(p.wait(60), p.stderr.read().decode() if p.stderr else "") for p in procs]
    for code, err in results:
        assert code == 0, err[-2000:]


FAIL_MIDWAY = (
    "CREATE TRIGGER fail_midway BEFORE UPDATE OF cert_pem ON federation_grants "
    "BEGIN SELECT RAISE(ABORT, 'simulated failure midway'); END"
)


def _grants_columns(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {
            row[0]
            for row in conn.execute("SELECT name FROM pragma_table_info(?)", ("federation_grants",))
        }


async def test_a_failed_sqlite_migration_changes_nothing_and_the_next_start_finishes_it(
    tmp_path: Path,
) -> None:
    """grants_0003 adds two columns, then fills them: a failure while filling them used to
    leave the columns added (each ALTER committed on its own) and the version unchanged,
    so every later start failed with "duplicate column name"."""
    path = tmp_path / "grants.db"
    db = Database(
        f"sqlite+aiosqlite:///{path}", schema="grants", migrations_dir=grants_app.MIGRATIONS
    )
    cfg = db._alembic_config()

    def upgrade_to_0002(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "grants_0002")

    async with db.engine.begin() as conn:
        await conn.run_sync(upgrade_to_0002)
    with sqlite3.connect(path) as raw:
        raw.execute(
            "INSERT INTO federation_peers (id, name, display_name, direction, state, "
            "created_at, updated_at) VALUES ('p1', 'a', 'a', 'inbound', 'active', "
            "'2026-12-01 10:00:00', '2026-12-01 10:00:00')"
        )
        raw.execute(
            "INSERT INTO federation_grants (id, peer_id, subject_user_id, scope, status, "
            "sensitive, created_at, cert_serial) VALUES ('g1', 'p1', 'u1', '{}', 'active', 0, "
            "'2026-12-01 10:00:00', '5e71a1')"
        )
        raw.execute(FAIL_MIDWAY)
    before = _grants_columns(path)
    _, head = await db.revisions()

    with pytest.raises(MigrationError) as failed:
        await db.migrate()
    assert "grants_0002" in failed.value.message and str(head) in failed.value.message
    assert "simulated failure midway" in failed.value.message
    assert "nothing was changed" in failed.value.remediation
    assert _grants_columns(path) == before  # no cert_pem: the whole migration rolled back
    assert (await db.revisions())[0] == "grants_0002"

    with sqlite3.connect(path) as raw:
        raw.execute("DROP TRIGGER fail_midway")
    await db.migrate()
    assert await db.revisions() == (head, head)
    assert {"cert_pem", "cert_not_after"} <= _grants_columns(path)
    await db.dispose()
