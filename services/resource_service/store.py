"""resource-service tables and queries: the reference data source's rows.

Every read is one statement. Visibility is part of the WHERE clause, so a row outside it
is indistinguishable from a missing one. Lists walk ``ix_resources_owner_kind_id``
(owner_user_id, resource, id) in id order; search uses the full-text index made by
migration ``resources_0002`` (SQLite: FTS5 table ``resources_fts``; Postgres: generated
``search_tsv`` column with a GIN index), which ``resources_0004`` to ``0006`` make split text
into the words of ``mosaic.search`` on both engines (runs of letters, digits, combining
marks and private use; everything else separates words; diacritics count). On Postgres
``id`` uses the "C" collation (``resources_0003``) so ids sort bytewise on both engines.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Column as SAColumn
from sqlalchemy import (
    ColumnElement,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    Uuid,
    and_,
    bindparam,
    cast,
    column,
    false,
    func,
    literal_column,
    or_,
    select,
    table,
    type_coerce,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import TSQUERY, TSVECTOR

from mosaic.db import Database
from mosaic.rpc.options import ROWS_BUDGET_BYTES
from mosaic.search import query_words
from mosaic.sqltypes import UtcDateTime
from resource_service.domain import ResourceRow, Visibility

metadata = MetaData()

resources = Table(
    "resources",
    metadata,
    SAColumn(
        "id",
        String(64).with_variant(String(64, collation="C"), "postgresql"),
        primary_key=True,
    ),
    SAColumn("resource", String(16), nullable=False),
    SAColumn("owner_user_id", Uuid, nullable=False),
    SAColumn("team_id", Uuid, nullable=True),
    SAColumn("title", Text, nullable=False),
    SAColumn("body", Text, nullable=False),
    SAColumn("updated_at", UtcDateTime, nullable=False),
    Index("ix_resources_owner_kind_id", "owner_user_id", "resource", "id"),
)

# Search artifacts made by raw SQL in resources_0002; not part of `metadata` because they
# exist on one engine each (migrations/env.py keeps autogenerate away from them).
FTS_TABLE = "resources_fts"  # SQLite FTS5, external content = resources, keyed by rowid
SEARCH_COLUMN = "search_tsv"  # Postgres: tsvector GENERATED ALWAYS AS (...) STORED
SEARCH_INDEX = "ix_resources_search"

_c = resources.c
ROW_COLUMNS = (_c.id, _c.resource, _c.owner_user_id, _c.team_id, _c.title, _c.body, _c.updated_at)
# What reads select: the same columns, but owner, team and time as the engine returns them
# (SQLite: 32-hex text and "YYYY-MM-DD HH:MM:SS.ffffff" naive UTC; Postgres: uuid and
# timestamptz values), not through the Uuid/UtcDateTime result processors. Building a UUID
# and a datetime object per row only to format them again cost more than the query itself
# under load (make bench); resource_service.servicer._items formats each distinct value
# once per page.
READ_COLUMNS = (
    _c.id,
    _c.resource,
    type_coerce(_c.owner_user_id, String).label("owner_user_id"),
    type_coerce(_c.team_id, String).label("team_id"),
    _c.title,
    _c.body,
    type_coerce(_c.updated_at, String).label("updated_at"),
)
# A row as read: the READ_COLUMNS values in that order (a tuple from sqlite3, a Row from
# SQLAlchemy on Postgres).
ReadRow = Sequence[Any]

_OWNER = bindparam("owner", type_=Uuid)
_KIND = bindparam("kind", type_=String)
_TEAMS = bindparam("teams", type_=Uuid, expanding=True)
# On SQLite the teams travel as one JSON array of 32-hex ids, so that every statement
# compiles once to fixed SQL (an expanding IN list would change with the team count).
_TEAMS_JSON = bindparam("teams", type_=String)
_LIMIT = bindparam("limit", type_=Integer)
# Reads on SQLite skip SQLAlchemy's execution path: each statement is compiled once to SQL
# with named parameters and run on the sqlite3 reader connection (Database.sqlite_reader),
# with the parameters already in stored form (_sqlite_params). A 21-row page takes 56 us
# this way against 167 us through Connection.execute (same statement and file, measured
# in isolation); SQLAlchemy's per-execution work was most of the read.
_SQLITE = sqlite.dialect(paramstyle="named")


# (include_personal, has teams, on SQLite): the three visibility clauses, per engine
Shape = tuple[bool, bool, bool]


def _shape(visibility: Visibility, on_sqlite: bool) -> Shape:
    return visibility.include_personal, bool(visibility.teams), on_sqlite


def _visible(shape: Shape) -> ColumnElement[bool]:
    """owner matches AND (personal row and personal included, or team row of an included team).

    Built from fixed bind parameters only: one statement per shape, built once and reused.
    """
    personal, teams, on_sqlite = shape
    in_teams = (
        _c.team_id.in_(select(column("value")).select_from(func.json_each(_TEAMS_JSON)))
        if on_sqlite
        else _c.team_id.in_(_TEAMS)
    )
    if personal and teams:
        team_clause: ColumnElement[bool] = or_(_c.team_id.is_(None), in_teams)
    elif personal:
        team_clause = _c.team_id.is_(None)
    elif teams:
        team_clause = in_teams
    else:
        team_clause = false()
    return and_(_c.owner_user_id == _OWNER, _c.resource == _KIND, team_clause)


@functools.cache
def _list_statement(shape: Shape) -> Select[Any]:
    return (
        select(*READ_COLUMNS)
        .where(_visible(shape), _c.id > bindparam("after_id", type_=String))
        .order_by(_c.id)
        .limit(_LIMIT)
    )


@functools.cache
def _get_statement(shape: Shape) -> Select[Any]:
    return select(*READ_COLUMNS).where(_c.id == bindparam("row_id", type_=String), _visible(shape))


def _params(kind: str, visibility: Visibility, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"owner": visibility.owner, "kind": kind, **extra}
    if visibility.teams:
        params["teams"] = list(visibility.teams)
    return params


def _sqlite_params(kind: str, visibility: Visibility, **extra: Any) -> dict[str, Any]:
    """_params as SQLite stores them: UUIDs as 32 hex digits (what Uuid's bind processor
    writes on SQLite), the teams as one JSON array of those."""
    params: dict[str, Any] = {"owner": visibility.owner.hex, "kind": kind, **extra}
    if visibility.teams:
        params["teams"] = json.dumps([team.hex for team in visibility.teams])
    return params


@functools.cache
def _sqlite_sql(stmt: Select[Any]) -> tuple[str, dict[str, Any]]:
    """The statement as SQLite SQL, and the values bound at compile time (LIMIT's OFFSET 0)."""
    compiled = stmt.compile(dialect=_SQLITE)
    defaults = {k: v for k, v in compiled.params.items() if v is not None}
    return compiled.string, defaults


class IdsTaken(Exception):
    """Rows (by position) whose id is already another owner's or another resource's row."""

    def __init__(self, positions: list[int]) -> None:
        super().__init__(f"{len(positions)} ids belong to other rows")
        self.positions = positions


class ResourceStore:
    """The only place that touches the ``resources`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._on_sqlite = db.is_sqlite
        self._params: Callable[..., dict[str, Any]] = _sqlite_params if db.is_sqlite else _params
        self._search_statement: Callable[[Shape], Select[Any]] = (
            _sqlite_search_statement if db.is_sqlite else _postgres_search_statement
        )
        # SQLite gets a quoted FTS5 expression; Postgres the words, space-separated.
        self._match_param: Callable[[str], str | None] = (
            _sqlite_match_expression if db.is_sqlite else _postgres_match_text
        )

    async def list_page(
        self, kind: str, visibility: Visibility, after_id: str, limit: int
    ) -> tuple[Sequence[ReadRow], bool]:
        """Up to ``limit`` visible rows with id > ``after_id`` in id order, and whether more
        follow (one extra row is fetched to know)."""
        if visibility.sees_nothing:
            return [], False
        stmt = _list_statement(_shape(visibility, self._on_sqlite))
        params = self._params(kind, visibility, after_id=after_id, limit=limit + 1)
        rows, cut = await self._read_within_budget(stmt, params)
        return rows[:limit], cut or len(rows) > limit

    async def get(self, kind: str, visibility: Visibility, row_id: str) -> ReadRow | None:
        """The row, or None when it is missing or outside the visibility (same answer)."""
        if visibility.sees_nothing:
            return None
        rows = await self._read_all(
            _get_statement(_shape(visibility, self._on_sqlite)),
            self._params(kind, visibility, row_id=row_id),
        )
        return rows[0] if rows else None

    async def search(
        self, kind: str, visibility: Visibility, query: str, limit: int
    ) -> tuple[Sequence[ReadRow], bool]:
        """Up to ``limit`` visible rows matching every word of ``query``, best first, then
        by id; and whether the read stopped at ROWS_BUDGET_BYTES (more may match)."""
        if visibility.sees_nothing:
            return [], False
        match = self._match_param(query)
        if match is None:
            return [], False
        stmt = self._search_statement(_shape(visibility, self._on_sqlite))
        params = self._params(kind, visibility, limit=limit, match=match)
        if self._on_sqlite:
            # A match may walk much of the full-text index (common words, every user's
            # rows before the visibility filter): never on the loop.
            sql, defaults = _sqlite_sql(stmt)
            return await self._db.sqlite_read_in_worker(sql, defaults | params, take=_within_budget)
        return await self._read_within_budget(stmt, params)

    async def _read_all(self, stmt: Select[Any], params: dict[str, Any]) -> Sequence[ReadRow]:
        """Run a read: inline on SQLite (see _SQLITE), via asyncpg otherwise."""
        if self._on_sqlite:
            sql, defaults = _sqlite_sql(stmt)
            return self._db.sqlite_reader().execute(sql, defaults | params).fetchall()
        async with self._db.engine.connect() as conn:
            return (await conn.execute(stmt, params)).all()

    async def _read_within_budget(
        self, stmt: Select[Any], params: dict[str, Any]
    ) -> tuple[list[ReadRow], bool]:
        """Rows of a read until their text passes ROWS_BUDGET_BYTES (the rest are never
        fetched: a reply of large rows would be cut to that size anyway), and whether the
        read stopped there."""
        if self._on_sqlite:
            sql, defaults = _sqlite_sql(stmt)
            cursor = self._db.sqlite_reader().execute(sql, defaults | params)
            try:
                return _within_budget(cursor)
            finally:
                cursor.close()  # a statement left unfinished would hold its read snapshot
        budget = _Budget()
        async with self._db.engine.connect() as conn:
            result = await conn.stream(stmt, params)
            async for row in result:
                if budget.take(row):
                    await result.close()
                    return budget.rows, True
        return budget.rows, False

    async def upsert(self, rows: Sequence[ResourceRow]) -> int:
        """Insert or replace every row in one transaction, or none of them.

        A row replaces only a row of the same owner and resource: an id that is already
        another user's row (or another resource's) would otherwise hand that row over.
        Such ids are refused (IdsTaken) and nothing is written.
        """
        if not rows:
            return 0
        dialect = sqlite if self._db.is_sqlite else postgresql
        insert = dialect.insert(resources)
        stmt = insert.on_conflict_do_update(
            index_elements=[_c.id],
            set_={c.name: insert.excluded[c.name] for c in ROW_COLUMNS if c is not _c.id},
            where=(_c.owner_user_id == insert.excluded.owner_user_id)
            & (_c.resource == insert.excluded.resource),
        ).returning(_c.id)
        values = [
            {
                "id": r.id,
                "resource": r.resource,
                "owner_user_id": r.owner_user_id,
                "team_id": r.team_id,
                "title": r.title,
                "body": r.body,
                "updated_at": r.updated_at,
            }
            for r in rows
        ]
        async with self._db.engine.begin() as conn:
            written = set((await conn.execute(stmt, values)).scalars().all())
            taken = [i for i, r in enumerate(rows) if r.id not in written]
            if taken:
                raise IdsTaken(taken)  # rolls the whole batch back
        return len(rows)


_MATCH = bindparam("match", type_=Text)
_TITLE, _BODY = 4, 5  # positions in READ_COLUMNS


def _text_size(row: ReadRow) -> int:
    """A lower bound on the row's encoded size: its title and body, one byte a character."""
    return len(row[_TITLE]) + len(row[_BODY])


