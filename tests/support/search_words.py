"""mosaic.search's definition of a word character, written out from Unicode's categories
for the tests to check the module's data, the migrations' and the engines against."""

from __future__ import annotations

import unicodedata

# Marks that dress an emoji rather than a letter: variation selectors (U+FE0F makes "⚠"
# an emoji) and the keycap of "1️⃣". As marks they would glue the emoji to the next word.
EMOJI_MARKS = frozenset({*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), 0x20E3})


def in_words(code: int) -> bool:
    """Letters, numbers, combining marks and private use, but the emoji's marks."""
    category = unicodedata.category(chr(code))
    return (category[0] in "LNM" or category == "Co") and code not in EMOJI_MARKS
