"""What A accepts from B's redeem answer (flow 3) and from its renewal answer (flow 6): A
trusts the root it pinned from the enrollment URL and nothing the answer adds, and stores a
certificate only if it is for A's own key and carries the grant and subject it expects."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca_service.backends.local import LocalCABackend, create_local_ca
from federation_gateway.admin import enrollment as enrollment_admin
from federation_gateway.admin.enrollment import (
    CertificateRefused,
    EnrollmentAdminMixin,
    _check_reply,
    verified_leaf,
)
from federation_gateway.admin.renewal import RenewalAdminMixin
from mosaic.enrollment_url import build_enrollment_url
from mosaic.errors import ServiceError
from mosaic.federation.v1 import enrollment_pb2, gateway_pb2, grants_pb2
from mosaic.x509ext import certs_to_pem, load_pem_certificates, serial_hex
from tests.support.federation_fakes import StoringGrants, admin_gateway

GRANT, SUBJECT = str(uuid.uuid4()), str(uuid.uuid4())
PEM = serialization.Encoding.PEM


async def _issued(
    b: Any,
    key: ec.EllipticCurvePrivateKey | x509.CertificateSigningRequest,
    *,
    grant: str = GRANT,
    subject: str = SUBJECT,
) -> Any:
    """What B's local CA issues for ``key`` (or a CSR) under ``grant`` and ``subject``, for
    an hour."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a")]))
        .sign(key, hashes.SHA256())
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else key
    )
    return await LocalCABackend(
        b.root_certificate, b.intermediate_certificate, b.intermediate_key
    ).sign(
        csr,
        grant_id=grant,
        subject_user_id=subject,
        peer_id=str(uuid.uuid4()),
        lifetime=dt.timedelta(hours=1),
    )


async def test_only_the_pinned_root_is_stored_to_trust_the_serving_gateway() -> None:
    b = create_local_ca("gateway-b")
    other = create_local_ca("someone-else")  # a root B's answer lists besides its own
    key = ec.generate_private_key(ec.SECP256R1())
    signed = await _issued(b, key)
    pem = serialization.Encoding.PEM
    reply = enrollment_pb2.RedeemResponse(
        certificate_pem=signed.certificate.public_bytes(pem).decode(),
        chain_pem=[c.public_bytes(pem).decode() for c in signed.chain],
        ca_bundle_pem=certs_to_pem([b.root_certificate, other.root_certificate]),
        grant_id=GRANT,
        subject_user_id=SUBJECT,
        federation_endpoint="b.example:7443",
    )
    accepted = _check_reply(reply, key, b.root_certificate)
    assert load_pem_certificates(accepted.ca_bundle_pem) == [b.root_certificate]
    assert accepted.grant_id == GRANT


async def test_a_certificate_not_started_yet_by_our_slow_clock_is_still_ours() -> None:
    """B issued it a moment ago (and may already serve the grant with it): A's clock being
    behind B's must not make A refuse it, which would cost a new enrollment. An expired
    certificate is still refused."""
    b = create_local_ca("gateway-b")
    key = ec.generate_private_key(ec.SECP256R1())
    signed = await _issued(b, key)
    pem = serialization.Encoding.PEM
    leaf_pem = signed.certificate.public_bytes(pem).decode()
    chain = [c.public_bytes(pem).decode() for c in signed.chain]
    behind = signed.certificate.not_valid_before_utc - dt.timedelta(minutes=10)

    leaf, _ = verified_leaf(leaf_pem, chain, [b.root_certificate], now=behind)

    assert leaf == signed.certificate
    after_expiry = signed.certificate.not_valid_after_utc + dt.timedelta(seconds=1)
    with pytest.raises(CertificateRefused):
        verified_leaf(leaf_pem, chain, [b.root_certificate], now=after_expiry)


