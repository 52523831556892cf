"""The separators Postgres' search column used (migration resources_0005), against
mosaic.search's definition of a word at the time (runs of ``[^\\W_]``; resources_0006 made
combining marks part of words): none of them is part of a word (else Postgres would
split words that SQLite and the query side keep whole), and every non-ASCII punctuation,
symbol, space, control and format character is among them (else a database whose
LC_CTYPE is C, where Postgres' parser counts every non-ASCII character as a letter,
would keep two words joined). The migration's data stays as databases ran it; so does
this check."""

from __future__ import annotations

import re
import unicodedata
from types import ModuleType

from tests.support.search_words import resources_migration

_WORD_CHAR = re.compile(r"[^\W_]")  # mosaic.search's words then: runs of these


def _migration() -> ModuleType:
    return resources_migration("0005_search_separators.py")


def _separates(code: int) -> bool:
    char = chr(code)
    category = unicodedata.category(char)
    return (category[0] in "PSZ" or category in ("Cc", "Cf")) and not _WORD_CHAR.match(char)


def test_the_separators_are_exactly_the_non_ascii_characters_between_words() -> None:
    ranges = _migration().SEPARATOR_RANGES
    listed = {code for low, high in ranges for code in range(low, high + 1)}

    assert sorted(f"U+{c:04X}" for c in listed if not _separates(c)) == []
    missing = [f"U+{c:04X}" for c in range(0x80, 0x110000) if _separates(c) and c not in listed]
    assert missing == []
    assert {0x30FB, 0x2122, 0x2116, 0x060C, 0x0964, 0x037E, 0xFEFF, 0x1680} <= listed
