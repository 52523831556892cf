"""The gateway re-checks what resource-service returns (DESIGN.md: a real stack implements
ResourceSource, so its answers are input like any other): rows outside the scope are
dropped, and a page never holds more rows than the grant's cap, whatever the source sends."""

from __future__ import annotations

import uuid
from typing import Any

from mosaic.federation.v1 import common_pb2, gateway_pb2, resources_pb2
from tests.support.federation_fakes import SUBJECT, federation_servicer, grant_view

OTHER_USER = str(uuid.uuid4())


def _row(i: int, owner: str = SUBJECT) -> common_pb2.ResourceItem:
    return common_pb2.ResourceItem(
        id=f"task-{i:03d}", resource="tasks", owner_user_id=owner, title=f"t{i}", body="b"
    )


async def test_rows_outside_the_scope_from_the_source_are_dropped() -> None:
    rows = [_row(1), _row(2, owner=OTHER_USER), _row(3)]
    rows.append(common_pb2.ResourceItem(id="note-1", resource="notes", owner_user_id=SUBJECT))
    servicer = federation_servicer(
        lambda _name, _req: resources_pb2.ListResourcesResponse(items=rows)
    )
    page = await servicer._list(grant_view(10), gateway_pb2.ListRequest(resource="tasks"))
    assert [item.id for item in page.items] == ["task-001", "task-003"]
    assert page.next_page_token == ""


async def test_a_source_ignoring_the_limit_cannot_exceed_the_cap_or_skip_rows() -> None:
    """The source sends 25 rows for a page of 10: the peer gets 10, and the next page
    starts after the 10th, so no row is skipped."""
    asked: list[resources_pb2.ListResourcesRequest] = []

    def source(_name: str, request: resources_pb2.ListResourcesRequest) -> Any:
        asked.append(request)
        start = int(request.after_id.rsplit("-", 1)[1]) + 1 if request.after_id else 0
        return resources_pb2.ListResourcesResponse(items=[_row(i) for i in range(start, 25)])

    servicer = federation_servicer(source)
    view = grant_view(10)
    first = await servicer._list(view, gateway_pb2.ListRequest(resource="tasks", page_size=50))
    assert asked[0].limit == 10
    assert [item.id for item in first.items] == [f"task-{i:03d}" for i in range(10)]
    assert first.next_page_token
    second = await servicer._list(
        view, gateway_pb2.ListRequest(resource="tasks", page_token=first.next_page_token)
    )
    assert asked[1].after_id == "task-009"
    assert [item.id for item in second.items] == [f"task-{i:03d}" for i in range(10, 20)]
