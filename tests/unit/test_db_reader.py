"""Database.sqlite_reader: the inline read connection sees committed rows and cannot write."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

import resource_service.app as app
from mosaic.db import Database


async def test_reader_sees_committed_rows_and_refuses_writes(tmp_path: Path) -> None:
    db = Database(
        f"sqlite+aiosqlite:///{tmp_path / 'resources.db'}",
        schema="resources",
        migrations_dir=app.MIGRATIONS,
    )
    try:
        await db.migrate()
        reader = db.sqlite_reader()
        assert db.sqlite_reader() is reader  # one connection, opened once
        async with db.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO resources (id, resource, owner_user_id, team_id, title, body,"
                    " updated_at) VALUES ('t1', 'tasks', :o, NULL, 'x', 'y', '2026-11-23')"
                ),
                {"o": "11111111111141118111111111111111"},
            )
        assert reader.execute("SELECT id FROM resources").fetchall() == [("t1",)]
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("DELETE FROM resources")
        assert reader.execute("SELECT count(*) FROM resources").fetchone() == (1,)
    finally:
        await db.dispose()
    with pytest.raises(sqlite3.ProgrammingError):
        reader.execute("SELECT 1")  # dispose closed it
