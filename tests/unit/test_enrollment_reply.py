"""What A accepts from B's redeem answer (flow 3): A trusts the root it pinned from the
enrollment URL and nothing the answer adds."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca_service.backends.local import LocalCABackend, create_local_ca
from federation_gateway.admin.enrollment import CertificateRefused, _check_reply, verified_leaf
from mosaic.federation.v1 import enrollment_pb2
from mosaic.x509ext import certs_to_pem, load_pem_certificates

GRANT, SUBJECT = str(uuid.uuid4()), str(uuid.uuid4())


async def _issued(b: Any, key: ec.EllipticCurvePrivateKey) -> Any:
    """What B's local CA issues for ``key`` under GRANT and SUBJECT, for an hour."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a")]))
        .sign(key, hashes.SHA256())
    )
    return await LocalCABackend(
        b.root_certificate, b.intermediate_certificate, b.intermediate_key
    ).sign(
        csr,
        grant_id=GRANT,
        subject_user_id=SUBJECT,
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
