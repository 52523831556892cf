"""resource-service rows as messages: the fast conversion must say what the slow one said."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Row, create_engine, insert, select

from resource_service.servicer import _items
from resource_service.store import READ_COLUMNS, metadata, resources

OWNER = uuid.UUID("11111111-1111-4111-8111-111111111111")
TEAM = uuid.UUID("22222222-2222-4222-8222-222222222222")


def _stored(*rows: tuple[dt.datetime, uuid.UUID | None]) -> Sequence[Row[Any]]:
    """The rows as the store reads them back (SQLite: stored through the table's types,
    read with the store's READ_COLUMNS)."""
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(resources),
            [
                {
                    "id": f"task-{n}",
                    "resource": "tasks",
                    "owner_user_id": OWNER,
                    "team_id": team,
                    "title": "t",
                    "body": "b",
                    "updated_at": when,
                }
                for n, (when, team) in enumerate(rows)
            ],
        )
        return list(conn.execute(select(*READ_COLUMNS).order_by(resources.c.id)))


@pytest.mark.parametrize(
    "when",
    [
        dt.datetime(2026, 11, 23, 15, 1, 2, 345678, tzinfo=dt.UTC),
        dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        dt.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=dt.UTC),  # before the epoch
        dt.datetime(1, 1, 1, tzinfo=dt.UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    ],
)
def test_timestamps_match_protobufs_own_conversion(when: dt.datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(when)
    (item,) = _items(_stored((when, TEAM)))
    assert item.updated_at == expected
    assert item.updated_at.ToDatetime(tzinfo=dt.UTC) == when


def test_uuids_are_canonical_text_and_a_personal_row_has_no_team() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    other = uuid.UUID("33333333-3333-4333-8333-333333333333")
    items = _items(_stored((now, TEAM), (now, None), (now, other), (now, TEAM)))
    assert [i.owner_user_id for i in items] == [str(OWNER)] * 4
    assert [i.team_id for i in items] == [str(TEAM), "", str(other), str(TEAM)]