class _Budget:
    """Rows taken so far, and whether their text has passed ROWS_BUDGET_BYTES."""

    def __init__(self) -> None:
        self.rows: list[ReadRow] = []
        self._size = 0

    def take(self, row: ReadRow) -> bool:
        """Keep ``row``; True when the rows kept are now over the budget (stop reading)."""
        self.rows.append(row)
        self._size += _text_size(row)
        return self._size > ROWS_BUDGET_BYTES


def _within_budget(rows: Iterable[ReadRow]) -> tuple[list[ReadRow], bool]:
    """Rows from ``rows`` until they pass the budget, and whether they did."""
    budget = _Budget()
    for row in rows:
        if budget.take(row):
            return budget.rows, True
    return budget.rows, False


def _sqlite_match_expression(query: str) -> str | None:
    """Every word of ``query`` as an FTS5 string ("word", quotes doubled), ANDed.

    Words are those of mosaic.search, as FTS5's tokenizer (resources_0006) splits rows:
    each word is one token, so the engine answers "rows containing all these words".
    Inside a string FTS5 sees only tokens: never an operator, column filter or prefix.
    None when the text has no word at all (nothing can match).
    """
    terms = ['"' + word.replace('"', '""') + '"' for word in query_words(query)]
    return " AND ".join(terms) if terms else None


