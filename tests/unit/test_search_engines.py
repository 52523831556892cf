"""The search index of a migrated resource-service database splits text into mosaic.search's
words on every engine, for every assigned code point: SQLite's FTS5 tokenizer, and the
search_tsv column of Postgres databases whose locale would make its own parser split
words three different ways (libc C, ICU with LC_CTYPE C, libc C.UTF-8). And resources_0006
goes back to what resources_0005 left.

On SQLite a probe writes, for each code point c, a row holding "q" c "z" (one word if c
belongs to a word, two if it separates) and c alone (one word or none: FTS5 treats some
marks differently at the start of a word), then counts each row's words in the index.
On Postgres a row per code point costs seconds per database, so rows hold 1024 probes
each: "q" TAG c "z", TAG spelling c's number in ASCII letters, so that every probe's
word is its own, and c belongs to a word exactly when the row's lexemes hold that
whole word, lowered."""

from __future__ import annotations

import datetime as dt
import sqlite3
import unicodedata
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from alembic import command
from sqlalchemy import Connection

from mosaic.config import to_async_postgres_url
from mosaic.db import Database
from mosaic.search import WORD_RANGES
from resource_service.app import MIGRATIONS
from resource_service.domain import ResourceRow, Visibility
from resource_service.store import ResourceStore
from tests.support.postgres import PostgresServer
from tests.support.procs import run_coroutine_sync

# Every assigned code point text can hold: no NUL, no surrogate.
PROBED = [c for c in range(1, 0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
IN_WORDS = {c for low, high in WORD_RANGES for c in range(low, high + 1)}


def _disagreements(kept_in_a_word: set[int]) -> list[str]:
    """The code points an engine kept inside a word that mosaic.search splits at, or the
    other way round."""
    return [
        f"U+{c:04X} {unicodedata.category(chr(c))}"
        for c in PROBED
        if (c in kept_in_a_word) != (c in IN_WORDS)
    ]


def _database(url: str) -> Database:
    return Database(url, schema="resources", migrations_dir=MIGRATIONS)


async def _migrate(db: Database, revision: str, *, down: bool = False) -> None:
    cfg = db._alembic_config()

    def run(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(run)


# ---------------------------------------------------------------- SQLite


async def test_sqlite_tokenizer_splits_every_character_as_mosaic_search_does(
    tmp_path: Path,
) -> None:
    path = tmp_path / "resources.db"
    db = _database(f"sqlite+aiosqlite:///{path}")
    await db.migrate()
    await db.dispose()
    with sqlite3.connect(path) as conn:
        # Straight into the index of the external-content table: no resources rows needed.
        conn.executemany(
            "INSERT INTO resources_fts(rowid, title, body) VALUES (?, ?, ?)",
            ((c, f"q{chr(c)}z", chr(c)) for c in PROBED),
        )
        conn.execute(
            "CREATE VIRTUAL TABLE temp.probe USING fts5vocab(main, resources_fts, instance)"
        )
        inside: dict[int, int] = {}
        alone: dict[int, int] = {}
        for doc, col, count in conn.execute(
            "SELECT doc, col, count(*) FROM temp.probe GROUP BY doc, col"
        ):
            (inside if col == "title" else alone)[doc] = count
    assert _disagreements({c for c, words in inside.items() if words == 1}) == []
    assert _disagreements({c for c, words in alone.items() if words == 1}) == []


def _sqlite_search_schema(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT name, sql FROM sqlite_schema WHERE name LIKE 'resources_fts%' ORDER BY name"
        ).fetchall()


def _sqlite_matches(path: Path, text: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT resources.id FROM resources JOIN resources_fts "
                "ON resources_fts.rowid = resources.rowid WHERE resources_fts MATCH ?",
                (text,),
            )
        ]


async def test_sqlite_downgrade_restores_the_index_of_resources_0005(tmp_path: Path) -> None:
    path = tmp_path / "resources.db"
    db = _database(f"sqlite+aiosqlite:///{path}")
    await _migrate(db, "resources_0005")
    before = _sqlite_search_schema(path)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO resources VALUES ('r1', 'notes', ?, NULL, 'हिन्दी', 'smile🙂face', "
            "'2026-12-06 12:00:00.000000')",
            (uuid.uuid4().hex,),
        )
    assert _sqlite_matches(path, '"smile"') == []
    await _migrate(db, "head")
    assert _sqlite_matches(path, '"smile"') == ["r1"]
    assert _sqlite_matches(path, '"हिन्दी"') == ["r1"]
    await _migrate(db, "resources_0005", down=True)
    await db.dispose()
    assert _sqlite_search_schema(path) == before
    assert _sqlite_matches(path, '"smile"') == []  # rebuilt with the old tokenizer


# ---------------------------------------------------------------- Postgres

LOCALES = {
    "libc-C": "LOCALE_PROVIDER libc LOCALE 'C'",
    "icu-en-US": "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'",
    "libc-C.UTF-8": "LOCALE_PROVIDER libc LOCALE 'C.UTF-8'",
    # lower() of "I" is a dotless i here: ASCII letters must not follow the collation.
    "icu-tr-TR": "LOCALE_PROVIDER icu ICU_LOCALE 'tr-TR' LOCALE 'C'",
}


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=list(LOCALES))
def postgres_locale_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database with one of LOCALES."""
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"search_{uuid.uuid4().hex[:12]}"
    run_coroutine_sync(
        _execute(
            server.admin_url,
            f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING UTF8 {LOCALES[request.param]}',
        )
    )
    try:
        yield server.url_for(name)
    finally:
        server.drop_database(name)


@pytest.fixture
async def resources_schema(postgres_locale_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the migrated database, in schema ``resources``."""
    db = _database(to_async_postgres_url(postgres_locale_url))
    await db.migrate()
    await db.dispose()
    conn = await asyncpg.connect(
        postgres_locale_url, timeout=10, server_settings={"search_path": "resources"}
    )
    try:
        yield conn
    finally:
        await conn.close()


_ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# "q" TAG c "z" for each code point c, TAG being c in hexadecimal with the digits a-p.
_PROBE = "'q' || translate(to_hex(c), '0123456789abcdef', 'abcdefghijklmnop') || chr(c) || 'z'"


@pytest.mark.postgres
async def test_postgres_search_column_splits_every_character_as_mosaic_search_does(
    resources_schema: asyncpg.Connection,
) -> None:
    conn = resources_schema
    # The database is thrown away: filling its GIN index would only make the probe slower.
    await conn.execute("DROP INDEX ix_resources_search")
    # _PROBE is this module's SQL; the code points are bound ($1).
    fill = (
        "INSERT INTO resources (id, resource, owner_user_id, title, body, updated_at) "  # noqa: S608
        f"SELECT min(c)::text, 'notes', gen_random_uuid(), string_agg({_PROBE}, ' '), '', now() "
        "FROM unnest($1::int[]) AS c GROUP BY c / 1024"
    )
    await conn.execute(fill, PROBED)
    words_found = (
        "SELECT c FROM unnest($1::int[]) AS c WHERE "  # noqa: S608
        f"lower(translate({_PROBE}, '{_ASCII_UPPER}', '{_ASCII_UPPER.lower()}')) IN "
        "(SELECT unnest(tsvector_to_array(search_tsv)) FROM resources)"
    )
    assert _disagreements({row[0] for row in await conn.fetch(words_found, PROBED)}) == []
    # ResourceStore.search quotes the lowered words as tsquery lexemes: lowering a word's
    # character must never give a quote, a backslash or a space.
    unsafe = await conn.fetchval(
        "SELECT count(*) FROM unnest($1::int[]) AS c WHERE lower(chr(c)) ~ '[''\\\\ ]'",
        sorted(IN_WORDS),
    )
    assert unsafe == 0


async def _postgres_search_column(conn: asyncpg.Connection) -> tuple[str, str]:
    expression = await conn.fetchval(
        "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef JOIN pg_attribute "
        "ON attrelid = adrelid AND attnum = adnum "
        "WHERE adrelid = 'resources'::regclass AND attname = 'search_tsv'"
    )
    index = await conn.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_resources_search'"
    )
    return expression, index


