"""Search text, as the gateway checks it and resource-service runs it.

A query is plain text, never syntax: its words are runs of letters and digits, as
SQLite FTS5's unicode61 tokenizer and Postgres' parser both split them, and a row
matches when it contains every word. Each distinct word costs the full-text index a
lookup, so a query may hold only so many.
"""

from __future__ import annotations

import re
from typing import Final

MAX_QUERY_CHARS: Final = 1000
MAX_QUERY_WORDS: Final = 32

_WORD: Final = re.compile(r"[^\W_]+")


def query_words(query: str) -> list[str]:
    """The distinct words of ``query`` (case-insensitively), in order of first use."""
    seen: dict[str, str] = {}
    for word in _WORD.findall(query):
        seen.setdefault(word.casefold(), word)
    return list(seen.values())


def query_problem(query: str) -> str | None:
    """What is wrong with ``query`` as search text, or None when it is fine."""
    if not query.strip():
        return "query is empty"
    if len(query) > MAX_QUERY_CHARS:
        return f"query is longer than {MAX_QUERY_CHARS} characters"
    if "\x00" in query:
        return "query contains a NUL character"
    words = len(query_words(query))
    if words > MAX_QUERY_WORDS:
        return f"query has {words} different words; at most {MAX_QUERY_WORDS}"
    return None
