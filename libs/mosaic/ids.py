"""Identifiers for rows that are only ever appended (audit logs), and reading ids that
another service sent.

A random UUIDv4 primary key lands each insert on a random page of the key's B-tree, so
every commit dirties (and, in SQLite's WAL, rewrites) one page per row. A UUIDv7
(RFC 9562) starts with the Unix time in milliseconds: consecutive rows share the
rightmost pages of the index, and ids sort by creation time on both engines.
"""

from __future__ import annotations

import os
import time
import uuid

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62
_RAND_A = (1 << 12) - 1
_RAND_B = (1 << 62) - 1


def uuid7() -> uuid.UUID:
    """48-bit Unix milliseconds, version 7, 74 random bits (RFC 9562, section 5.7)."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (millis & 0xFFFF_FFFF_FFFF) << 80
        | _VERSION_7
        | ((rand >> 62) & _RAND_A) << 64
        | _VARIANT_RFC
        | (rand & _RAND_B)
    )
    return uuid.UUID(int=value)


def uuid_or_none(value: str | None) -> uuid.UUID | None:
    """``value`` as a UUID, or None when it is empty or not one (another service's answer
    is not trusted to be well formed)."""
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
