"""`peer remove` on B: the certificates issued for the peer's grants are revoked at the CA
before the grants are deleted, since nothing can name them to the CA afterwards.

grants-service and ca-service are fakes behind the generated stubs; what is checked is
the order of the calls and what is left when the CA does not answer."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from federation_gateway.admin.grants import GrantsAdminMixin
from mosaic.errors import ServiceError
from mosaic.federation.v1 import ca_pb2, grants_pb2
from tests.support.federation_fakes import FakeChannel, rpc_error

PEER = str(uuid.uuid4())
GRANTS = [str(uuid.uuid4()), str(uuid.uuid4())]


class Backends:
    """grants-service with one inbound peer holding two grants; a CA that may be down."""

    def __init__(self, *, ca_up: bool) -> None:
        self.ca_up = ca_up
        self.calls: list[str] = []
        self.removed = False

    def __call__(self, method: str, request: Any) -> Any:
        self.calls.append(method)
        if method == "GetPeer":
            return grants_pb2.GetPeerResponse(
                peer=grants_pb2.Peer(id=PEER, name="a", direction=grants_pb2.PEER_DIRECTION_INBOUND)
            )
        if method == "ListGrants":
            assert request.peer_id == PEER
            return grants_pb2.ListGrantsResponse(grants=[grants_pb2.Grant(id=g) for g in GRANTS])
        if method == "RevokeCertificate":
            if not self.ca_up:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, "ca-service is down")
            return ca_pb2.RevokeCertificateResponse()
        if method == "RemovePeer":
            self.removed = True
            return grants_pb2.RemovePeerResponse(removed_grant_ids=GRANTS)
        raise AssertionError(method)


def _admin(backends: Backends) -> GrantsAdminMixin:
    channel = FakeChannel(backends)
    runtime = SimpleNamespace(config=None, channels=SimpleNamespace(get=lambda _name: channel))
    return GrantsAdminMixin(SimpleNamespace(runtime=runtime))  # type: ignore[arg-type]


async def test_certificates_are_revoked_before_the_grants_are_deleted() -> None:
    backends = Backends(ca_up=True)
    await _admin(backends).RemovePeer(grants_pb2.RemovePeerRequest(id="a"), None)
    assert backends.calls == [
        "GetPeer",
        "ListGrants",
        "RevokeCertificate",
        "RevokeCertificate",
        "RemovePeer",
    ]


async def test_with_the_ca_down_nothing_is_removed_and_the_command_can_be_run_again() -> None:
    backends = Backends(ca_up=False)
    with pytest.raises(ServiceError) as refused:
        await _admin(backends).RemovePeer(grants_pb2.RemovePeerRequest(id="a"), None)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert "nothing was removed" in refused.value.message
    assert "peer suspend" in refused.value.remediation
    assert not backends.removed
