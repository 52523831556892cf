"""resource-service (the reference ResourceSource) against a real instance, on SQLite and on a
real PostgreSQL: visibility, keyset paging, hostile input, search that never parses user
text as query syntax, import validation, and who may call it.

Rows go in through `mosaic resources import` (CLI -> gateway admin -> resource-service);
reads go straight to resource-service over internal mTLS as the federation gateway, the
way the gateway reads it on the federation hot path.

The Postgres database is created with an ICU en-US default collation, under which ids
would sort linguistically ("a…" before "B…"): the tests expect bytewise order on both
engines, which is what migration resources_0003 promises. Two more Postgres databases run
the search cases only: one with the plain libc C locale, under which regular expressions
know only ASCII punctuation and the text-search parser counts every non-ASCII character
as a letter, and one with libc C.UTF-8, under which that parser splits a word at a virama
or a combining accent (search words: resources_0005 and 0006).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from mosaic.config import ENROLLMENT, GATEWAY, OPERATOR, RESOURCES
from mosaic.errors import RemoteError
from mosaic.federation.v1 import common_pb2, resources_pb2, resources_pb2_grpc
from tests.support.instances import Instance, internal_channel_as
from tests.support.procs import run_coroutine_sync
from tests.support.search_words import in_words

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "infra" / "demo" / "sample-resources.json"

U1 = "0b6f4c1e-1111-4a5b-8c7d-000000000001"
U2 = "0b6f4c1e-2222-4a5b-8c7d-000000000002"
U3 = "0b6f4c1e-3333-4a5b-8c7d-000000000003"  # rows the mutating tests own
T1 = "7d2e9a40-aaaa-4b1c-9d8e-00000000000a"
T2 = "7d2e9a40-bbbb-4b1c-9d8e-00000000000b"
T3 = "7d2e9a40-cccc-4b1c-9d8e-00000000000c"
T_UNKNOWN = "7d2e9a40-dddd-4b1c-9d8e-00000000000d"
KINDS = ("tasks", "notes")
# 700 letters, 2100 bytes: longer than a Postgres lexeme may be (2047 bytes).
LONG_WORD = "दीर्घ" * 140
# Mixed case and punctuation: bytewise order differs from a linguistic one.
PREFIXES = ("a", "B", "c", "A", "b", "C", "_", "0", ".")


@dataclass(frozen=True)
class Row:
    id: str
    resource: str
    owner: str
    team: str  # "" = personal
    title: str
    body: str
    updated_at: str | None = "2026-10-01T12:00:00Z"

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "resource": self.resource,
            "owner_user_id": self.owner,
            "team_id": self.team or None,
            "title": self.title,
            "body": self.body,
        }
        if self.updated_at is not None:
            doc["updated_at"] = self.updated_at
        return doc


def build_rows() -> list[Row]:
    rows: list[Row] = []
    prefix = itertools.cycle(PREFIXES)
    for kind in KINDS:
        for owner, tag in ((U1, "u1"), (U2, "u2")):
            for team, tname, count in (("", "p", 3), (T1, "t1", 3), (T2, "t2", 2), (T3, "t3", 1)):
                for n in range(count):
                    rows.append(
                        Row(
                            id=f"{next(prefix)}{tag}-{kind}-{tname}-{n}",
                            resource=kind,
                            owner=owner,
                            team=team,
                            title=f"{kind} {tname} number {n}",
                            body=f"{kind} row {tname} number {n} owned by {tag} lorem ipsum",
                            updated_at=None if n == 1 else "2026-10-01T12:00:00Z",
                        )
                    )
    rows += [
        Row(
            "note-grocery",
            "notes",
            U1,
            "",
            "Grocery list",
            "pineapple and bread; do NOT forget the milk",
        ),
        Row("note-banana", "notes", U1, "", "Banana bread", "banana only here"),
        Row("note-cafe", "notes", U1, "", "Café list", "café crème and croissant"),
        Row("note-team-pineapple", "notes", U1, T1, "Team fruit", "pineapple for the team"),
        Row("u2-grocery", "notes", U2, "", "Pizza", "pineapple pizza and bread"),
        Row("u2-team-pineapple", "notes", U2, T1, "Their fruit", "pineapple in another home"),
        Row(
            "u2-links",
            "notes",
            U2,
            "",
            "Links",
            "mail alice@example.com, see https://example.org/docs/page and "
            "/etc/mosaic/config, v1.2.3, state-of-the-art, snake_case",
        ),
        Row(
            "u2-unicode",
            "notes",
            U2,
            "",
            "Unicode",
            "alpha\u2014beta \u00abgamma\u00bb delta\u3001epsilon zeta\u2026eta "
            "lambda\u00b7mu nu\u2192xi omicron\u00a0pi rho\u2022sigma tau\u20acupsilon "
            "\u6771\u4eac\u30fb\u5927\u962a brand\u2122mark no\u2116five arabic\u060ccomma "
            "danda\u0964end greek\u037equery bom\ufeffjoint ogham\u1680gap",
        ),
        # Combining marks are part of the word they are written in. Each decoy holds the
        # same letters in other words: the pieces a word fell into when its marks split it.
        Row("u2-hindi", "notes", U2, "", "हिन्दी", "हिन्दी भाषा सीखना"),
        Row("u2-hindi-decoy", "notes", U2, "", "Decoy", "दिन है"),
        Row("u2-arabic", "notes", U2, "", "Arabic", "اللُّغَة العَرَبِيَّة"),
        Row("u2-arabic-decoy", "notes", U2, "", "Decoy", "لُغَةُ العَرَبِيِّ"),
        Row("u2-hebrew", "notes", U2, "", "Hebrew", "שָׂפָה עִבְרִית"),
        Row("u2-hebrew-decoy", "notes", U2, "", "Decoy", "עִבְרִי וְאַנְגְּלִית"),
        Row("u2-thai", "notes", U2, "", "Thai", "สวัสดี ภาษาไทย"),
        Row("u2-nfd", "notes", U2, "", "NFD", "cafe\u0301 au lait"),  # "café", decomposed
        Row("u2-nfd-decoy", "notes", U2, "", "Decoy", "cafe racer"),
        # Symbols separate words, whatever SQLite's tables know of them; private use is
        # part of a word:
        Row(
            "u2-symbols",
            "notes",
            U2,
            "",
            "Symbols",
            "smile\U0001f642face icon\ue000name plane\U000f0001fifteen "
            # Emoji made with a variation selector or a keycap, and one standing alone.
            "\u26a0\ufe0fWarning a\u2764\ufe0fb 1\ufe0f\u20e3first sunny \u2600\ufe0f day "
            + LONG_WORD,
        ),
    ]
    return rows


ROWS = build_rows()
BY_ID = {r.id: r for r in ROWS}


def visible(kind: str, owner: str, teams: Sequence[str], personal: bool) -> list[str]:
    """What the contract says a visibility shows, in bytewise id order."""
    return sorted(
        r.id
        for r in ROWS
        if r.resource == kind
        and r.owner == owner
        and ((r.team == "" and personal) or (r.team != "" and r.team in teams))
    )


def words(text: str) -> set[str]:
    """The words of ``text``, lowered: runs of letters, numbers, marks and private use
    (mosaic.search)."""
    spaced = "".join(c if in_words(ord(c)) else " " for c in text)
    return {w.lower() for w in spaced.split()}


def vis(owner: str, teams: Sequence[str] = (), personal: bool = True) -> common_pb2.Visibility:
    return common_pb2.Visibility(
        owner_user_id=owner, include_teams=list(teams), include_personal=personal
    )


# ---------------------------------------------------------------- fixtures


async def execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def _started(
    kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    """An instance on ``kind`` (sqlite, postgres, postgres-libc-c, postgres-libc-c-utf8)
    holding ROWS."""
    db = ""
    dbname = ""
    if kind.startswith("postgres"):
        server = request.getfixturevalue("postgres_server")
        dbname = f"resources_{uuid.uuid4().hex[:12]}"
        locale = {
            "postgres-libc-c": "LOCALE_PROVIDER libc LOCALE 'C'",
            "postgres-libc-c-utf8": "LOCALE_PROVIDER libc LOCALE 'C.UTF-8'",
        }.get(kind, "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'")
        run_coroutine_sync(
            execute(
                server.admin_url,
                f'CREATE DATABASE "{dbname}" TEMPLATE template0 ENCODING UTF8 {locale}',
            )
        )
        db = server.url_for(dbname)
    inst = Instance(tmp_path_factory.mktemp(kind), "b", db=db)
    try:
        inst.start()
        root = tmp_path_factory.mktemp("rows")
        data = root / "rows.json"
        data.write_text(json.dumps([r.as_json() for r in ROWS]))
        code, doc, err = inst.cli("resources", "import", str(data))
        assert code == 0, (doc, err)
        assert doc == {"imported": len(ROWS)}
        yield inst
    finally:
        inst.stop()
        if dbname:
            request.getfixturevalue("postgres_server").drop_database(dbname)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    with _started(request.param, request, tmp_path_factory) as inst:
        yield inst


@pytest.fixture(scope="module", params=["postgres-libc-c", "postgres-libc-c-utf8"])
def c_locale_instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    """Postgres with the libc C or C.UTF-8 locale: search only (see the module's docstring)."""
    with _started(request.param, request, tmp_path_factory) as inst:
        yield inst


@pytest.fixture
async def source(instance: Instance) -> AsyncIterator[resources_pb2_grpc.ResourceSourceStub]:
    channel = internal_channel_as(instance.home, RESOURCES, GATEWAY)
    async with channel:
        yield resources_pb2_grpc.ResourceSourceStub(channel)


async def list_all(
    source: resources_pb2_grpc.ResourceSourceStub,
    kind: str,
    visibility: common_pb2.Visibility,
    limit: int,
) -> list[str]:
    ids: list[str] = []
    after = ""
    for _ in range(1000):
        reply = await source.ListResources(
            resources_pb2.ListResourcesRequest(
                resource=kind, visibility=visibility, limit=limit, after_id=after
            ),
            timeout=10,
        )
        assert len(reply.items) <= limit
        ids += [i.id for i in reply.items]
        if not reply.next_after_id:
            return ids
        assert reply.next_after_id == reply.items[-1].id
        after = reply.next_after_id
    raise AssertionError("paging never ended")


async def rpc_error(call: Any) -> RemoteError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return RemoteError.from_rpc_error(info.value)


VISIBILITIES = [
    (teams, personal)
    for teams in ((), (T1,), (T1, T2), (T3, T_UNKNOWN), (T1, T2, T3))
    for personal in (True, False)
]


# ---------------------------------------------------------------- visibility


@pytest.mark.parametrize("kind", KINDS)
async def test_list_shows_exactly_the_visible_rows(
    source: resources_pb2_grpc.ResourceSourceStub, kind: str
) -> None:
    for owner in (U1, U2):
        for teams, personal in VISIBILITIES:
            got = await list_all(source, kind, vis(owner, teams, personal), 10_000)
            assert got == visible(kind, owner, teams, personal), (owner, teams, personal)


async def test_get_answers_exactly_for_visible_rows(
    source: resources_pb2_grpc.ResourceSourceStub,
) -> None:
    not_found: set[tuple[Any, ...]] = set()
    for kind in KINDS:
        for teams, personal in VISIBILITIES:
            shown = set(visible(kind, U1, teams, personal))
            for row in ROWS:
                request = resources_pb2.GetResourceRequest(
                    resource=kind, id=row.id, visibility=vis(U1, teams, personal)
                )
                if row.id in shown:
                    reply = await source.GetResource(request, timeout=10)
                    assert reply.item.id == row.id
                else:
                    err = await rpc_error(source.GetResource(request, timeout=10))
                    not_found.add((err.code, err.reason, err.message, tuple(err.metadata)))
    missing = await rpc_error(
        source.GetResource(
            resources_pb2.GetResourceRequest(
                resource="notes", id="no-such-row", visibility=vis(U1)
            ),
            timeout=10,
        )
    )
    not_found.add((missing.code, missing.reason, missing.message, tuple(missing.metadata)))
    # Other user's rows, unincluded teams, excluded personal rows, other kinds and missing
    # ids all give one identical answer.
    assert not_found == {(grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND", "no such resource", ())}


async def test_get_returns_the_row_as_imported(
    source: resources_pb2_grpc.ResourceSourceStub,
) -> None:
    for row in (r for r in ROWS if r.owner == U1):
        reply = await source.GetResource(
            resources_pb2.GetResourceRequest(
                resource=row.resource, id=row.id, visibility=vis(U1, (T1, T2, T3))
            ),
            timeout=10,
        )
        item = reply.item
        assert (item.resource, item.owner_user_id, item.team_id, item.title, item.body) == (
            row.resource,
            row.owner,
            row.team,
            row.title,
            row.body,
        )
        stamp = item.updated_at.ToDatetime(tzinfo=dt.UTC)
        if row.updated_at is None:  # defaulted to the import time
            assert stamp.year >= 2024
        else:
            assert stamp == dt.datetime.fromisoformat(row.updated_at)


# ---------------------------------------------------------------- paging


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 7, 11, 10_000])
async def test_paging_returns_every_visible_row_once_in_id_order(
    source: resources_pb2_grpc.ResourceSourceStub, limit: int
) -> None:
    for kind in KINDS:
        expected = visible(kind, U1, (T1, T2), True)
        assert await list_all(source, kind, vis(U1, (T1, T2)), limit) == expected


async def test_a_page_that_ends_exactly_at_the_last_row_says_no_more(
    source: resources_pb2_grpc.ResourceSourceStub,
) -> None:
    expected = visible("tasks", U1, (T1,), True)
    reply = await source.ListResources(
        resources_pb2.ListResourcesRequest(
            resource="tasks", visibility=vis(U1, (T1,)), limit=len(expected)
        ),
        timeout=10,
    )
    assert [i.id for i in reply.items] == expected
    assert reply.next_after_id == ""


async def test_cursor_is_a_plain_keyset_position(
    source: resources_pb2_grpc.ResourceSourceStub,
) -> None:
    expected = visible("tasks", U1, (T1, T2, T3), True)
    for after in (
        ".",
        "0",
        "B",
        "Z",
        "_",
        "a",
        "zzzz",
        "-",
        ":",
        expected[2],
        BY_ID["note-cafe"].id,
    ):
        reply = await source.ListResources(
            resources_pb2.ListResourcesRequest(
                resource="tasks", visibility=vis(U1, (T1, T2, T3)), limit=100, after_id=after
            ),
            timeout=10,
        )
        assert [i.id for i in reply.items] == [i for i in expected if i > after], after


HOSTILE_CURSORS = [
    "' OR 1=1 --",
    "a' OR 'a'='a",
    '"; DROP TABLE resources; --',
    "a" * 65,
    "x" * 200_000,
    "ünïcødé",
    "日本語",
    "😀",
    "a\x00b",
    "a b",
    "%",
    "_%",
    "*",
]


async def test_hostile_cursors_are_refused_cleanly(
    source: resources_pb2_grpc.ResourceSourceStub,
) -> None:
    for after in HOSTILE_CURSORS:
        err = await rpc_error(
            source.ListResources(
                resources_pb2.ListResourcesRequest(
                    resource="tasks", visibility=vis(U1), limit=5, after_id=after
                ),
                timeout=10,
            )
        )
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CURSOR"), after
    # Nothing broke: the table is there and answers as before.
    assert await list_all(source, "tasks", vis(U1), 2) == visible("tasks", U1, (), True)


async def test_hostile_ids_on_get_are_refused_cleanly(
    source: resources_pb2_grpc.ResourceSourceStub,
) -> None:
    for row_id in ["", *HOSTILE_CURSORS]:
        err = await rpc_error(
            source.GetResource(
                resources_pb2.GetResourceRequest(resource="tasks", id=row_id, visibility=vis(U1)),
                timeout=10,
            )
        )
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID")


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize("limit", [0, -1, 10_001, 2**31 - 1])
async def test_limits_outside_1_to_10000_are_refused(
    source: resources_pb2_grpc.ResourceSourceStub, limit: int
) -> None:
    for call in (
        source.ListResources(
            resources_pb2.ListResourcesRequest(resource="tasks", visibility=vis(U1), limit=limit),
            timeout=10,
        ),
        source.SearchResources(
            resources_pb2.SearchResourcesRequest(
                resource="tasks", visibility=vis(U1), query="lorem", limit=limit
            ),
            timeout=10,
        ),
    ):
        err = await rpc_error(call)
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_LIMIT")


@pytest.mark.parametrize("kind", ["", "Tasks", "task", "secrets", "tasks; DROP TABLE resources"])
async def test_unknown_resource_kinds_are_refused(
    source: resources_pb2_grpc.ResourceSourceStub, kind: str
) -> None:
    for call in (
        source.ListResources(
            resources_pb2.ListResourcesRequest(resource=kind, visibility=vis(U1), limit=5),
            timeout=10,
        ),
        source.GetResource(
            resources_pb2.GetResourceRequest(resource=kind, id="note-grocery", visibility=vis(U1)),
            timeout=10,
        ),
        source.SearchResources(
            resources_pb2.SearchResourcesRequest(
                resource=kind, visibility=vis(U1), query="pineapple", limit=5
            ),
            timeout=10,
        ),
    ):
        err = await rpc_error(call)
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_RESOURCE")


@pytest.mark.parametrize(
    ("owner", "teams", "bad_field"),
    [
        ("", (), "visibility.owner_user_id"),
        ("not-a-uuid", (), "visibility.owner_user_id"),
        ("{" + U1 + "}", (), "visibility.owner_user_id"),
        (U1.replace("-", ""), (), "visibility.owner_user_id"),
        (U1, (T1, "x"), "visibility.include_teams[1]"),
        (U1, ("",), "visibility.include_teams[0]"),
    ],
)
async def test_bad_uuids_in_a_visibility_are_refused(
    source: resources_pb2_grpc.ResourceSourceStub,
    owner: str,
    teams: tuple[str, ...],
    bad_field: str,
) -> None:
    err = await rpc_error(
        source.ListResources(
            resources_pb2.ListResourcesRequest(
                resource="tasks", visibility=vis(owner, teams), limit=5
            ),
            timeout=10,
        )
    )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (bad_field, "not a UUID") in err.violations


# ---------------------------------------------------------------- search


SEARCHES: list[tuple[str, str, tuple[str, ...], bool, set[str]]] = [
    # (query, owner, teams, personal, expected ids)
    ("pineapple", U1, (), True, {"note-grocery"}),
    ("pineapple", U1, (T1,), True, {"note-grocery", "note-team-pineapple"}),
    ("pineapple", U1, (T1,), False, {"note-team-pineapple"}),
    ("pineapple", U2, (), True, {"u2-grocery"}),
    ("Pineapple BREAD", U1, (T1,), True, {"note-grocery"}),
    ("bread", U1, (), True, {"note-grocery", "note-banana"}),
    ("café", U1, (), True, {"note-cafe"}),
    ("cafe", U1, (), True, set()),  # diacritics count, on both engines
    # Punctuation only separates words, in rows as in queries, on both engines:
    ("example", U2, (), True, {"u2-links"}),
    ("alice@example.com", U2, (), True, {"u2-links"}),
    ("docs page", U2, (), True, {"u2-links"}),
    ("mosaic config", U2, (), True, {"u2-links"}),
    ("v1 2", U2, (), True, {"u2-links"}),
    ("the art", U2, (), True, {"u2-links"}),
    ("snake case", U2, (), True, {"u2-links"}),
    # Punctuation, symbols and spaces beyond ASCII too (a Postgres database whose
    # LC_CTYPE is C counts every non-ASCII character as a letter):
    *(
        (word, U2, (), True, {"u2-unicode"})
        for word in (
            "beta",
            "gamma",
            "delta",
            "epsilon",
            "eta",
            "mu",
            "xi",
            "pi",
            "sigma",
            "upsilon",
            "\u5927\u962a",
            "mark",
            "five",
            "comma",
            "end",
            "query",
            "joint",
            "gap",
            "alpha beta",
        )
    ),
    # FTS5 / tsquery operators are words, never syntax:
    ("NOT forget", U1, (), True, {"note-grocery"}),
    ("bread NOT banana", U1, (), True, set()),  # as syntax: note-grocery
    ("pineapple OR banana", U1, (), True, set()),  # as syntax: grocery + banana
    ("NEAR(pineapple bread)", U1, (), True, set()),  # as syntax: note-grocery
    ("pine*", U1, (T1,), True, set()),  # as syntax: a prefix query
    ('"pineapple"', U1, (), True, {"note-grocery"}),
    ('"pineapple', U1, (), True, {"note-grocery"}),
    ("title:grocery", U1, (), True, set()),  # as syntax: a column filter
    ("body:pineapple", U1, (), True, set()),
    ("pineapple -bread", U1, (), True, {"note-grocery"}),  # as websearch: excludes grocery
    ("pineapple & !bread", U1, (), True, {"note-grocery"}),  # as tsquery: excludes grocery
    ("*", U1, (T1,), True, set()),
    ('"', U1, (T1,), True, set()),
    ("(", U1, (T1,), True, set()),
    ("^pineapple", U1, (), True, {"note-grocery"}),
    ("pineapple'); DROP TABLE resources; --", U1, (), True, set()),
    # Repeating a word adds nothing (the index is asked once per distinct word):
    ("pineapple " * 99, U1, (), True, {"note-grocery"}),
    ("Bread bread BREAD pineapple", U1, (), True, {"note-grocery"}),
    # Words as SQLite splits them, on both engines (Postgres' own parser would read
    # "pineapple-bread" as one hyphenated word):
    ("pineapple-bread", U1, (), True, {"note-grocery"}),
    # A mark belongs to its word: the word is found, and a row holding its letters in
    # other words is not (split at its marks, "हिन्दी" would be "ह न द", found in "दिन है").
    ("हिन्दी", U2, (), True, {"u2-hindi"}),
    ("भाषा हिन्दी", U2, (), True, {"u2-hindi"}),
    ("दिन", U2, (), True, {"u2-hindi-decoy"}),
    ("العَرَبِيَّة", U2, (), True, {"u2-arabic"}),
    ("العَرَبِيِّ", U2, (), True, {"u2-arabic-decoy"}),
    ("العربية", U2, (), True, set()),  # marks count, as diacritics do
    ("עִבְרִית", U2, (), True, {"u2-hebrew"}),
    ("עִבְרִי", U2, (), True, {"u2-hebrew-decoy"}),
    ("สวัสดี", U2, (), True, {"u2-thai"}),
    ("cafe\u0301", U2, (), True, {"u2-nfd"}),
    ("cafe", U2, (), True, {"u2-nfd-decoy"}),
    *(
        (word, U2, (), True, {"u2-symbols"})
        for word in (
            "smile",
            "face",
            "smile\U0001f642face",
            "icon\ue000name",
            "plane\U000f0001fifteen",
        )
    ),
    *((word, U2, (), True, set()) for word in ("icon", "name", "fifteen")),
    *((word, U2, (), True, {"u2-symbols"}) for word in ("warning", "first")),
    ("\u2764\ufe0f", U2, (), True, set()),  # no word: the emoji and its selector separate
    (LONG_WORD, U2, (), True, {"u2-symbols"}),
]


@pytest.mark.parametrize(("query", "owner", "teams", "personal", "expected"), SEARCHES)
async def test_search_matches_words_within_the_visibility_only(
    source: resources_pb2_grpc.ResourceSourceStub,
    query: str,
    owner: str,
    teams: tuple[str, ...],
    personal: bool,
    expected: set[str],
) -> None:
    await _check_search(source, query, owner, teams, personal, expected)


@pytest.mark.parametrize(("query", "owner", "teams", "personal", "expected"), SEARCHES)
async def test_search_on_a_c_locale_postgres_matches_the_same_rows(
    c_locale_instance: Instance,
    query: str,
    owner: str,
    teams: tuple[str, ...],
    personal: bool,
    expected: set[str],
) -> None:
    async with internal_channel_as(c_locale_instance.home, RESOURCES, GATEWAY) as channel:
        source = resources_pb2_grpc.ResourceSourceStub(channel)
        await _check_search(source, query, owner, teams, personal, expected)


async def _check_search(
    source: resources_pb2_grpc.ResourceSourceStub,
    query: str,
    owner: str,
    teams: tuple[str, ...],
    personal: bool,
    expected: set[str],
) -> None:
    reply = await source.SearchResources(
        resources_pb2.SearchResourcesRequest(
            resource="notes", query=query, visibility=vis(owner, teams, personal), limit=100
        ),
        timeout=10,
    )
    got = [i.id for i in reply.items]
    assert set(got) == expected, query
    assert len(got) == len(set(got))
    allowed = set(visible("notes", owner, teams, personal))
    assert set(got) <= allowed
    for row_id in got:
        row = BY_ID[row_id]
        assert words(query) <= words(row.title + " " + row.body)


async def test_search_is_capped_at_the_limit(
    source: resources_pb2_grpc.ResourceSourceStub,
) -> None:
    everyone = visible("tasks", U1, (T1, T2, T3), True)
    for limit in (1, 3, 5, len(everyone), 100):
        reply = await source.SearchResources(
            resources_pb2.SearchResourcesRequest(
                resource="tasks", query="lorem", visibility=vis(U1, (T1, T2, T3)), limit=limit
            ),
            timeout=10,
        )
        got = [i.id for i in reply.items]
        assert len(got) == min(limit, len(everyone))
        assert set(got) <= set(everyone)
        assert not reply.truncated  # short by the limit only: nothing was left out


@pytest.mark.parametrize(
    "query",
    [
        "",
        " ",
        "\t\n",
        "a" * 1001,
        "pine\x00apple",
        " ".join(f"w{i}" for i in range(33)),  # each distinct word is one index lookup
    ],
)
async def test_search_refuses_empty_or_unusable_text(
    source: resources_pb2_grpc.ResourceSourceStub, query: str
) -> None:
    err = await rpc_error(
        source.SearchResources(
            resources_pb2.SearchResourcesRequest(
                resource="notes", query=query, visibility=vis(U1), limit=5
            ),
            timeout=10,
        )
    )
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_QUERY")


# ---------------------------------------------------------------- import


def write_rows(tmp_path: Path, rows: Any, name: str = "rows.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(rows) if not isinstance(rows, str) else rows)
    return path


def good_row(row_id: str, **changes: Any) -> dict[str, Any]:
    row = {
        "id": row_id,
        "resource": "notes",
        "owner_user_id": U3,
        "team_id": None,
        "title": "fresh",
        "body": "kiwifruit salad",
    }
    row.update(changes)
    return row


async def get_u3(
    source: resources_pb2_grpc.ResourceSourceStub, row_id: str
) -> common_pb2.ResourceItem | RemoteError:
    try:
        reply = await source.GetResource(
            resources_pb2.GetResourceRequest(
                resource="notes", id=row_id, visibility=vis(U3, (T1,))
            ),
            timeout=10,
        )
    except grpc.aio.AioRpcError as err:
        return RemoteError.from_rpc_error(err)
    return reply.item


async def test_import_upserts_and_search_follows(
    instance: Instance, source: resources_pb2_grpc.ResourceSourceStub, tmp_path: Path
) -> None:
    first = write_rows(tmp_path, [good_row("u3-upsert", title="kiwifruit salad")], "a.json")
    code, doc, _ = await asyncio.to_thread(instance.cli, "resources", "import", str(first))
    assert (code, doc) == (0, {"imported": 1})
    second = write_rows(
        tmp_path,
        [good_row("u3-upsert", title="mango chutney", body="spicy", team_id=T1.upper())],
        "b.json",
    )
    code, doc, _ = await asyncio.to_thread(instance.cli, "resources", "import", str(second))
    assert (code, doc) == (0, {"imported": 1})
    item = await get_u3(source, "u3-upsert")
    assert isinstance(item, common_pb2.ResourceItem)
    assert (item.title, item.body, item.team_id) == ("mango chutney", "spicy", T1)

    async def search(text: str) -> list[str]:
        reply = await source.SearchResources(
            resources_pb2.SearchResourcesRequest(
                resource="notes", query=text, visibility=vis(U3, (T1,)), limit=10
            ),
            timeout=10,
        )
        return [i.id for i in reply.items]

    assert await search("mango") == ["u3-upsert"]
    assert await search("kiwifruit") == []


async def test_import_never_hands_a_row_to_another_owner_or_resource(
    instance: Instance, source: resources_pb2_grpc.ResourceSourceStub, tmp_path: Path
) -> None:
    """Two users' exports may both hold an id like task-1: the second import used to
    replace the first user's row, which then showed up as the other user's."""
    first = write_rows(tmp_path, [good_row("u3-shared-id", title="mine")], "mine.json")
    code, doc, _ = await asyncio.to_thread(instance.cli, "resources", "import", str(first))
    assert (code, doc) == (0, {"imported": 1})
    for changes in ({"owner_user_id": str(uuid.uuid4())}, {"resource": "tasks"}):
        clash = write_rows(
            tmp_path,
            [good_row("u3-other-fine", title="other"), good_row("u3-shared-id", **changes)],
            "clash.json",
        )
        code, doc, _ = await asyncio.to_thread(instance.cli, "resources", "import", str(clash))
        assert code == 1, doc
        assert doc["error"]["code"] == "INVALID_ITEMS"
        assert any(v.startswith("items[1].id: 'u3-shared-id'") for v in doc["error"]["violations"])
        # Nothing of that import was written, and the row is still the first owner's.
        assert isinstance(await get_u3(source, "u3-other-fine"), RemoteError)
        item = await get_u3(source, "u3-shared-id")
        assert isinstance(item, common_pb2.ResourceItem) and item.title == "mine"


async def test_import_of_many_rows_goes_in_batches(
    instance: Instance, source: resources_pb2_grpc.ResourceSourceStub, tmp_path: Path
) -> None:
    rows = [good_row(f"u3-bulk-{n:04d}", resource="memory") for n in range(1203)]
    path = write_rows(tmp_path, rows)
    code, doc, err = await asyncio.to_thread(instance.cli, "resources", "import", str(path))
    assert (code, doc) == (0, {"imported": 1203}), err
    got = await list_all(source, "memory", vis(U3), 10_000)
    assert got == sorted(r["id"] for r in rows)


async def test_rows_too_large_for_one_message_are_paged_not_refused(
    instance: Instance, source: resources_pb2_grpc.ResourceSourceStub, tmp_path: Path
) -> None:
    """60 rows of 90 KiB are 5.4 MB, over gRPC's 4 MiB message cap: the import goes in
    batches by size, a page of 100 comes back shorter (with a cursor) instead of failing,
    paging still returns every row once, and Search returns the rows that fit, saying that
    it left rows out."""
    owner = str(uuid.uuid4())
    body = "bulky " * 15_000
    rows = [
        good_row(f"big-{n:03d}", resource="tasks", owner_user_id=owner, body=body)
        for n in range(60)
    ]
    path = write_rows(tmp_path, rows)
    code, doc, err = await asyncio.to_thread(instance.cli, "resources", "import", str(path))
    assert (code, doc) == (0, {"imported": 60}), err
    first = await source.ListResources(
        resources_pb2.ListResourcesRequest(resource="tasks", visibility=vis(owner), limit=100),
        timeout=30,
    )
    assert 0 < len(first.items) < 60
    assert first.next_after_id == first.items[-1].id
    assert await list_all(source, "tasks", vis(owner), 100) == [r["id"] for r in rows]
    found = await source.SearchResources(
        resources_pb2.SearchResourcesRequest(
            resource="tasks", query="bulky", visibility=vis(owner), limit=100
        ),
        timeout=30,
    )
    ids = [i.id for i in found.items]
    assert 0 < len(ids) < 60 and len(set(ids)) == len(ids)
    assert found.truncated


async def test_import_lists_every_bad_row_and_imports_nothing(
    instance: Instance, source: resources_pb2_grpc.ResourceSourceStub, tmp_path: Path
) -> None:
    rows: list[Any] = [
        good_row("u3-good"),  # 0
        good_row("u3-bad-owner", owner_user_id="bob"),  # 1
        good_row("u3-bad-kind", resource="secrets"),  # 2
        good_row("bad id with spaces"),  # 3
        good_row("u3-long-title", title="t" * 1001),  # 4
        good_row("u3-big-body", body="b" * (100 * 1024 + 1)),  # 5
        good_row("u3-bad-team", team_id="team-1"),  # 6
        good_row("u3-good"),  # 7: duplicate id
        "not an object",  # 8
        good_row("u3-extra", colour="blue"),  # 9
        {k: v for k, v in good_row("u3-no-title").items() if k != "title"},  # 10
        good_row("u3-bad-time", updated_at="yesterday"),  # 11
        good_row("u3-naive-time", updated_at="2026-01-01T10:00:00"),  # 12
        good_row("u3-number-title", title=42),  # 13
        good_row("x" * 65),  # 14
        good_row("u3-nul", body="a\x00b"),  # 15
        good_row("u3-null-title", title=None, body=None),  # 16: only team_id may be null
        good_row("u3-personal", team_id=None),  # 17: fine
    ]
    path = write_rows(tmp_path, rows)
    code, doc, _ = await asyncio.to_thread(instance.cli, "resources", "import", str(path))
    assert code == 1
    error = doc["error"]
    assert error["code"] == "INVALID_ITEMS"
    violations = error["violations"]
    for expected in [
        "items[1].owner_user_id: not a UUID",
        "items[2].resource:",
        "items[3].id:",
        "items[4].title:",
        "items[5].body:",
        "items[6].team_id: not a UUID",
        "items[7].id: duplicate of items[0].id",
        "items[8]: not an object",
        "items[9].colour: unknown field",
        "items[10].title: missing",
        "items[11].updated_at:",
        "items[12].updated_at:",
        "items[13].title: not a string",
        "items[14].id:",
        "items[15].body:",
        "items[16].title: not a string (null)",
        "items[16].body: not a string (null)",
    ]:
        assert any(v.startswith(expected) for v in violations), (expected, violations)
    assert not any(v.startswith(("items[0]", "items[17]")) for v in violations)
    missing = await get_u3(source, "u3-good")
    assert isinstance(missing, RemoteError) and missing.code == grpc.StatusCode.NOT_FOUND


async def test_import_rpc_validates_every_row_itself(
    source: resources_pb2_grpc.ResourceSourceStub,
) -> None:
    """The service does not rely on the CLI: a direct call gets every problem back."""
    items = [
        common_pb2.ResourceItem(id="u3-rpc-ok", resource="notes", owner_user_id=U3),
        common_pb2.ResourceItem(id="u3-rpc-1", resource="notes", owner_user_id="nope"),
        common_pb2.ResourceItem(id="", resource="notes", owner_user_id=U3),
        common_pb2.ResourceItem(id="u3-rpc-3", resource="api_key", owner_user_id=U3),
        common_pb2.ResourceItem(id="u3-rpc-4", resource="notes", owner_user_id=U3, team_id="t"),
        common_pb2.ResourceItem(
            id="u3-rpc-5", resource="notes", owner_user_id=U3, body="é" * (60 * 1024)
        ),
    ]
    err = await rpc_error(
        source.ImportResources(resources_pb2.ImportResourcesRequest(items=items), timeout=10)
    )
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ITEMS")
    fields = [f for f, _ in err.violations]
    assert fields == [
        "items[1].owner_user_id",
        "items[2].id",
        "items[3].resource",
        "items[4].team_id",
        "items[5].body",  # 120 KiB of UTF-8 although 60 Ki characters
    ]
    assert isinstance(await get_u3(source, "u3-rpc-ok"), RemoteError)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        ('{"id": "x"}', "is not a JSON array"),
        ('"rows"', "is not a JSON array"),
    ],
)
def test_import_refuses_unusable_files(
    instance: Instance, tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "rows.json"
    if content is not None:
        path.write_text(content)
    code, doc, _ = instance.cli("resources", "import", str(path))
    assert code == 1
    assert doc["error"]["code"] == "INVALID_FILE"
    assert message in doc["error"]["message"]
    assert doc["error"]["remediation"]
    code, _, err = instance.cli("resources", "import", str(path), json_out=False)
    assert code == 1 and "INVALID_FILE" in err


def test_empty_file_imports_nothing(instance: Instance, tmp_path: Path) -> None:
    code, doc, _ = instance.cli("resources", "import", str(write_rows(tmp_path, [])))
    assert (code, doc) == (0, {"imported": 0})


async def test_sample_data_imports(
    instance: Instance, source: resources_pb2_grpc.ResourceSourceStub
) -> None:
    sample = json.loads(SAMPLE.read_text())
    code, doc, err = await asyncio.to_thread(instance.cli, "resources", "import", str(SAMPLE))
    assert (code, doc) == (0, {"imported": len(sample)}), err
    for owner in {r["owner_user_id"] for r in sample}:
        teams = sorted({r["team_id"] for r in sample if r["team_id"]})
        for kind in ("tasks", "notes", "memory", "credentials"):
            got = await list_all(source, kind, vis(owner, teams), 20)
            assert got == sorted(
                r["id"] for r in sample if r["owner_user_id"] == owner and r["resource"] == kind
            )


# ---------------------------------------------------------------- who may call


@pytest.mark.parametrize("caller", [ENROLLMENT, OPERATOR])
async def test_only_the_gateway_may_call(instance: Instance, caller: str) -> None:
    channel = internal_channel_as(instance.home, RESOURCES, caller)
    async with channel:
        stub = resources_pb2_grpc.ResourceSourceStub(channel)
        for call in (
            stub.ListResources(
                resources_pb2.ListResourcesRequest(resource="notes", visibility=vis(U1), limit=5),
                timeout=10,
            ),
            stub.GetResource(
                resources_pb2.GetResourceRequest(
                    resource="notes", id="note-grocery", visibility=vis(U1)
                ),
                timeout=10,
            ),
            stub.SearchResources(
                resources_pb2.SearchResourcesRequest(
                    resource="notes", query="pineapple", visibility=vis(U1), limit=5
                ),
                timeout=10,
            ),
            stub.ImportResources(
                resources_pb2.ImportResourcesRequest(
                    items=[common_pb2.ResourceItem(id="evil", resource="notes", owner_user_id=U1)]
                ),
                timeout=10,
            ),
        ):
            err = await rpc_error(call)
            assert (err.code, err.reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "CALLER_NOT_ALLOWED",
            )
