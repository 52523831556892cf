"""The separators Postgres' search column uses (migration resources_0005) hold no letter
and no digit, as mosaic.search defines words: a range that did would split words on
Postgres that SQLite and the query side keep whole."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

MIGRATION = (
    Path(__file__).resolve().parents[2]
    / "services/resource_service/migrations/versions/0005_search_separators.py"
)
_WORD_CHAR = re.compile(r"[^\W_]")  # mosaic.search's words: runs of these


def test_no_separator_is_part_of_a_word() -> None:
    spec = importlib.util.spec_from_file_location("resources_0005", MIGRATION)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    word_chars = [
        f"U+{code:04X}"
        for low, high in migration.SEPARATOR_RANGES
        for code in range(low, high + 1)
        if _WORD_CHAR.match(chr(code))
    ]
    assert word_chars == []
