"""search: non-ASCII punctuation, symbols and spaces separate words on Postgres too

resources_0004 turned ``[[:punct:]]`` into spaces before Postgres' parser reads the text.
What that class holds depends on the database's locale: with ``LC_CTYPE=C`` (libc) it is
ASCII punctuation only, and Postgres' parser then counts every other non-ASCII character
as a letter, so "alpha—beta", "«gamma»" or "nu→xi" stayed one word and "beta" did not
find them, while SQLite's FTS5 did. With an ICU or UTF-8 locale, symbols (→, €) and
spaces (no-break space) still joined words.

The class now adds, whatever the locale, the Unicode blocks of punctuation, symbols and
spaces that hold no letter or digit (checked against ``mosaic.search``'s definition of a
word by tests/unit/test_search_separators.py). SQLite is unchanged: its tokenizer already
splits there (except on emoji newer than its Unicode 6.1 tables, which it keeps inside a
word).

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

# Inclusive code point ranges that separate words (none holds a letter or a digit).
SEPARATOR_RANGES: tuple[tuple[int, int], ...] = (
    (0x00A0, 0x00A9),  # Latin-1: no-break space, ¡ ¢ £ ¤ ¥ ¦ § ¨ ©
    (0x00AB, 0x00B1),  # « ¬ soft hyphen ® ¯ ° ±
    (0x00B4, 0x00B4),  # acute accent
    (0x00B6, 0x00B8),  # pilcrow, middle dot, cedilla
    (0x00BB, 0x00BB),  # »
    (0x00BF, 0x00BF),  # ¿
    (0x00D7, 0x00D7),  # multiplication sign
    (0x00F7, 0x00F7),  # ÷
    (0x2000, 0x206F),  # General Punctuation (spaces, dashes, quotes, …, invisible marks)
    (0x20A0, 0x20CF),  # Currency Symbols
    (0x2190, 0x23FF),  # Arrows, Mathematical Operators, Miscellaneous Technical
    (0x2500, 0x2775),  # Box Drawing … Dingbats, up to the circled digits
    (0x2794, 0x2BFF),  # the rest of Dingbats … Miscellaneous Symbols and Arrows
    (0x2E00, 0x2E2E),  # Supplemental Punctuation (without the vertical tilde, a letter)
    (0x2E30, 0x2E7F),
    (0x3000, 0x3004),  # CJK Symbols and Punctuation (without its letters and numerals)
    (0x3008, 0x3020),
    (0x3030, 0x3030),
    (0x303D, 0x303F),
    (0xFE10, 0xFE1F),  # Vertical Forms
    (0xFE30, 0xFE6F),  # CJK Compatibility Forms, Small Form Variants
    (0xFF01, 0xFF0F),  # Fullwidth punctuation and symbols
    (0xFF1A, 0xFF20),
    (0xFF3B, 0xFF40),
    (0xFF5B, 0xFF65),
    (0x1F300, 0x1FAFF),  # pictographs and emoji
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
