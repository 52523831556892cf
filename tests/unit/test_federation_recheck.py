"""A read admitted before a revoke is not answered after it.

Reads wait for one of the gateway's few resource-service slots, behind every peer's
reads. Requests the gate admitted just before a revoke could wait there for seconds and
then be answered, with rows read after the revoke. The gate's state checks run again
before a read is answered. Driven through the whole gate (FederationServicer.List) with
a real GrantCache, RevokedSerials and LocalGcra, and a slow fake resource-service."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from federation_gateway import federation
from mosaic.errors import ServiceError
from mosaic.federation.v1 import ca_pb2, common_pb2, gateway_pb2, grants_pb2, resources_pb2
from tests.support.federation_fakes import (
    PeerContext,
    RecordingAudit,
    gated_servicer,
    grant_reply,
    known_identity,
)

SUBJECT = "11111111-1111-4111-8111-111111111111"
GRANT = "0e8f9f7a-54a4-4bd4-9d34-3c1c2f6f4b11"
PEER = "5a0c8f1e-2b7d-4c39-8f0e-9d2a6b1c3e44"
SERIAL = "aa01"
PEM = b"pem-aa01"


class Grants:
    """grants-service's GetGrant for one grant whose status the test changes."""

    def __init__(self) -> None:
        self.status = grants_pb2.GRANT_STATUS_ACTIVE

    async def GetGrant(self, request: Any, timeout: float) -> grants_pb2.GetGrantResponse:
        return grant_reply(
            grant_id=GRANT, peer_id=PEER, subject=SUBJECT, cert_serial=SERIAL, status=self.status
        )


@pytest.fixture(autouse=True)
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    known_identity(monkeypatch, serial=SERIAL, grant_id=GRANT, subject=SUBJECT)


async def test_reads_queued_before_a_revoke_are_refused_not_answered() -> None:
    release = asyncio.Event()
    reads = 0

    async def slow_source(_method: str, _request: Any) -> Any:
        nonlocal reads
        reads += 1
        await release.wait()
        return resources_pb2.ListResourcesResponse(
            items=[common_pb2.ResourceItem(id="t-1", resource="tasks", owner_user_id=SUBJECT)]
        )

    grants = Grants()
    audit = RecordingAudit()
    servicer = gated_servicer(slow_source, audit=audit, grants=grants, renew_limit=(1.0, 1))

    # Distinct page sizes: no two share a read; all are admitted, then wait on the source.
    calls = [
        asyncio.ensure_future(
            servicer.List(
                gateway_pb2.ListRequest(resource="tasks", page_size=size),
                PeerContext(PEM),
            )
        )
        for size in range(1, 9)
    ]
    while reads < federation.SOURCE_CONCURRENCY:
        await asyncio.sleep(0.01)
    # The revoke reaches the gateway: the grant's status, and its certificate's serial.
    grants.status = grants_pb2.GRANT_STATUS_REVOKED
    servicer._grants.invalidate(grant_ids=[GRANT], peer_ids=[PEER])
    servicer._revoked.apply(
        ca_pb2.WatchRevocationsResponse(revocations=[ca_pb2.Revocation(serial=SERIAL)])
    )
    release.set()
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert all(isinstance(r, ServiceError) for r in results), results
    assert {r.reason for r in results if isinstance(r, ServiceError)} == {"CERT_REVOKED"}
    assert {r.code for r in results if isinstance(r, ServiceError)} == {
        grpc.StatusCode.PERMISSION_DENIED
    }
    # Each refusal is audited as one, not as a served request.
    assert [(row.outcome, row.reason) for row in audit.rows] == [("denied", "CERT_REVOKED")] * 8