async def _postgres_matches(conn: asyncpg.Connection, tsquery: str) -> list[str]:
    rows = await conn.fetch("SELECT id FROM resources WHERE search_tsv @@ $1::tsquery", tsquery)
    return [row[0] for row in rows]


@pytest.mark.postgres
async def test_postgres_downgrade_restores_the_column_of_resources_0005(
    postgres_url: str,
) -> None:
    db = _database(to_async_postgres_url(postgres_url))
    conn = await asyncpg.connect(
        postgres_url, timeout=10, server_settings={"search_path": "resources"}
    )
    try:
        await conn.execute("CREATE SCHEMA resources")
        await _migrate(db, "resources_0005")
        before = await _postgres_search_column(conn)
        await conn.execute(
            "INSERT INTO resources VALUES ('r1', 'notes', gen_random_uuid(), NULL, "
            "'हिन्दी', 'smile🙂face plain', now())"
        )
        await _migrate(db, "head")
        assert await _postgres_search_column(conn) != before
        assert await _postgres_matches(conn, "'हिन्दी' & 'smile'") == ["r1"]
        await _migrate(db, "resources_0005", down=True)
        assert await _postgres_search_column(conn) == before
        assert await _postgres_matches(conn, "'plain'") == ["r1"]
    finally:
        await conn.close()
        await db.dispose()


OWNER = uuid.uuid4()
NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
_CASES = [
    ResourceRow("r-install", "notes", OWNER, None, "INSTALL Linux", "on the Istanbul box", NOW),
    ResourceRow("r-strasse", "notes", OWNER, None, "Straße", "nothing else", NOW),
]


async def _searched(store: ResourceStore, query: str) -> list[str]:
    rows, _ = await store.search("notes", Visibility(OWNER, (), True), query, 10)
    return sorted(row[0] for row in rows)  # READ_COLUMNS: the id first


async def _assert_ascii_case_does_not_matter(store: ResourceStore) -> None:
    await store.upsert(_CASES)
    assert await _searched(store, "install") == ["r-install"]
    assert await _searched(store, "linux INSTALL istanbul") == ["r-install"]
    # A word no row holds narrows the search, whatever its case folds to elsewhere.
    assert await _searched(store, "straße") == ["r-strasse"]
    assert await _searched(store, "straße STRASSE") == []


async def test_sqlite_search_ignores_the_case_of_ascii_letters(tmp_path: Path) -> None:
    db = _database(f"sqlite+aiosqlite:///{tmp_path / 'resources.db'}")
    await db.migrate()
    try:
        await _assert_ascii_case_does_not_matter(ResourceStore(db))
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_postgres_search_ignores_the_case_of_ascii_letters_in_every_locale(
    postgres_locale_url: str,
) -> None:
    db = _database(to_async_postgres_url(postgres_locale_url))
    await db.migrate()
    try:
        await _assert_ascii_case_does_not_matter(ResourceStore(db))
    finally:
        await db.dispose()
