"""The querying side (A) when an answer is lost: a redeem whose outcome is not known is
repeated with the same key and CSR (the serving gateway answers a repeat again), and a
store at grants-service that timed out is read back before it is called a failure."""

from __future__ import annotations

import secrets
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from federation_gateway.admin import base as admin_base
from federation_gateway.admin import enrollment as enrollment_admin
from federation_gateway.admin import renewal as renewal_admin
from federation_gateway.admin.enrollment import NETWORK, EnrollmentAdminMixin, _Accepted
from federation_gateway.admin.renewal import RenewalAdminMixin
from federation_gateway.client import NETWORK as PEER_NETWORK
from federation_gateway.client import PeerError
from mosaic.enrollment_url import build_enrollment_url
from mosaic.errors import ServiceError, unavailable
from mosaic.federation.v1 import enrollment_pb2, gateway_pb2, grants_pb2
from tests.support.federation_fakes import admin_gateway, rpc_error

SERIAL = "5e71a1"


class Grants:
    """grants-service as A's admin servicer sees it; ``lose`` makes a store commit and
    then fail as if its answer were lost."""

    def __init__(self, *, lose: bool = False, read_back: bool = True) -> None:
        self.lose = lose
        self.read_back = read_back
        self.peers: dict[str, grants_pb2.Peer] = {}

    def __call__(self, method: str, request: Any) -> Any:
        if method == "GetPeer":
            if request.id in self.peers and self.read_back:
                return grants_pb2.GetPeerResponse(peer=self.peers[request.id])
            if not self.read_back and self.peers:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, "restarting")
            raise rpc_error(grpc.StatusCode.NOT_FOUND)
        if method == "ReserveOutboundPeer":
            return grants_pb2.ReserveOutboundPeerResponse(peer=grants_pb2.Peer(name=request.name))
        if method == "ReleaseOutboundPeer":
            return grants_pb2.ReleaseOutboundPeerResponse()
        if method == "RegisterOutboundPeer":
            self.peers[request.name] = grants_pb2.Peer(name=request.name, cert_serial=SERIAL)
            peer = self.peers[request.name]
            return self._answer(grants_pb2.RegisterOutboundPeerResponse(peer=peer))
        if method == "UpdateOutboundPeerCredentials":
            self.peers[request.peer_id] = grants_pb2.Peer(id=request.peer_id, cert_serial="5e02")
            peer = self.peers[request.peer_id]
            return self._answer(grants_pb2.UpdateOutboundPeerCredentialsResponse(peer=peer))
        raise AssertionError(f"unexpected call {method}")

    def _answer(self, reply: Any) -> Any:
        if self.lose:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        return reply


class Redeems:
    """B's answers to successive redeems, and the CSRs they came with."""

    def __init__(self, *answers: ServiceError | None) -> None:
        self.answers = list(answers)
        self.csrs: list[Any] = []

    async def __call__(self, target: Any, root: Any, csr: Any, **_: Any) -> Any:
        self.csrs.append(csr)
        answer = self.answers.pop(0)
        if answer is not None:
            raise answer
        return enrollment_pb2.RedeemResponse(federation_endpoint="127.0.0.1:7443")


@pytest.fixture
def enroll(monkeypatch: pytest.MonkeyPatch) -> Any:
    async def fetch_pinned_root(target: Any) -> str:
        return "ROOT"

    def accept(reply: Any, key: Any, root: Any, target: Any) -> _Accepted:
        return _Accepted("CHAIN", "BUNDLE", "grant", "subject", SERIAL)

    monkeypatch.setattr(enrollment_admin, "fetch_pinned_root", fetch_pinned_root)
    monkeypatch.setattr(enrollment_admin, "_accept", accept)
    monkeypatch.setattr(admin_base, "REPEAT_DELAYS_S", (0.0, 0.0, 0.0))

    async def run(redeems: Redeems, grants: Grants | None = None) -> str:
        monkeypatch.setattr(EnrollmentAdminMixin, "_redeem", redeems)
        servicer = EnrollmentAdminMixin(admin_gateway(grants or Grants()))
        url = build_enrollment_url("127.0.0.1", 7444, secrets.token_urlsafe(32), "0" * 64)
        try:
            reply = await servicer.AddPeer(
                gateway_pb2.AddPeerRequest(enrollment_url=url, name="b"), None
            )
        except ServiceError as exc:
            return f"{exc.code.name} {exc.reason}"
        return f"OK {reply.peer.name} {reply.peer.cert_serial}"

    return run


def _lost() -> ServiceError:
    return unavailable(NETWORK, "the enrollment call failed (DEADLINE_EXCEEDED)")


def _refused(code: grpc.StatusCode, reason: str) -> ServiceError:
    return ServiceError(code, reason, "enrollment token is not valid")


async def test_a_redeem_without_an_answer_is_repeated_with_the_same_csr(enroll: Any) -> None:
    redeems = Redeems(_lost(), None)

    assert await enroll(redeems) == f"OK b {SERIAL}"
    assert len(redeems.csrs) == 2 and redeems.csrs[0] is redeems.csrs[1]


async def test_our_own_earlier_attempt_still_holding_the_token_is_waited_for(
    enroll: Any,
) -> None:
    in_use = _refused(grpc.StatusCode.ABORTED, "TOKEN_IN_USE")
    redeems = Redeems(_lost(), in_use, None)

    assert await enroll(redeems) == f"OK b {SERIAL}"
    assert len(redeems.csrs) == 3


