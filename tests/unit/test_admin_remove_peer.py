"""`peer remove` on B: the certificates issued for the peer's grants are revoked at the CA
before the grants are deleted, since nothing can name them to the CA afterwards, and again
for every grant removed once they are (a redeem may have issued one in between).

grants-service and ca-service are fakes behind the generated stubs; what is checked is
the order of the calls, what is left when the CA does not answer, and a redeem placed
deterministically between the two passes (a real one would have to win a race)."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from federation_gateway.admin.grants import GrantsAdminMixin
from mosaic.errors import ServiceError
from mosaic.federation.v1 import ca_pb2, grants_pb2
from tests.support.federation_fakes import admin_gateway, rpc_error

PEER = str(uuid.uuid4())
GRANTS = [str(uuid.uuid4()), str(uuid.uuid4())]


class Backends:
    """grants-service with one inbound peer holding two grants; a CA that may be down and
    that records which grants' certificates it issued (``issued``) and revoked."""

    def __init__(self, *, ca_up: bool) -> None:
        self.ca_up = ca_up
        self.calls: list[str] = []
        self.removed = False
        self.issued: dict[str, str] = {}  # serial -> grant id
        self.revoked: set[str] = set()
        # Runs inside grants-service's RemovePeer, before the peer is deleted.
        self.during_removal: Any = None

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
            self.revoked |= {s for s, g in self.issued.items() if g == request.grant_id}
            return ca_pb2.RevokeCertificateResponse()
        if method == "RemovePeer":
            if self.during_removal is not None:
                self.during_removal()
            self.removed = True
            return grants_pb2.RemovePeerResponse(removed_grant_ids=GRANTS)
        raise AssertionError(method)


def _admin(backends: Backends) -> GrantsAdminMixin:
    return GrantsAdminMixin(admin_gateway(backends))


async def test_certificates_are_revoked_before_the_grants_are_deleted() -> None:
    backends = Backends(ca_up=True)
    await _admin(backends).RemovePeer(grants_pb2.RemovePeerRequest(id="a"), None)
    assert backends.calls == [
        "GetPeer",
        "ListGrants",
        "RevokeCertificate",
        "RevokeCertificate",
        "RemovePeer",
        "RevokeCertificate",
        "RevokeCertificate",
    ]


async def test_a_certificate_issued_while_the_peer_is_removed_is_revoked_too() -> None:
    """A redeem of the peer's pending grant that issues its certificate after the first
    revocation pass and activates the grant before grants-service deletes it: the
    certificate must not stay valid at the CA with no grant left to name it."""
    backends = Backends(ca_up=True)

    def redeem_issues_a_certificate() -> None:
        backends.issued["5e71a1"] = GRANTS[0]

    backends.during_removal = redeem_issues_a_certificate
    await _admin(backends).RemovePeer(grants_pb2.RemovePeerRequest(id="a"), None)

    assert backends.removed
    assert backends.revoked == {"5e71a1"}


async def test_the_ca_failing_after_the_removal_does_not_fail_it() -> None:
    """The peer and its grants are gone once grants-service answered: a CA that stops
    answering for the second pass is logged, not reported as a failed removal."""
    backends = Backends(ca_up=True)

    def ca_goes_down() -> None:
        backends.ca_up = False

    backends.during_removal = ca_goes_down
    reply = await _admin(backends).RemovePeer(grants_pb2.RemovePeerRequest(id="a"), None)

    assert list(reply.removed_grant_ids) == GRANTS


async def test_with_the_ca_down_nothing_is_removed_and_the_command_can_be_run_again() -> None:
    backends = Backends(ca_up=False)
    with pytest.raises(ServiceError) as refused:
        await _admin(backends).RemovePeer(grants_pb2.RemovePeerRequest(id="a"), None)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert "nothing was removed" in refused.value.message
    assert "peer suspend" in refused.value.remediation
    assert not backends.removed
