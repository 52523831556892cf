"""The gateway re-checks what resource-service returns (DESIGN.md: a real stack implements
ResourceSource, so its answers are input like any other): rows outside the scope are
dropped, and a page never holds more rows than the grant's cap, whatever the source sends;
a row Get may not show is answered like a missing one."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from federation_gateway.federation import FederationServicer
from mosaic.errors import ServiceError
from mosaic.federation.v1 import common_pb2, gateway_pb2, resources_pb2
from tests.support.federation_fakes import (
    GRANT_ID,
    SUBJECT,
    PeerContext,
    RecordingAudit,
    federation_servicer,
    gated_servicer,
    grant_reply,
    grant_view,
    known_identity,
    rpc_error,
)

OTHER_USER = str(uuid.uuid4())
T1 = str(uuid.uuid4())
T2 = str(uuid.uuid4())


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


# ---- through the whole gate, as the peer sees it ---------------------------------------


@pytest.fixture(autouse=True)
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    known_identity(monkeypatch, serial="01ab", grant_id=GRANT_ID, subject=SUBJECT)


def _gated(
    source: Callable[[str, Any], Any], *, max_rows: int = 100, filters: Any = None
) -> FederationServicer:
    """The gate in front of ``source`` (resource-service), under a grant on tasks."""

    def backend(method: str, request: Any) -> Any:
        if method == "GetGrant":
            return grant_reply(max_rows=max_rows, filters=filters)
        return source(method, request)

    return gated_servicer(backend, audit=RecordingAudit())


async def test_only_the_granted_teams_rows_reach_the_peer() -> None:
    """A grant on team T1's tasks only (personal rows off): whatever the source sends back
    (rows of T1, of another team T2, and personal rows, all the subject's), List and Search
    answer the T1 row alone."""
    rows = [
        common_pb2.ResourceItem(id="t1", resource="tasks", owner_user_id=SUBJECT, team_id=T1),
        common_pb2.ResourceItem(id="t2", resource="tasks", owner_user_id=SUBJECT, team_id=T2),
        common_pb2.ResourceItem(id="personal", resource="tasks", owner_user_id=SUBJECT),
    ]

    def source(method: str, _request: Any) -> Any:
        if method == "ListResources":
            return resources_pb2.ListResourcesResponse(items=rows)
        return resources_pb2.SearchResourcesResponse(items=rows)

    servicer = _gated(source, filters={"tasks": {"include_teams": [T1], "include_personal": False}})
    page = await servicer.List(gateway_pb2.ListRequest(resource="tasks"), PeerContext())
    found = await servicer.Search(
        gateway_pb2.SearchRequest(resource="tasks", query="report"), PeerContext()
    )
    assert [item.id for item in page.items] == ["t1"]
    assert [item.id for item in found.items] == ["t1"]


@pytest.mark.parametrize(
    ("limit", "max_rows"), [(10, 100), (50, 10)], ids=["asked-10", "grant-cap-10"]
)
async def test_a_source_ignoring_the_search_limit_cannot_exceed_it(
    limit: int, max_rows: int
) -> None:
    """The source sends 25 matches when 10 were asked for (by the peer, or by the grant's
    max_rows_per_query): the peer gets 10."""
    asked: list[int] = []

    def source(_method: str, request: resources_pb2.SearchResourcesRequest) -> Any:
        asked.append(request.limit)
        return resources_pb2.SearchResourcesResponse(items=[_row(i) for i in range(25)])

    servicer = _gated(source, max_rows=max_rows)
    found = await servicer.Search(
        gateway_pb2.SearchRequest(resource="tasks", query="report", limit=limit), PeerContext()
    )
    assert asked == [10]
    assert [item.id for item in found.items] == [f"task-{i:03d}" for i in range(10)]


async def _get_refusal(source: Callable[[str, Any], Any]) -> grpc.Status:
    servicer = _gated(source, filters={"tasks": {"include_teams": [T1]}})
    with pytest.raises(ServiceError) as refused:
        await servicer.Get(gateway_pb2.GetRequest(resource="tasks", id="task-001"), PeerContext())
    return refused.value.to_status()


@pytest.mark.parametrize(
    "row",
    [
        _row(1, owner=OTHER_USER),
        common_pb2.ResourceItem(id="task-001", resource="tasks", owner_user_id=SUBJECT, team_id=T2),
    ],
    ids=["another-owner", "ungranted-team"],
)
async def test_get_answers_a_row_outside_the_scope_exactly_as_a_missing_one(
    row: common_pb2.ResourceItem,
) -> None:
    """No existence oracle: a row the source returns but the scope does not show gets the
    very status (code, message, details) of a row the source does not have."""

    def missing(_method: str, _request: Any) -> Any:
        raise rpc_error(grpc.StatusCode.NOT_FOUND, "no such row")

    def invisible(_method: str, _request: Any) -> Any:
        return resources_pb2.GetResourceResponse(item=row)

    absent, hidden = await _get_refusal(missing), await _get_refusal(invisible)
    assert absent.code == grpc.StatusCode.NOT_FOUND
    assert "RESOURCE_NOT_FOUND" in str(absent.trailing_metadata)
    assert (hidden.code, hidden.details, hidden.trailing_metadata) == (
        absent.code,
        absent.details,
        absent.trailing_metadata,
    )