async def test_a_certificate_that_starts_far_ahead_of_our_clock_is_refused() -> None:
    """Clock skew is tolerated, not any start: a leaf valid only years from now (a hostile
    or misconfigured issuer) would be stored as current and never work."""
    b = create_local_ca("gateway-b")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start = now + dt.timedelta(days=5 * 365)
    issued = await _issued(b, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(issued.certificate.subject)
        .issuer_name(issued.certificate.issuer)
        .public_key(key.public_key())
        .serial_number(issued.certificate.serial_number)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(hours=1))
    )
    for extension in issued.certificate.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    future = builder.sign(b.intermediate_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    chain = [c.public_bytes(pem).decode() for c in issued.chain]

    with pytest.raises(CertificateRefused, match="more than 24 h after"):
        verified_leaf(future.public_bytes(pem).decode(), chain, [b.root_certificate], now=now)


def _pems(signed: Any) -> tuple[str, list[str]]:
    return signed.certificate.public_bytes(PEM).decode(), [
        c.public_bytes(PEM).decode() for c in signed.chain
    ]


async def _add_peer(monkeypatch: pytest.MonkeyPatch, answer: str) -> tuple[str, list[str]]:
    """A's `peer add` against B, whose redeem answer is ``answer``: its local CA's
    certificate for A's CSR ("as issued"), for another key, or as issued but reported
    with another grant or subject. What A's operator is told, and what A stored."""
    b = create_local_ca("gateway-b")

    async def fetch_pinned_root(target: Any) -> x509.Certificate:
        return b.root_certificate

    async def redeem(
        self: Any, target: Any, root: Any, csr: x509.CertificateSigningRequest, **_: Any
    ) -> enrollment_pb2.RedeemResponse:
        if answer == "another key":
            signed = await _issued(b, ec.generate_private_key(ec.SECP256R1()))
        else:
            signed = await _issued(b, csr)
        certificate_pem, chain_pem = _pems(signed)
        return enrollment_pb2.RedeemResponse(
            certificate_pem=certificate_pem,
            chain_pem=chain_pem,
            grant_id=str(uuid.uuid4()) if answer == "another grant reported" else GRANT,
            subject_user_id=str(uuid.uuid4()) if answer == "another subject reported" else SUBJECT,
            federation_endpoint="b.example:7443",
        )

    monkeypatch.setattr(enrollment_admin, "fetch_pinned_root", fetch_pinned_root)
    monkeypatch.setattr(EnrollmentAdminMixin, "_redeem", redeem)
    stored = StoringGrants()
    servicer = EnrollmentAdminMixin(admin_gateway(stored))
    url = build_enrollment_url("127.0.0.1", 7444, secrets.token_urlsafe(32), "0" * 64)
    try:
        await servicer.AddPeer(gateway_pb2.AddPeerRequest(enrollment_url=url, name="b"), None)
    except ServiceError as exc:
        return f"{exc.code.name} {exc.reason}", stored.stored
    return "OK", stored.stored


@pytest.mark.parametrize(
    ("answer", "outcome", "stores"),
    [
        ("as issued", "OK", ["b"]),
        # Stored, A would present a certificate whose key it does not hold (check_own_key).
        ("another key", "FAILED_PRECONDITION INVALID_RESPONSE", []),
        # B reports one grant and issued the certificate for another (the OID compare).
        ("another grant reported", "FAILED_PRECONDITION INVALID_RESPONSE", []),
        ("another subject reported", "FAILED_PRECONDITION INVALID_RESPONSE", []),
    ],
)
async def test_an_enrollment_answer_off_our_key_or_the_reported_grant_is_not_stored(
    monkeypatch: pytest.MonkeyPatch, answer: str, outcome: str, stores: list[str]
) -> None:
    assert await _add_peer(monkeypatch, answer) == (outcome, stores)


async def _renew_peer(grant: str, subject: str, *, our_key: bool = True) -> tuple[str, list[str]]:
    """A's `peer renew` of a peer whose current certificate carries GRANT and SUBJECT,
    B's local CA renewing it under ``grant`` and ``subject``, for A's new key (or, unless
    ``our_key``, for a key A does not hold). What A's operator is told, and what A stored
    or flushed."""
    b = create_local_ca("gateway-b")
    current = await _issued(b, ec.generate_private_key(ec.SECP256R1()))
    peer = grants_pb2.Peer(
        id="peer-1",
        name="b",
        cert_serial=serial_hex(current.certificate.serial_number),
        cert_pem=_pems(current)[0],
        ca_bundle_pem=certs_to_pem([b.root_certificate]),
    )
    done: list[str] = []

    async def credentials(key: str) -> tuple[grants_pb2.Peer, str]:
        return peer, "KEY"

    async def renew(peer_id: str, csr_pem: str, **_: Any) -> gateway_pb2.RenewCertificateResponse:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        key = csr if our_key else ec.generate_private_key(ec.SECP256R1())
        certificate_pem, chain_pem = _pems(await _issued(b, key, grant=grant, subject=subject))
        return gateway_pb2.RenewCertificateResponse(
            certificate_pem=certificate_pem, chain_pem=chain_pem
        )

    def flush(peer_id: str) -> None:
        done.append(f"flush {peer_id}")

    client = SimpleNamespace(credentials=credentials, renew=renew, flush=flush)
    stored = StoringGrants()
    servicer = RenewalAdminMixin(admin_gateway(stored, client))
    try:
        await servicer.RenewPeer(gateway_pb2.RenewPeerRequest(id="b"), None)
    except ServiceError as exc:
        return f"{exc.code.name} {exc.reason}", stored.stored + done
    return "OK", stored.stored + done


@pytest.mark.parametrize(
    ("renewed_for", "outcome", "stores"),
    [
        ("the same grant", "OK", ["peer-1", "flush peer-1"]),
        ("another grant", "FAILED_PRECONDITION INVALID_RESPONSE", []),
        ("another subject", "FAILED_PRECONDITION INVALID_RESPONSE", []),
        # Stored, A would present a certificate whose key it does not hold (check_own_key).
        ("another key", "FAILED_PRECONDITION INVALID_RESPONSE", []),
    ],
)
async def test_a_renewed_certificate_off_our_key_grant_or_subject_leaves_the_peer_as_it_was(
    renewed_for: str, outcome: str, stores: list[str]
) -> None:
    """The renewed certificate must carry the grant and subject of the one it replaces and
    be for A's new key (the checks in _check_renewal): otherwise A's stored credentials and
    channel stay."""
    grant = str(uuid.uuid4()) if renewed_for == "another grant" else GRANT
    subject = str(uuid.uuid4()) if renewed_for == "another subject" else SUBJECT

    our_key = renewed_for != "another key"
    assert await _renew_peer(grant, subject, our_key=our_key) == (outcome, stores)
