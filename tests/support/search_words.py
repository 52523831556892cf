"""mosaic.search's definition of a word character, written out from Unicode's categories
for the tests to check the module's data, the migrations' and the engines against."""

from __future__ import annotations

import importlib.util
import unicodedata
from pathlib import Path
from types import ModuleType

_VERSIONS = Path(__file__).resolve().parents[2] / "services/resource_service/migrations/versions"

# Marks that dress an emoji rather than a letter: variation selectors (U+FE0F makes "⚠"
# an emoji) and the keycap of "1️⃣". As marks they would glue the emoji to the next word.
EMOJI_MARKS = frozenset({*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), 0x20E3})


def in_words(code: int) -> bool:
    """Letters, numbers, combining marks and private use, but the emoji's marks."""
    category = unicodedata.category(chr(code))
    return (category[0] in "LNM" or category == "Co") and code not in EMOJI_MARKS


def resources_migration(filename: str) -> ModuleType:
    """A resource-service migration's module, loaded from its file (its name starts with a
    digit, so it cannot be imported), for its data."""
    spec = importlib.util.spec_from_file_location(
        filename.removesuffix(".py"), _VERSIONS / filename
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
