"""UUIDv7 ids for append-only rows."""

from __future__ import annotations

import datetime as dt
import time
import uuid

from mosaic.ids import uuid7, uuid7_lower_bound


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


def test_uuid7_sorts_by_creation_within_a_millisecond() -> None:
    base = 1_795_400_000_123_000_000  # a whole millisecond, in ns
    steps = [0, 250, 500, 1_000, 250_000, 999_999]  # ns into the millisecond
    ids = [uuid7(base + step) for step in reversed(steps)]
    assert sorted(ids) == list(reversed(ids))
    assert {i.int >> 80 for i in ids} == {base // 1_000_000}
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)


def test_uuid7_is_unique_within_a_millisecond() -> None:
    ids = {uuid7(1_795_400_000_123_000_000) for _ in range(10_000)}
    assert len(ids) == 10_000


def test_lower_bound_is_below_every_later_id_and_above_every_earlier_one() -> None:
    when = dt.datetime(2026, 11, 23, 19, 0, 0, 123457, tzinfo=dt.UTC)
    at_ns = int(when.timestamp()) * 1_000_000_000 + 123_457_000
    bound = uuid7_lower_bound(when)
    assert bound.version == 7
    for _ in range(200):
        assert uuid7(at_ns) >= bound
        assert uuid7(at_ns + 250) > bound
        assert uuid7(at_ns - 250) < bound  # the previous quarter microsecond
        assert uuid7(at_ns - 1_000_000) < bound
    assert uuid7_lower_bound(dt.datetime(1960, 1, 1, tzinfo=dt.UTC)).int >> 80 == 0
