"""`grant revoke` (and revoking a peer through the admin API) revokes the certificates at
the CA too. A CA that does not answer then is said, the grant or peer revoked all the
same, so the operator knows to run the revoke again. That retry revokes the certificates
at the CA again (what the outage left undone), so a CA that is still down must be said
too, not taken for "revoked already, nothing to do".

grants-service and ca-service are fakes behind the generated stubs."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from federation_gateway.admin.grants import GrantsAdminMixin
from mosaic.errors import ServiceError
from mosaic.federation.v1 import ca_pb2, grants_pb2
from tests.support.federation_fakes import admin_gateway, rpc_error, service_rpc_error

GRANT = str(uuid.uuid4())
PEER = str(uuid.uuid4())


class RevokedGrant:
    """A grant revoked already (or, ``fresh``, revoked by this call); a CA that may be down
    and records what it revoked."""

    def __init__(self, *, ca_up: bool, fresh: bool = False) -> None:
        self.ca_up = ca_up
        self.fresh = fresh
        self.revoked: list[str] = []
        self.peer_revoked = False

    def __call__(self, method: str, request: Any) -> Any:
        if method == "RevokeGrant" and self.fresh:
            return grants_pb2.RevokeGrantResponse(
                grant=grants_pb2.Grant(id=GRANT, status=grants_pb2.GRANT_STATUS_REVOKED)
            )
        if method == "SetPeerState":  # as grants-service: a revoked peer is final
            if self.peer_revoked:
                raise service_rpc_error(
                    ServiceError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "PEER_ALREADY_REVOKED",
                        "peer is revoked",
                        remediation="a revoked peer is final; remove it and enroll again",
                    )
                )
            self.peer_revoked = True
            return grants_pb2.SetPeerStateResponse(
                peer=grants_pb2.Peer(id=PEER, state=grants_pb2.PEER_STATE_REVOKED)
            )
        if method == "GetPeer":
            assert request.id == "a"
            return grants_pb2.GetPeerResponse(peer=grants_pb2.Peer(id=PEER, name="a"))
        if method == "ListGrants":
            assert request.peer_id == PEER
            return grants_pb2.ListGrantsResponse(grants=[grants_pb2.Grant(id=GRANT)])
        if method == "RevokeGrant":
            raise service_rpc_error(
                ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "GRANT_ALREADY_REVOKED",
                    "grant is revoked",
                    remediation="nothing to do: the grant is already revoked",
                )
            )
        if method == "RevokeCertificate":
            if not self.ca_up:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, "ca-service is down")
            self.revoked.append(request.grant_id)
            return ca_pb2.RevokeCertificateResponse()
        raise AssertionError(method)


def _admin(backend: RevokedGrant) -> GrantsAdminMixin:
    return GrantsAdminMixin(admin_gateway(backend))


async def test_revoking_again_revokes_the_certificates_and_says_revoked_already() -> None:
    backend = RevokedGrant(ca_up=True)
    with pytest.raises(ServiceError) as refused:
        await _admin(backend).RevokeGrant(grants_pb2.RevokeGrantRequest(id=GRANT), None)
    assert refused.value.reason == "GRANT_ALREADY_REVOKED"  # the CLI's "nothing to do"
    assert backend.revoked == [GRANT]


async def test_revoking_again_with_the_ca_down_says_the_certificates_are_not_revoked() -> None:
    backend = RevokedGrant(ca_up=False)
    with pytest.raises(ServiceError) as refused:
        await _admin(backend).RevokeGrant(grants_pb2.RevokeGrantRequest(id=GRANT), None)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert refused.value.reason == "DEPENDENCY_UNAVAILABLE"
    assert "did not revoke its certificates" in refused.value.message
    assert "grant revoke" in refused.value.remediation


async def test_a_revoke_revokes_the_certificates_at_the_ca() -> None:
    backend = RevokedGrant(ca_up=True, fresh=True)
    reply = await _admin(backend).RevokeGrant(grants_pb2.RevokeGrantRequest(id=GRANT), None)
    assert reply.grant.status == grants_pb2.GRANT_STATUS_REVOKED
    assert backend.revoked == [GRANT]


async def test_a_revoke_with_the_ca_down_says_the_grant_is_revoked_but_not_at_the_ca() -> None:
    """Not a success: the operator must learn that the certificates are still valid at the
    CA (step-ca's own revocation list, other relying parties) and run it again."""
    backend = RevokedGrant(ca_up=False, fresh=True)
    with pytest.raises(ServiceError) as refused:
        await _admin(backend).RevokeGrant(grants_pb2.RevokeGrantRequest(id=GRANT), None)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert refused.value.reason == "DEPENDENCY_UNAVAILABLE"
    assert "the grant is revoked, but" in refused.value.message
    assert "grant revoke" in refused.value.remediation


async def test_a_peer_revoke_with_the_ca_down_says_so_and_the_retry_finishes_it() -> None:
    backend = RevokedGrant(ca_up=False)
    revoke = grants_pb2.SetPeerStateRequest(id="a", state=grants_pb2.PEER_STATE_REVOKED)
    with pytest.raises(ServiceError) as refused:
        await _admin(backend).SetPeerState(revoke, None)
    assert refused.value.reason == "DEPENDENCY_UNAVAILABLE"
    assert "the peer is revoked, but" in refused.value.message
    assert backend.peer_revoked

    # The retry the remediation asks for: grants-service refuses it (revoked already),
    # but the certificates are revoked at the CA first, once it answers.
    with pytest.raises(ServiceError) as again:
        await _admin(backend).SetPeerState(revoke, None)
    assert again.value.reason == "DEPENDENCY_UNAVAILABLE"  # the CA still down: said again
    backend.ca_up = True
    with pytest.raises(ServiceError) as done:
        await _admin(backend).SetPeerState(revoke, None)
    assert done.value.reason == "PEER_ALREADY_REVOKED"
    assert backend.revoked == [GRANT]
