"""mosaic.search's words, the gateway's and resource-service's view of a query: maximal runs
of letters, numbers, combining marks and private-use characters (Unicode categories L*,
N*, M*, Co), everything else separating them. The range data the module keeps is checked
against Python's Unicode tables both ways, and so is the data of migration
resources_0006, which splits rows the same way on SQLite and Postgres."""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Callable
from types import ModuleType

import pytest

from mosaic.search import WORD_RANGES, query_words
from tests.support.search_words import in_words, resources_migration


def _migration() -> ModuleType:
    return resources_migration("0006_search_marks.py")


_in_words = in_words


def _separates(code: int) -> bool:
    """Assigned, not in a word, and something text can hold (not a surrogate)."""
    return unicodedata.category(chr(code)) not in ("Cn", "Cs") and not _in_words(code)


def _codes(ranges: tuple[tuple[int, int], ...]) -> list[int]:
    assert all(low <= high for low, high in ranges)
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(ranges)), "not sorted and apart"
    return [code for low, high in ranges for code in range(low, high + 1)]


def _assert_exactly(listed: list[int], among: range, belongs: Callable[[int], bool]) -> None:
    """``listed`` holds only code points that belong, and every one of ``among`` that does."""
    listed_set = set(listed)
    assert [f"U+{c:04X}" for c in listed if not belongs(c)] == []
    assert [f"U+{c:04X}" for c in among if belongs(c) and c not in listed_set] == []


def test_the_word_ranges_are_exactly_letters_numbers_marks_and_private_use() -> None:
    _assert_exactly(_codes(WORD_RANGES), range(0x110000), _in_words)


def test_the_migration_keeps_the_same_word_ranges_and_every_other_assigned_character() -> None:
    migration = _migration()
    _assert_exactly(_codes(migration.WORD_RANGES), range(0x110000), _in_words)
    assert migration.SEPARATOR_RANGES[0][0] >= 0x80  # ASCII: unicode61's categories decide
    _assert_exactly(_codes(migration.SEPARATOR_RANGES), range(0x80, 0x110000), _separates)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),  # vowel signs and a virama
        ("cafe\u0301 au lait", ["cafe\u0301", "au", "lait"]),  # Latin typed in NFD
        ("שָׂפָה עִבְרִית", ["שָׂפָה", "עִבְרִית"]),  # Hebrew with points
        ("اللُّغَة العَرَبِيَّة", ["اللُّغَة", "العَرَبِيَّة"]),  # Arabic with harakat
        ("สวัสดี ภาษาไทย", ["สวัสดี", "ภาษาไทย"]),  # Thai vowel signs
        ("\u0301\u0301a", ["\u0301\u0301a"]),  # a word may begin with a mark
        ("smile\U0001f642face", ["smile", "face"]),  # an emoji separates
        # ... and so do the marks that make one: a variation selector, a keycap.
        (
            "\u26a0\ufe0fWarning a\u2764\ufe0fb 1\ufe0f\u20e3first",
            ["Warning", "a", "b", "1", "first"],
        ),
        # Private use (icon fonts' glyphs) belongs to the word, as in SQLite's default.
        ("icon\ue000name plane\U000f0001fifteen", ["icon\ue000name", "plane\U000f0001fifteen"]),
        ("snake_case, v1.2 x²", ["snake", "case", "v1", "2", "x²"]),
        ("Bread bread BREAD", ["Bread"]),
        (
            "straße STRASSE \u0391\u0392\u0393 \u03b1\u03b2\u03b3",
            ["straße", "STRASSE", "\u0391\u0392\u0393", "\u03b1\u03b2\u03b3"],
        ),
        ("'\\\" \t—«»", []),
    ],
)
def test_words_keep_their_marks_and_everything_else_separates(text: str, words: list[str]) -> None:
    assert query_words(text) == words
