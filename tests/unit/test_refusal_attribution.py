"""A request refused because a dependency is down still names its peer in the audit log,
once the gateway has seen the grant's peer (`audit list --peer` finds it). Driven through
the whole gate (FederationServicer.List) with a real GrantCache and RevokedSerials; fake
grants-service and resource-service (federation_fakes)."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from mosaic.errors import ServiceError
from mosaic.federation.v1 import ca_pb2, gateway_pb2, resources_pb2
from tests.support.federation_fakes import (
    GRANT_ID,
    PEER_ID,
    SUBJECT,
    PeerContext,
    RecordingAudit,
    gated_servicer,
    grant_reply,
    known_identity,
    rpc_error,
)

SERIAL = "01ab"


@pytest.fixture(autouse=True)
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    known_identity(monkeypatch, serial=SERIAL, grant_id=GRANT_ID, subject=SUBJECT)


class Backend:
    def __init__(self) -> None:
        self.grants_down = False

    def __call__(self, method: str, request: Any) -> Any:
        if method == "GetGrant":
            if self.grants_down:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, "grants-service down")
            return grant_reply(cert_serial=SERIAL)
        return resources_pb2.ListResourcesResponse()


async def _refusal(servicer: Any) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        await servicer.List(gateway_pb2.ListRequest(resource="tasks"), PeerContext())
    return info.value


async def test_refusals_during_an_outage_name_the_peer_once_it_is_known() -> None:
    backend, audit = Backend(), RecordingAudit()
    servicer = gated_servicer(backend, audit=audit)
    await servicer.List(gateway_pb2.ListRequest(resource="tasks"), PeerContext())
    peer = uuid.UUID(PEER_ID)

    servicer._revoked.lost()  # ca-service went away
    assert (await _refusal(servicer)).reason == "REVOCATIONS_NOT_LOADED"

    servicer._revoked.apply(ca_pb2.WatchRevocationsResponse(snapshot=True))
    backend.grants_down = True
    servicer._grants.clear()  # grants-service's change stream broke with it
    assert (await _refusal(servicer)).reason == "DEPENDENCY_UNAVAILABLE"

    assert [(r.reason, r.peer_id) for r in audit.rows] == [
        (None, peer),
        ("REVOCATIONS_NOT_LOADED", peer),
        ("DEPENDENCY_UNAVAILABLE", peer),
    ]


async def test_a_grant_never_seen_leaves_the_peer_to_the_grant_id() -> None:
    """Refused before grants-service ever answered for the grant: the row has no peer, only
    the grant id, which `audit list --peer` resolves through grants-service."""
    backend, audit = Backend(), RecordingAudit()
    backend.grants_down = True
    servicer = gated_servicer(backend, audit=audit)
    assert (await _refusal(servicer)).reason == "DEPENDENCY_UNAVAILABLE"
    assert [(r.peer_id, r.grant_id) for r in audit.rows] == [(None, uuid.UUID(GRANT_ID))]
