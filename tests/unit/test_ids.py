"""UUIDv7 ids for append-only rows."""

from __future__ import annotations

import time
import uuid

from mosaic.ids import uuid7


def test_uuid7_has_version_7_and_the_rfc_variant() -> None:
    value = uuid7()
    assert value.version == 7
    assert value.variant == uuid.RFC_4122


def test_uuid7_starts_with_the_unix_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= value.int >> 80 <= after


def test_uuid7_sorts_by_creation_across_milliseconds() -> None:
    ids = []
    for _ in range(5):
        ids.append(uuid7())
        time.sleep(0.002)
    assert sorted(ids) == ids
    assert sorted(i.hex for i in ids) == [i.hex for i in ids]  # as SQLite stores them


def test_uuid7_is_unique_within_a_millisecond() -> None:
    ids = {uuid7() for _ in range(10_000)}
    assert len(ids) == 10_000
