"""search: non-ASCII punctuation, symbols and spaces separate words on Postgres too

resources_0004 turned ``[[:punct:]]`` into spaces before Postgres' parser reads the text.
What that class holds depends on the database's locale: with ``LC_CTYPE=C`` (libc) it is
ASCII punctuation only, and Postgres' parser then counts every other non-ASCII character
as a letter, so "alpha—beta", "«gamma»" or "nu→xi" stayed one word and "beta" did not
find them, while SQLite's FTS5 did. With an ICU or UTF-8 locale, symbols (→, €) and
spaces (no-break space) still joined words.

The class now lists, whatever the locale, every non-ASCII code point that is not part of
a word by ``mosaic.search``'s definition (punctuation, symbols, spaces, controls and
format characters; tests/unit/test_search_separators.py checks the list). SQLite is
unchanged: its tokenizer already splits there (except on characters newer than its
Unicode 6.1 tables, such as most emoji, which it keeps inside a word).

Revision ID: resources_0005
Revises: resources_0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "resources_0005"
down_revision: str | None = "resources_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every code point from U+0080 on that separates words for mosaic.search (and for SQLite's
# tokenizer): punctuation, symbols, separators, controls and format characters, none of
# them a letter or a digit; generated once from Python 3.11's Unicode 14 tables and kept
# here as data, so that the migration stays what it was when databases ran it.
# tests/unit/test_search_separators.py checks it against those tables both ways.
_SEPARATOR_DATA = (
    "80-A9,AB-B1,B4,B6-B8,BB,BF,D7,F7,2C2-2C5,2D2-2DF,2E5-2EB,2ED,2EF-2FF,375,37E,384-385,"
    "387,3F6,482,55A-55F,589-58A,58D-58F,5BE,5C0,5C3,5C6,5F3-5F4,600-60F,61B-61F,66A-66D,"
    "6D4,6DD-6DE,6E9,6FD-6FE,700-70D,70F,7F6-7F9,7FE-7FF,830-83E,85E,888,890-891,8E2,"
    "964-965,970,9F2-9F3,9FA-9FB,9FD,A76,AF0-AF1,B70,BF3-BFA,C77,C7F,C84,D4F,D79,DF4,E3F,"
    "E4F,E5A-E5B,F01-F17,F1A-F1F,F34,F36,F38,F3A-F3D,F85,FBE-FC5,FC7-FCC,FCE-FDA,"
    "104A-104F,109E-109F,10FB,1360-1368,1390-1399,1400,166D-166E,1680,169B-169C,16EB-16ED,"
    "1735-1736,17D4-17D6,17D8-17DB,1800-180A,180E,1940,1944-1945,19DE-19FF,1A1E-1A1F,"
    "1AA0-1AA6,1AA8-1AAD,1B5A-1B6A,1B74-1B7E,1BFC-1BFF,1C3B-1C3F,1C7E-1C7F,1CC0-1CC7,1CD3,"
    "1FBD,1FBF-1FC1,1FCD-1FCF,1FDD-1FDF,1FED-1FEF,1FFD-1FFE,2000-2064,2066-206F,207A-207E,"
    "208A-208E,20A0-20C0,2100-2101,2103-2106,2108-2109,2114,2116-2118,211E-2123,2125,2127,"
    "2129,212E,213A-213B,2140-2144,214A-214D,214F,218A-218B,2190-2426,2440-244A,249C-24E9,"
    "2500-2775,2794-2B73,2B76-2B95,2B97-2BFF,2CE5-2CEA,2CF9-2CFC,2CFE-2CFF,2D70,2E00-2E2E,"
    "2E30-2E5D,2E80-2E99,2E9B-2EF3,2F00-2FD5,2FF0-2FFB,3000-3004,3008-3020,3030,3036-3037,"
    "303D-303F,309B-309C,30A0,30FB,3190-3191,3196-319F,31C0-31E3,3200-321E,322A-3247,3250,"
    "3260-327F,328A-32B0,32C0-33FF,4DC0-4DFF,A490-A4C6,A4FE-A4FF,A60D-A60F,A673,A67E,"
    "A6F2-A6F7,A700-A716,A720-A721,A789-A78A,A828-A82B,A836-A839,A874-A877,A8CE-A8CF,"
    "A8F8-A8FA,A8FC,A92E-A92F,A95F,A9C1-A9CD,A9DE-A9DF,AA5C-AA5F,AA77-AA79,AADE-AADF,"
    "AAF0-AAF1,AB5B,AB6A-AB6B,ABEB,FB29,FBB2-FBC2,FD3E-FD4F,FDCF,FDFC-FDFF,FE10-FE19,"
    "FE30-FE52,FE54-FE66,FE68-FE6B,FEFF,FF01-FF0F,FF1A-FF20,FF3B-FF40,FF5B-FF65,FFE0-FFE6,"
    "FFE8-FFEE,FFF9-FFFD,10100-10102,10137-1013F,10179-10189,1018C-1018E,10190-1019C,"
    "101A0,101D0-101FC,1039F,103D0,1056F,10857,10877-10878,1091F,1093F,10A50-10A58,10A7F,"
    "10AC8,10AF0-10AF6,10B39-10B3F,10B99-10B9C,10EAD,10F55-10F59,10F86-10F89,11047-1104D,"
    "110BB-110C1,110CD,11140-11143,11174-11175,111C5-111C8,111CD,111DB,111DD-111DF,"
    "11238-1123D,112A9,1144B-1144F,1145A-1145B,1145D,114C6,115C1-115D7,11641-11643,"
    "11660-1166C,116B9,1173C-1173F,1183B,11944-11946,119E2,11A3F-11A46,11A9A-11A9C,"
    "11A9E-11AA2,11C41-11C45,11C70-11C71,11EF7-11EF8,11FD5-11FF1,11FFF,12470-12474,"
    "12FF1-12FF2,13430-13438,16A6E-16A6F,16AF5,16B37-16B3F,16B44-16B45,16E97-16E9A,16FE2,"
    "1BC9C,1BC9F-1BCA3,1CF50-1CFC3,1D000-1D0F5,1D100-1D126,1D129-1D164,1D16A-1D16C,"
    "1D173-1D17A,1D183-1D184,1D18C-1D1A9,1D1AE-1D1EA,1D200-1D241,1D245,1D300-1D356,1D6C1,"
    "1D6DB,1D6FB,1D715,1D735,1D74F,1D76F,1D789,1D7A9,1D7C3,1D800-1D9FF,1DA37-1DA3A,"
    "1DA6D-1DA74,1DA76-1DA83,1DA85-1DA8B,1E14F,1E2FF,1E95E-1E95F,1ECAC,1ECB0,1ED2E,"
    "1EEF0-1EEF1,1F000-1F02B,1F030-1F093,1F0A0-1F0AE,1F0B1-1F0BF,1F0C1-1F0CF,1F0D1-1F0F5,"
    "1F10D-1F1AD,1F1E6-1F202,1F210-1F23B,1F240-1F248,1F250-1F251,1F260-1F265,1F300-1F6D7,"
    "1F6DD-1F6EC,1F6F0-1F6FC,1F700-1F773,1F780-1F7D8,1F7E0-1F7EB,1F7F0,1F800-1F80B,"
    "1F810-1F847,1F850-1F859,1F860-1F887,1F890-1F8AD,1F8B0-1F8B1,1F900-1FA53,1FA60-1FA6D,"
    "1FA70-1FA74,1FA78-1FA7C,1FA80-1FA86,1FA90-1FAAC,1FAB0-1FABA,1FAC0-1FAC5,1FAD0-1FAD9,"
    "1FAE0-1FAE7,1FAF0-1FAF6,1FB00-1FB92,1FB94-1FBCA,E0001,E0020-E007F"
)
SEPARATOR_RANGES: tuple[tuple[int, int], ...] = tuple(
    (int(low, 16), int((high or low), 16))
    for low, _, high in (part.partition("-") for part in _SEPARATOR_DATA.split(","))
)


def _escape(code: int) -> str:
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _words_only(separators: str) -> str:
    return f"regexp_replace(title || ' ' || body, '[{separators}]+', ' ', 'g')"


_SEPARATORS = "[:punct:][:space:]" + "".join(
    _escape(low) if low == high else f"{_escape(low)}-{_escape(high)}"
    for low, high in SEPARATOR_RANGES
)


def _tsv(text: str) -> tuple[str, ...]:
    return (
        "DROP INDEX IF EXISTS ix_resources_search",
        "ALTER TABLE resources DROP COLUMN IF EXISTS search_tsv",
        "ALTER TABLE resources ADD COLUMN search_tsv tsvector "
        f"GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, {text})) STORED",
        "CREATE INDEX ix_resources_search ON resources USING gin (search_tsv)",
    )


def _postgres(statements: Sequence[str]) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite's FTS5 table splits there already
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    _postgres(_tsv(_words_only(_SEPARATORS)))


def downgrade() -> None:
    _postgres(_tsv(_words_only("[:punct:]")))
