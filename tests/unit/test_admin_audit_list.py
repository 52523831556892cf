"""ListAudit --peer: the peer's rows and those of its grants that name no peer, or a
refusal when grants-service cannot say which grants are the peer's (never a list with
rows silently missing). Fake grants-service (federation_fakes); the audit log is a
stand-in that records what it was asked."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from federation_gateway.admin.query import QueryAdminMixin
from mosaic.errors import ServiceError
from mosaic.federation.v1 import gateway_pb2, grants_pb2
from tests.support.federation_fakes import admin_gateway, rpc_error

PEER = uuid.uuid4()
GRANTS = [uuid.uuid4(), uuid.uuid4()]


class AuditLog:
    def __init__(self) -> None:
        self.asked: dict[str, Any] = {}

    async def list(self, **kwargs: Any) -> list[dict[str, Any]]:
        self.asked = kwargs
        return []


def _servicer(grants_down: bool) -> tuple[QueryAdminMixin, AuditLog]:
    def backend(method: str, request: Any) -> Any:
        assert method == "ListGrants" and request.peer_id == str(PEER)
        if grants_down:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
        return grants_pb2.ListGrantsResponse(
            grants=[grants_pb2.Grant(id=str(g), peer_id=str(PEER)) for g in GRANTS]
        )

    gateway = admin_gateway(backend)
    gateway.audit = AuditLog()
    return QueryAdminMixin(gateway), gateway.audit


async def test_a_peers_list_includes_the_rows_of_its_grants() -> None:
    servicer, audit = _servicer(grants_down=False)
    await servicer.ListAudit(gateway_pb2.ListAuditRequest(peer_id=str(PEER)), None)
    assert audit.asked["peer_id"] == PEER and audit.asked["grant_ids"] == GRANTS


async def test_without_grants_service_a_peers_list_is_refused_not_incomplete() -> None:
    servicer, audit = _servicer(grants_down=True)
    with pytest.raises(ServiceError) as info:
        await servicer.ListAudit(gateway_pb2.ListAuditRequest(peer_id=str(PEER)), None)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.reason == "DEPENDENCY_UNAVAILABLE"
    assert "without --peer" in info.value.remediation
    assert audit.asked == {}
    # Without --peer nothing needs grants-service.
    await servicer.ListAudit(gateway_pb2.ListAuditRequest(), None)
    assert audit.asked["peer_id"] is None
