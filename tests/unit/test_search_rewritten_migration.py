"""Databases migrated by a release whose resources_0006 was later rewritten (09d4a77,
ebcface) search as today's do once migrated to head (resources_0007 runs today's
resources_0006 again): on Postgres the search no longer fails for want of the function
resources_search_words; on SQLite an emoji's variation selector separates words again
("warning" finds "⚠️Warning"), private use is part of a word, and Hindi words are whole.

Each database is built with the migration text that release shipped
(tests/fixtures/released_migrations), holding rows indexed by it, then migrated with
Database.migrate as a service does at start-up."""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from sqlalchemy import Connection

from mosaic.config import to_async_postgres_url
from mosaic.db import Database
from resource_service.app import MIGRATIONS
from resource_service.domain import ResourceRow, Visibility
from resource_service.store import ResourceStore
from tests.support.postgres import PostgresServer
from tests.support.released_migrations import migrations_as_released

RELEASES = ["09d4a77", "ebcface"]
OWNER = uuid.uuid4()
NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
ROWS = [
    ResourceRow("r-emoji", "notes", OWNER, None, "\u26a0\ufe0fWarning rotate", "keys", NOW),
    ResourceRow("r-icon", "notes", OWNER, None, "icon\ue000glyph", "private use", NOW),
    ResourceRow("r-hindi", "notes", OWNER, None, "हिन्दी", "हिन्दी भाषा सीखना", NOW),
    # The letters of "हिन्दी" in other words: what it falls into when split at its marks.
    ResourceRow("r-hindi-decoy", "notes", OWNER, None, "Decoy", "दिन है", NOW),
]
# Query -> the rows it finds, with today's resources_0006.
SEARCHES = {
    "warning": ["r-emoji"],
    "rotate": ["r-emoji"],
    "icon\ue000glyph": ["r-icon"],
    "icon": [],
    "हिन्दी": ["r-hindi"],
    "भाषा हिन्दी": ["r-hindi"],
    "दिन": ["r-hindi-decoy"],
}


async def _at_released_0006(url: str, release: str, tmp_path: Path) -> None:
    """Migrate ``url`` to resources_0006 as ``release`` shipped it, and write ROWS."""
    old = Database(
        url,
        schema="resources",
        migrations_dir=migrations_as_released(
            MIGRATIONS, release, "0006_search_marks.py", tmp_path
        ),
    )
    cfg = old._alembic_config()

    def upgrade(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "resources_0006")

    try:
        async with old.engine.begin() as conn:
            if not old.is_sqlite:
                await conn.exec_driver_sql("CREATE SCHEMA resources")
            await conn.run_sync(upgrade)
        await ResourceStore(old).upsert(ROWS)
    finally:
        await old.dispose()


async def _searches_at_head(url: str) -> dict[str, list[str]]:
    db = Database(url, schema="resources", migrations_dir=MIGRATIONS)
    try:
        await db.migrate()
        current, head = await db.revisions()
        assert current == head
        store = ResourceStore(db)
        found = {}
        for query in SEARCHES:
            rows, _ = await store.search("notes", Visibility(OWNER, (), True), query, 10)
            found[query] = sorted(row[0] for row in rows)  # READ_COLUMNS: the id first
        return found
    finally:
        await db.dispose()


def _sqlite_search_schema(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT name, sql FROM sqlite_schema WHERE name LIKE 'resources_fts%' ORDER BY name"
        ).fetchall()


@pytest.mark.parametrize("release", RELEASES)
async def test_a_sqlite_database_of_a_release_searches_as_today_once_at_head(
    release: str, tmp_path: Path
) -> None:
    path = tmp_path / "resources.db"
    await _at_released_0006(f"sqlite+aiosqlite:///{path}", release, tmp_path)

    assert await _searches_at_head(f"sqlite+aiosqlite:///{path}") == SEARCHES
    fresh = tmp_path / "fresh.db"
    fresh_db = Database(
        f"sqlite+aiosqlite:///{fresh}", schema="resources", migrations_dir=MIGRATIONS
    )
    await fresh_db.migrate()
    await fresh_db.dispose()
    assert _sqlite_search_schema(path) == _sqlite_search_schema(fresh)


async def _postgres_search_schema(url: str) -> tuple[object, ...]:
    conn = await asyncpg.connect(url, timeout=10, server_settings={"search_path": "resources"})
    try:
        return (
            await conn.fetchval(
                "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef JOIN pg_attribute "
                "ON attrelid = adrelid AND attnum = adnum "
                "WHERE adrelid = 'resources'::regclass AND attname = 'search_tsv'"
            ),
            await conn.fetchval(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_resources_search'"
            ),
            await conn.fetchval(
                "SELECT pg_get_functiondef('resources_search_words(text)'::regprocedure)"
            ),
        )
    finally:
        await conn.close()


@pytest.mark.postgres
@pytest.mark.parametrize("release", RELEASES)
async def test_a_postgres_database_of_a_release_searches_as_today_once_at_head(
    release: str, tmp_path: Path, postgres_url: str, postgres_server: PostgresServer
) -> None:
    await _at_released_0006(to_async_postgres_url(postgres_url), release, tmp_path)

    assert await _searches_at_head(to_async_postgres_url(postgres_url)) == SEARCHES
    fresh_url = postgres_server.create_database(f"fresh_{uuid.uuid4().hex[:12]}")
    fresh = Database(
        to_async_postgres_url(fresh_url), schema="resources", migrations_dir=MIGRATIONS
    )
    await fresh.migrate()
    await fresh.dispose()
    assert await _postgres_search_schema(postgres_url) == await _postgres_search_schema(fresh_url)
