"""The gateway re-checks what resource-service returns (DESIGN.md: a real stack implements
ResourceSource, so its answers are input like any other): rows outside the scope are
dropped, and a page never holds more rows than the grant's cap, whatever the source sends."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any

from federation_gateway.authz import GrantView, decide
from federation_gateway.federation import FederationServicer
from mosaic.federation.v1 import common_pb2, gateway_pb2, grants_pb2, resources_pb2

GRANT_ID = str(uuid.uuid4())
PEER_ID = str(uuid.uuid4())
SUBJECT = str(uuid.uuid4())
OTHER_USER = str(uuid.uuid4())


def _view(max_rows: int) -> GrantView:
    view = decide(
        grants_pb2.GetGrantResponse(
            grant=grants_pb2.Grant(
                id=GRANT_ID,
                peer_id=PEER_ID,
                subject_user_id=SUBJECT,
                status=grants_pb2.GRANT_STATUS_ACTIVE,
                scope_json=json.dumps({"resources": ["tasks"], "max_rows_per_query": max_rows}),
            ),
            peer=grants_pb2.Peer(
                id=PEER_ID,
                direction=grants_pb2.PEER_DIRECTION_INBOUND,
                state=grants_pb2.PEER_STATE_ACTIVE,
                cert_serial="01ab",
            ),
        )
    )
    assert isinstance(view, GrantView)
    return view


def _row(i: int, owner: str = SUBJECT) -> common_pb2.ResourceItem:
    return common_pb2.ResourceItem(
        id=f"task-{i:03d}", resource="tasks", owner_user_id=owner, title=f"t{i}", body="b"
    )


class _Method:
    """A unary multi-callable answering with whatever the test's source function returns."""

    def __init__(self, answer: Any) -> None:
        self._answer = answer

    async def __call__(self, request: Any, timeout: float | None = None) -> Any:
        return self._answer(request)


class _Channel:
    def __init__(self, source: Any) -> None:
        self._source = source

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _Method:
        name = method.rsplit("/", 1)[1]
        return _Method(lambda request: self._source(name, request))

    unary_stream = stream_unary = stream_stream = unary_unary


def _servicer(source: Any) -> FederationServicer:
    channel = _Channel(source)
    runtime = SimpleNamespace(
        channels=SimpleNamespace(get=lambda _name: channel),
        sealer=SimpleNamespace(derive_key=lambda _purpose: b"k" * 32),
        config=SimpleNamespace(rate_limit=SimpleNamespace(per_second=10.0, burst=20)),
    )
    gateway = SimpleNamespace(
        runtime=runtime, revoked=None, grant_cache=None, grant_limiter=None, audit=None
    )
    return FederationServicer(gateway)  # type: ignore[arg-type]


async def test_rows_outside_the_scope_from_the_source_are_dropped() -> None:
    rows = [_row(1), _row(2, owner=OTHER_USER), _row(3)]
    rows.append(common_pb2.ResourceItem(id="note-1", resource="notes", owner_user_id=SUBJECT))
    servicer = _servicer(lambda _name, _req: resources_pb2.ListResourcesResponse(items=rows))
    page = await servicer._list(_view(10), gateway_pb2.ListRequest(resource="tasks"))
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

    servicer = _servicer(source)
    view = _view(10)
    first = await servicer._list(view, gateway_pb2.ListRequest(resource="tasks", page_size=50))
    assert asked[0].limit == 10
    assert [item.id for item in first.items] == [f"task-{i:03d}" for i in range(10)]
    assert first.next_page_token
    second = await servicer._list(
        view, gateway_pb2.ListRequest(resource="tasks", page_token=first.next_page_token)
    )
    assert asked[1].after_id == "task-009"
    assert [item.id for item in second.items] == [f"task-{i:03d}" for i in range(10, 20)]