@pytest.mark.parametrize(
    ("refusal", "outcome"),
    [
        (_refused(grpc.StatusCode.ABORTED, "TOKEN_IN_USE"), "ABORTED TOKEN_IN_USE"),
        (
            _refused(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_ALREADY_USED"),
            "UNAUTHENTICATED TOKEN_ALREADY_USED",
        ),
        (
            ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "slow down"),
            "RESOURCE_EXHAUSTED RATE_LIMITED",
        ),
    ],
)
async def test_a_refusal_is_not_repeated(enroll: Any, refusal: ServiceError, outcome: str) -> None:
    redeems = Redeems(refusal, None)

    assert await enroll(redeems) == outcome
    assert len(redeems.csrs) == 1


async def test_repeats_are_bounded(enroll: Any) -> None:
    redeems = Redeems(_lost(), _lost(), _lost(), _lost(), None)

    assert await enroll(redeems) == "UNAVAILABLE NETWORK"
    assert len(redeems.csrs) == 4


async def test_a_peer_stored_whose_answer_was_lost_is_found_by_reading_it_back(
    enroll: Any,
) -> None:
    grants = Grants(lose=True)

    assert await enroll(Redeems(None), grants) == f"OK b {SERIAL}"


async def test_a_store_nobody_can_confirm_says_so(enroll: Any) -> None:
    grants = Grants(lose=True, read_back=False)

    assert await enroll(Redeems(None), grants) == "DEADLINE_EXCEEDED DEADLINE_EXCEEDED"


async def test_a_renewal_stored_whose_answer_was_lost_is_found_by_reading_it_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grants = Grants(lose=True)
    peer = grants_pb2.Peer(id="peer-1", name="b", cert_serial="01", ca_bundle_pem="BUNDLE")
    flushed: list[str] = []

    async def credentials(key: str) -> tuple[grants_pb2.Peer, str]:
        return peer, "KEY"

    async def renew(peer_id: str, csr_pem: str, **_: Any) -> gateway_pb2.RenewCertificateResponse:
        return gateway_pb2.RenewCertificateResponse(serial="5e02")

    client = SimpleNamespace(credentials=credentials, renew=renew, flush=flushed.append)
    monkeypatch.setattr(renewal_admin, "_current_identity", lambda _peer: ("grant", "subject"))
    monkeypatch.setattr(
        renewal_admin, "_check_renewal", lambda *_: (SimpleNamespace(serial_number=0x5E02), [])
    )
    monkeypatch.setattr(renewal_admin, "certs_to_pem", lambda _certs: "CHAIN")
    servicer = RenewalAdminMixin(admin_gateway(grants, client))

    reply = await servicer.RenewPeer(gateway_pb2.RenewPeerRequest(id="b"), None)

    assert (reply.peer.id, reply.peer.cert_serial) == ("peer-1", "5e02")
    assert flushed == ["peer-1"]  # the next query presents the new certificate


def _lost_renewal() -> PeerError:
    return PeerError(PEER_NETWORK, "the call to b failed (UNAVAILABLE)")


def _not_current() -> PeerError:
    return PeerError("FORBIDDEN", "refused", server_reason="CERT_NOT_CURRENT")


@pytest.mark.parametrize(
    ("answers", "outcome", "attempts"),
    [
        ([_lost_renewal(), None], "OK", 2),
        # Our first attempt was still running at B when the repeat came: B switched to its
        # certificate meanwhile, and the next repeat is answered with it.
        ([_lost_renewal(), _not_current(), None], "OK", 3),
        # A refusal is final, however the error reads (no earlier lost attempt).
        ([_not_current(), None], "FORBIDDEN", 1),
        ([PeerError("FORBIDDEN", "refused", server_reason="CERT_REVOKED"), None], "FORBIDDEN", 1),
        ([_lost_renewal(), PeerError("RATE_LIMITED", "slow down"), None], "RATE_LIMITED", 2),
    ],
)
async def test_a_renewal_without_an_answer_is_repeated_with_the_same_csr(
    monkeypatch: pytest.MonkeyPatch,
    answers: list[PeerError | None],
    outcome: str,
    attempts: int,
) -> None:
    grants = Grants()
    peer = grants_pb2.Peer(id="peer-1", name="b", cert_serial="01", ca_bundle_pem="BUNDLE")
    csrs: list[str] = []

    async def credentials(key: str) -> tuple[grants_pb2.Peer, str]:
        return peer, "KEY"

    async def renew(peer_id: str, csr_pem: str, **_: Any) -> gateway_pb2.RenewCertificateResponse:
        csrs.append(csr_pem)
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        return gateway_pb2.RenewCertificateResponse(serial="5e02", repeated=True)

    client = SimpleNamespace(credentials=credentials, renew=renew, flush=lambda _id: None)
    monkeypatch.setattr(admin_base, "REPEAT_DELAYS_S", (0.0, 0.0, 0.0))
    monkeypatch.setattr(renewal_admin, "_current_identity", lambda _peer: ("grant", "subject"))
    monkeypatch.setattr(
        renewal_admin, "_check_renewal", lambda *_: (SimpleNamespace(serial_number=0x5E02), [])
    )
    monkeypatch.setattr(renewal_admin, "certs_to_pem", lambda _certs: "CHAIN")
    servicer = RenewalAdminMixin(admin_gateway(grants, client))

    try:
        reply = await servicer.RenewPeer(gateway_pb2.RenewPeerRequest(id="b"), None)
        got = "OK" if reply.peer.cert_serial == "5e02" else reply.peer.cert_serial
    except ServiceError as exc:
        got = exc.reason

    assert got == outcome
    assert len(csrs) == attempts and len(set(csrs)) == 1
