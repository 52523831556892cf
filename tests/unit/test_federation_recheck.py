"""A read admitted before a revoke is not answered after it.

Reads wait for one of the gateway's few resource-service slots, behind every peer's
reads. Requests the gate admitted just before a revoke could wait there for seconds and
then be answered, with rows read after the revoke. The gate's state checks run again
before a read is answered. Driven through the whole gate (FederationServicer.List) with
a real GrantCache, RevokedSerials and LocalGcra, and a slow fake resource-service."""

from __future__ import annotations

import asyncio
import json
import uuid
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from federation_gateway import federation
from federation_gateway.authz import GrantCache
from federation_gateway.federation import CertIdentity, FederationServicer
from federation_gateway.ratelimit import LocalGcra
from federation_gateway.revocations import RevokedSerials
from federation_gateway.unfinished import UnfinishedWork
from mosaic.errors import ServiceError
from mosaic.federation.v1 import ca_pb2, common_pb2, gateway_pb2, grants_pb2, resources_pb2
from tests.support.federation_fakes import FakeChannel

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
        return grants_pb2.GetGrantResponse(
            grant=grants_pb2.Grant(
                id=GRANT,
                peer_id=PEER,
                subject_user_id=SUBJECT,
                status=self.status,
                scope_json=json.dumps({"resources": ["tasks"]}),
                cert_serial=SERIAL,
            ),
            peer=grants_pb2.Peer(
                id=PEER,
                direction=grants_pb2.PEER_DIRECTION_INBOUND,
                state=grants_pb2.PEER_STATE_ACTIVE,
            ),
        )


class Audit:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    async def record(self, row: Any) -> None:
        self.rows.append(row)

    def record_soon(self, row: Any) -> None:
        self.rows.append(row)


class Context:
    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [PEM]}

    def peer(self) -> str:
        return "ipv4:192.0.2.7:50000"


@pytest.fixture(autouse=True)
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    known = CertIdentity(
        serial=SERIAL,
        grant_id=GRANT,
        subject_user_id=SUBJECT,
        grant_uuid=uuid.UUID(GRANT),
        subject_uuid=uuid.UUID(SUBJECT),
    )
    monkeypatch.setattr(federation, "certificate_identity", lambda pem: known)


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

    channel = FakeChannel(slow_source)
    grants = Grants()
    revoked = RevokedSerials()
    revoked.apply(ca_pb2.WatchRevocationsResponse(snapshot=True))
    audit = Audit()
    gateway = SimpleNamespace(
        runtime=SimpleNamespace(
            channels=SimpleNamespace(get=lambda _name: channel),
            sealer=SimpleNamespace(derive_key=lambda _purpose: b"k" * 32),
            config=SimpleNamespace(rate_limit=SimpleNamespace(per_second=100.0, burst=100)),
        ),
        revoked=revoked,
        grant_cache=GrantCache(grants),  # type: ignore[arg-type]
        grant_limiter=LocalGcra(100.0, 100),
        renew_limiter=LocalGcra(1.0, 1),
        audit=audit,
        unfinished=UnfinishedWork(),
    )
    servicer = FederationServicer(gateway)  # type: ignore[arg-type]

    # Distinct page sizes: no two share a read; all are admitted, then wait on the source.
    calls = [
        asyncio.ensure_future(
            servicer.List(
                gateway_pb2.ListRequest(resource="tasks", page_size=size),
                Context(),
            )
        )
        for size in range(1, 9)
    ]
    while reads < federation.SOURCE_CONCURRENCY:
        await asyncio.sleep(0.01)
    # The revoke reaches the gateway: the grant's status, and its certificate's serial.
    grants.status = grants_pb2.GRANT_STATUS_REVOKED
    gateway.grant_cache.invalidate(grant_ids=[GRANT], peer_ids=[PEER])
    revoked.apply(ca_pb2.WatchRevocationsResponse(revocations=[ca_pb2.Revocation(serial=SERIAL)]))
    release.set()
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert all(isinstance(r, ServiceError) for r in results), results
    assert {r.reason for r in results if isinstance(r, ServiceError)} == {"CERT_REVOKED"}
    assert {r.code for r in results if isinstance(r, ServiceError)} == {
        grpc.StatusCode.PERMISSION_DENIED
    }
    # Each refusal is audited as one, not as a served request.
    assert [(row.outcome, row.reason) for row in audit.rows] == [("denied", "CERT_REVOKED")] * 8
