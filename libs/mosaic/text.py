"""Rules for text that people and peers hand us: what counts as a control character.

One definition for every service and the CLI: the CLI shows these characters escaped,
and services refuse them in operator text they store (reasons), where a NUL would fail
on Postgres and be kept on SQLite, and an escape sequence would reach a terminal later.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["CONTROL_CHARACTERS", "control_character_problem"]

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
