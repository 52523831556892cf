"""The querying side (A) finishes what a peer gateway has already acted on, even when the
operator's call goes away (Ctrl-C, the CLI's deadline): an enrollment whose redeem B
answered stores the peer, a renewal B carried out stores the new certificate. Before,
both were dropped with the call, the token spent or the old certificate revoked on B."""

from __future__ import annotations

import asyncio
import secrets
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from federation_gateway.admin import enrollment as enrollment_admin
from federation_gateway.admin import renewal as renewal_admin
from federation_gateway.admin.enrollment import EnrollmentAdminMixin, _Accepted
from federation_gateway.admin.renewal import RenewalAdminMixin
from mosaic.enrollment_url import build_enrollment_url
from mosaic.federation.v1 import enrollment_pb2, gateway_pb2, grants_pb2
from tests.support.federation_fakes import FakeChannel, StoringGrants, admin_gateway, rpc_error


async def _cancel_while(started: asyncio.Event, call: Any) -> None:
    task = asyncio.ensure_future(call)
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _eventually(check: Any) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the work did not finish")


async def test_peer_add_cancelled_during_the_redeem_still_stores_the_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backends = StoringGrants()
    redeeming, answer = asyncio.Event(), asyncio.Event()

    async def fetch_pinned_root(target: Any) -> str:
        return "ROOT"

    async def redeem(self: Any, target: Any, root: Any, csr: Any, **_: Any) -> Any:
        redeeming.set()
        await answer.wait()
        return enrollment_pb2.RedeemResponse(federation_endpoint="127.0.0.1:7443")

    def accept(reply: Any, key: Any, root: Any, target: Any) -> _Accepted:
        return _Accepted("CHAIN", "BUNDLE", "grant", "subject", "5e71a1")

    monkeypatch.setattr(enrollment_admin, "fetch_pinned_root", fetch_pinned_root)
    monkeypatch.setattr(EnrollmentAdminMixin, "_redeem", redeem)
    monkeypatch.setattr(enrollment_admin, "_accept", accept)
    servicer = EnrollmentAdminMixin(admin_gateway(backends))
    url = build_enrollment_url("127.0.0.1", 7444, secrets.token_urlsafe(32), "0" * 64)
    request = gateway_pb2.AddPeerRequest(enrollment_url=url, name="b")

    await _cancel_while(redeeming, servicer.AddPeer(request, None))
    answer.set()  # B answers after our caller went away
    await _eventually(lambda: backends.stored == ["b"])


async def test_peer_renew_cancelled_during_the_call_still_stores_the_certificate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backends = StoringGrants()
    renewing, answer = asyncio.Event(), asyncio.Event()
    peer = grants_pb2.Peer(id="peer-1", name="b", cert_serial="01", ca_bundle_pem="BUNDLE")

    async def credentials(key: str) -> tuple[grants_pb2.Peer, str]:
        return peer, "KEY"

    async def renew(peer_id: str, csr_pem: str, **_: Any) -> gateway_pb2.RenewCertificateResponse:
        renewing.set()
        await answer.wait()
        return gateway_pb2.RenewCertificateResponse(serial="02")

    client = SimpleNamespace(credentials=credentials, renew=renew, flush=lambda _id: None)
    monkeypatch.setattr(renewal_admin, "_current_identity", lambda _peer: ("grant", "subject"))
    monkeypatch.setattr(
        renewal_admin, "_check_renewal", lambda *_: (SimpleNamespace(serial_number=2), [])
    )
    monkeypatch.setattr(renewal_admin, "certs_to_pem", lambda _certs: "CHAIN")
    servicer = RenewalAdminMixin(admin_gateway(backends, client))

    await _cancel_while(
        renewing,
        servicer.RenewPeer(gateway_pb2.RenewPeerRequest(id="b"), None),
    )
    answer.set()
    await _eventually(lambda: backends.stored == ["peer-1"])


async def test_a_redeem_without_the_ca_roots_leaves_the_token_unclaimed() -> None:
    """enrollment-service asks ca-service for its roots before it claims the token: with
    step-ca the peer needs that root to verify its chain, and refusing after the grant is
    active would spend the token for nothing."""
    from enrollment_service.servicer import EnrollmentServicer
    from mosaic.errors import ServiceError
    from mosaic.federation.v1 import ca_pb2_grpc, grants_pb2_grpc

    claims: list[Any] = []
    store = SimpleNamespace(claim=lambda *a, **kw: claims.append(a))

    def ca(method: str, request: Any) -> Any:
        assert method == "GetTrustBundle", method
        raise rpc_error(grpc.StatusCode.UNAVAILABLE)

    def grants(method: str, request: Any) -> Any:
        raise AssertionError(f"{method} called after the trust bundle failed")

    servicer = EnrollmentServicer(
        store,  # type: ignore[arg-type]
        grants_pb2_grpc.GrantsStub(FakeChannel(grants)),
        ca_pb2_grpc.CertificateAuthorityStub(FakeChannel(ca)),
    )
    request = enrollment_pb2.RedeemRequest(token=secrets.token_urlsafe(32), csr_pem="CSR")
    with pytest.raises(ServiceError) as caught:
        await servicer.Redeem(request, None)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "still unused" in (caught.value.remediation or "")
    assert claims == []