@functools.cache
def _sqlite_search_statement(shape: Shape) -> Select[Any]:
    fts = table(FTS_TABLE, column("rowid", Integer))
    fts_name: ColumnElement[Any] = literal_column(FTS_TABLE)
    return (
        select(*READ_COLUMNS)
        .select_from(resources.join(fts, fts.c.rowid == literal_column("resources.rowid")))
        .where(fts_name.op("MATCH")(_MATCH), _visible(shape))
        .order_by(func.bm25(fts_name), _c.id)
        .limit(_LIMIT)
    )


def _postgres_match_text(query: str) -> str | None:
    """The words of ``query`` (mosaic.search), separated by single spaces: search_tsv holds a
    row's words split the same way (resources_0006), never by Postgres' parser, which would
    split them by the database's locale."""
    words = query_words(query)
    return " ".join(words) if words else None


def _sql_text(value: str) -> ColumnElement[str]:
    """A constant SQL string, written into the statement (it holds no user text)."""
    return literal_column("'" + value.replace("'", "''") + "'", Text)


# The query's words as search_tsv's lexemes, made as resources_0006 makes a row's: ASCII
# letters lowered by translate() (a Turkish collation lowers "I" to a dotless i), then lower(), and
# each word cut to 255 characters by the migration's function; quoted and ANDed:
# 'w1' & 'w2'. A word holds no quote, backslash or space (mosaic.search), nor does lowering
# give one (the probe in tests/unit/test_search_engines.py), so each is one lexeme and
# nothing is syntax; and the words are a bound parameter, never part of the SQL.
_ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_POSTGRES_LEXEMES = func.resources_search_words(
    func.lower(func.translate(_MATCH, _sql_text(_ASCII_UPPER), _sql_text(_ASCII_UPPER.lower())))
)
_POSTGRES_TSQUERY = cast(
    _sql_text("'") + func.array_to_string(_POSTGRES_LEXEMES, _sql_text("' & '")) + _sql_text("'"),
    TSQUERY,
)


@functools.cache
def _postgres_search_statement(shape: Shape) -> Select[Any]:
    tsv = literal_column(f"resources.{SEARCH_COLUMN}", TSVECTOR)
    # search_tsv has no word positions, so ts_rank would give every match the same rank:
    # rows with fewer distinct words come first (the query's words are more of them).
    return (
        select(*READ_COLUMNS)
        .where(tsv.bool_op("@@")(_POSTGRES_TSQUERY), _visible(shape))
        .order_by(func.length(tsv), _c.id)
        .limit(_LIMIT)
    )
