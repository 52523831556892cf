"""Rules for text that people and peers hand us: what counts as a control character, how
text is escaped for a terminal, and how a key from their JSON is named in an error.

One definition for every service and the CLI: the CLI shows control characters escaped,
and services refuse them in operator text they store (reasons), where a NUL would fail
on Postgres and be kept on SQLite, and an escape sequence would reach a terminal later.
The CLI escapes invisible format characters too (:func:`escape_unshown`).
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any, Final

__all__ = [
    "CONTROL_CHARACTERS",
    "MAX_KEY_IN_PATH",
    "control_character_problem",
    "enum_word",
    "escape_unshown",
    "key_path",
]

# C0 controls but tab and line feed, DEL, and C1 controls (0x9b is a one-byte CSI).
CONTROL_CHARACTERS: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def control_character_problem(text: str) -> str | None:
    """What is wrong with ``text`` if it holds a control character (tab and line feed
    allowed), naming the first one; else None."""
    found = CONTROL_CHARACTERS.search(text)
    if found is None:
        return None
    return (
        f"contains the control character U+{ord(found.group()):04X} at position "
        f"{found.start()}; use printable text (tab and line feed allowed)"
    )


# What a terminal obeys or hides instead of showing: control characters (Cc); format
# characters (Cf: bidi embeddings, overrides and isolates, which reorder the text around
# them as in "Trojan Source", zero-width spaces and joiners, the byte order mark, tag
# characters); line and paragraph separators (Zl, Zp); and lone surrogates (Cs), which
# no terminal encoding can carry.
_UNSHOWN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# Unicode's other default-ignorable code points, which are not in those categories but
# show as nothing too (and can carry hidden data after visible text): the combining
# grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian variation selectors,
# variation selectors (also those that pick an emoji's presentation, shown escaped here
# too) and the unassigned rest of the ignorable blocks.
_IGNORABLE: Final = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164\ufe00-\ufe0f\uffa0"
    "\ufff0-\ufff8\U000e0000-\U000e0fff]"
)
# Runs of characters that may be one of them: all but tab, line feed and printable ASCII.
_MAYBE_UNSHOWN: Final = re.compile(r"[^\t\n\x20-\x7e]+")
_MAYBE_UNSHOWN_IN_LINE: Final = re.compile(r"[^\x20-\x7e]+")


def escape_unshown(text: str, *, line: bool = False) -> str:
    """``text`` with each character a terminal would obey or not show (see above; tab and
    line feed kept, unless ``line``: text that must stay on one line, where a line feed
    could start a forged line of output) written as its Python escape: ESC as ``\\x1b``,
    U+202E RIGHT-TO-LEFT OVERRIDE as ``\\u202e``, U+E0041 TAG LATIN CAPITAL LETTER A as
    ``\\U000e0041``, a line feed as ``\\x0a``."""
    return (_MAYBE_UNSHOWN_IN_LINE if line else _MAYBE_UNSHOWN).sub(_escape_run, text)


def _escape_run(found: re.Match[str]) -> str:
    return "".join(
        _escape(ch)
        if unicodedata.category(ch) in _UNSHOWN_CATEGORIES or _IGNORABLE.match(ch)
        else ch
        for ch in found.group()
    )


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


_PLAIN_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Paths echo keys from the input; a huge key must not make a huge error message.
MAX_KEY_IN_PATH: Final = 64


def key_path(parent: str, key: str) -> str:
    """Where ``key`` of the object at ``parent`` is, for an error: ``parent.key`` for a
    short plain key, else ``parent["…"]`` JSON-quoted (dots, brackets, control characters
    and lone surrogates escaped) and cut to MAX_KEY_IN_PATH characters."""
    if len(key) <= MAX_KEY_IN_PATH and _PLAIN_KEY.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    shown = key if len(key) <= MAX_KEY_IN_PATH else key[:MAX_KEY_IN_PATH] + "..."
    return f"{parent}[{json.dumps(shown)}]"


def enum_word(value: int, enum: Any, prefix: str) -> str:
    """A protobuf enum value as an operator reads it: its name without ``prefix``, lower
    case; ``unknown (N)`` for a value this release does not know (a newer service, or a
    peer of a newer release, added it)."""
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return f"unknown ({value})"
