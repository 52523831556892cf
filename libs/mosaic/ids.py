"""Identifiers for rows that are only ever appended (audit logs).

A random UUIDv4 primary key lands each insert on a random page of the key's B-tree, so
every commit dirties (and, in SQLite's WAL, rewrites) one page per row. A UUIDv7
(RFC 9562) starts with the Unix time: consecutive rows share the rightmost pages of the
index, and ids sort by creation time on both engines, so the primary key also serves
"newest first" reads (no separate time index to maintain on every insert).

The 12 ``rand_a`` bits carry the fraction of the millisecond (RFC 9562 section 6.2,
method 3), so ids made in one process sort by creation to about a quarter microsecond.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid

_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62
_RAND_B = (1 << 62) - 1
_NS_PER_MS = 1_000_000


def _uuid7_bits(ns: int, rand_b: int) -> uuid.UUID:
    millis, sub_ms = divmod(ns, _NS_PER_MS)
    fraction = (sub_ms << 12) // _NS_PER_MS  # 0..4095: the millisecond in 4096 steps
    return uuid.UUID(
        int=(millis & 0xFFFF_FFFF_FFFF) << 80
        | _VERSION_7
        | fraction << 64
        | _VARIANT_RFC
        | (rand_b & _RAND_B)
    )


def uuid7(now_ns: int | None = None) -> uuid.UUID:
    """48-bit Unix milliseconds, version 7, 12 bits of sub-millisecond time, 62 random
    bits (RFC 9562, sections 5.7 and 6.2)."""
    ns = time.time_ns() if now_ns is None else now_ns
    return _uuid7_bits(ns, int.from_bytes(os.urandom(8), "big"))


def uuid7_lower_bound(when: dt.datetime) -> uuid.UUID:
    """The smallest UUIDv7 made at or after ``when`` (aware): ``id >= bound`` selects every
    id made from that instant on, through the primary key's index."""
    delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    return _uuid7_bits(max(ns, 0), 0)
