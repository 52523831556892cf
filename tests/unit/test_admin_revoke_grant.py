"""`grant revoke` of a grant revoked before: the gateway revokes its certificates at the CA
again (what a CA outage at the first revoke may have left undone). That retry is what
the operator runs to finish the job, so a CA that is still down must be said, not taken
for "revoked already, nothing to do".

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


class RevokedGrant:
    """A grant revoked already; a CA that may be down and records what it revoked."""

    def __init__(self, *, ca_up: bool) -> None:
        self.ca_up = ca_up
        self.revoked: list[str] = []

    def __call__(self, method: str, request: Any) -> Any:
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
