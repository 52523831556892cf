"""search: both engines split text into the same words

Search promises "rows containing every word of the query", words being runs of letters
and digits (mosaic.search). Postgres' parser kept an e-mail address, a URL, a path or a
version as tokens of their own, so "example" did not find "alice@example.com" there while
SQLite's FTS5 did; and FTS5 stripped diacritics, so "cafe" found "Café" on SQLite only.

- Postgres: ``search_tsv`` is built from the text with punctuation turned into spaces.
- SQLite: the FTS5 table is rebuilt with ``remove_diacritics 0``, as Postgres' ``simple``
  configuration keeps them.

Revision ID: resources_0004
Revises: resources_0003
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "resources_0004"
down_revision: str | None = "resources_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FTS_TRIGGERS = (
    "CREATE TRIGGER resources_fts_ai AFTER INSERT ON resources BEGIN "
    "INSERT INTO resources_fts(rowid, title, body) VALUES (new.rowid, new.title, new.body); "
    "END",
    "CREATE TRIGGER resources_fts_ad AFTER DELETE ON resources BEGIN "
    "INSERT INTO resources_fts(resources_fts, rowid, title, body) "
    "VALUES ('delete', old.rowid, old.title, old.body); "
    "END",
    "CREATE TRIGGER resources_fts_au AFTER UPDATE OF title, body ON resources BEGIN "
    "INSERT INTO resources_fts(resources_fts, rowid, title, body) "
    "VALUES ('delete', old.rowid, old.title, old.body); "
    "INSERT INTO resources_fts(rowid, title, body) VALUES (new.rowid, new.title, new.body); "
    "END",
)
_FTS_DROP = (
    "DROP TRIGGER IF EXISTS resources_fts_au",
    "DROP TRIGGER IF EXISTS resources_fts_ad",
    "DROP TRIGGER IF EXISTS resources_fts_ai",
    "DROP TABLE IF EXISTS resources_fts",
)


def _fts(tokenize: str) -> tuple[str, ...]:
    return (
        *_FTS_DROP,
        "CREATE VIRTUAL TABLE resources_fts USING fts5("
        f"title, body, content='resources', content_rowid='rowid', tokenize='{tokenize}')",
        *_FTS_TRIGGERS,
        "INSERT INTO resources_fts(resources_fts) VALUES ('rebuild')",
    )


def _tsv(text: str) -> tuple[str, ...]:
    return (
        "DROP INDEX IF EXISTS ix_resources_search",
        "ALTER TABLE resources DROP COLUMN IF EXISTS search_tsv",
        "ALTER TABLE resources ADD COLUMN search_tsv tsvector "
        f"GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, {text})) STORED",
        "CREATE INDEX ix_resources_search ON resources USING gin (search_tsv)",
    )


_WORDS_ONLY = "regexp_replace(title || ' ' || body, '[[:punct:]]+', ' ', 'g')"


def _run(sqlite: Sequence[str], postgres: Sequence[str]) -> None:
    dialect = op.get_bind().dialect.name
    statements = {"sqlite": sqlite, "postgresql": postgres}.get(dialect)
    if statements is None:
        raise NotImplementedError(f"no full-text search migration for {dialect}")
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    _run(_fts("unicode61 remove_diacritics 0"), _tsv(_WORDS_ONLY))


def downgrade() -> None:
    _run(_fts("unicode61"), _tsv("title || ' ' || body"))
