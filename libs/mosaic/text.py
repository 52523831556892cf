"""Rules for text that people and peers hand us: what counts as a control character, and
how a key from their JSON is named in an error.

One definition for every service and the CLI: the CLI shows control characters escaped,
and services refuse them in operator text they store (reasons), where a NUL would fail
on Postgres and be kept on SQLite, and an escape sequence would reach a terminal later.
"""

from __future__ import annotations

import json
import re
from typing import Final

__all__ = ["CONTROL_CHARACTERS", "MAX_KEY_IN_PATH", "control_character_problem", "key_path"]

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
