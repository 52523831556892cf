"""full-text search over title and body

SQLite: an FTS5 table with external content (``resources``, keyed by its rowid), kept in
step by triggers and filled from the existing rows. Rowids of ``resources`` are the FTS
keys; VACUUM keeps them in practice, but SQLite only promises that for tables with an
INTEGER PRIMARY KEY: should the index ever disagree with the table, rebuild it with
``INSERT INTO resources_fts(resources_fts) VALUES('rebuild')`` (search results are
always filtered by visibility on ``resources`` itself, so a stale index can miss or
mis-rank rows but never show a row outside the caller's visibility).

Postgres: a stored generated ``search_tsv`` column (``simple`` configuration: no
stemming, no stop words, the same on every server) with a GIN index.

Revision ID: resources_0002
Revises: resources_0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "resources_0002"
down_revision: str | None = "resources_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_UPGRADE = (
    "CREATE VIRTUAL TABLE resources_fts USING fts5("
    "title, body, content='resources', content_rowid='rowid')",
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
    "INSERT INTO resources_fts(resources_fts) VALUES ('rebuild')",
)
SQLITE_DOWNGRADE = (
    "DROP TRIGGER IF EXISTS resources_fts_au",
    "DROP TRIGGER IF EXISTS resources_fts_ad",
    "DROP TRIGGER IF EXISTS resources_fts_ai",
    "DROP TABLE IF EXISTS resources_fts",
)
POSTGRES_UPGRADE = (
    "ALTER TABLE resources ADD COLUMN search_tsv tsvector "
    "GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, title || ' ' || body)) STORED",
    "CREATE INDEX ix_resources_search ON resources USING gin (search_tsv)",
)
POSTGRES_DOWNGRADE = (
    "DROP INDEX IF EXISTS ix_resources_search",
    "ALTER TABLE resources DROP COLUMN IF EXISTS search_tsv",
)


def _run(sqlite: Sequence[str], postgres: Sequence[str]) -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        statements = sqlite
    elif dialect == "postgresql":
        statements = postgres
    else:
        raise NotImplementedError(f"no full-text search migration for {dialect}")
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    _run(SQLITE_UPGRADE, POSTGRES_UPGRADE)


def downgrade() -> None:
    _run(SQLITE_DOWNGRADE, POSTGRES_DOWNGRADE)
