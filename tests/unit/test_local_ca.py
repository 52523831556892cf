"""The embedded CA: real keys, real signatures, verified with cryptography's chain verifier."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca_service.backends.base import CABackend, CABackendMisconfigured, RevokeOutcome
from ca_service.backends.local import (
    LocalCABackend,
    LocalCAMaterial,
    create_local_ca,
    issue_server_certificate,
    load_unencrypted_private_key_pem,
    unencrypted_private_key_pem,
)
from ca_service.domain import build_issuance, validate_csr, verify_issued
from mosaic.x509ext import (
    GRANT_ID_OID,
    SUBJECT_USER_ID_OID,
    ChainError,
    grant_extensions,
    grant_identity,
    verify_chain,
)

GRANT = "0b8f6a4e-3c2d-4e1f-9a8b-7c6d5e4f3a2b"
SUBJECT = "5f0e9d8c-7b6a-4958-8473-6251403f2e1d"
PEER = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"
FORGED = "66666666-6666-4666-8666-666666666666"


@pytest.fixture(scope="module")
def material() -> LocalCAMaterial:
    return create_local_ca("gateway-b")


@pytest.fixture(scope="module")
def backend(material: LocalCAMaterial) -> LocalCABackend:
    return LocalCABackend(
        material.root_certificate, material.intermediate_certificate, material.intermediate_key
    )


@pytest.fixture(scope="module")
def peer_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _csr(
    key: ec.EllipticCurvePrivateKey,
    *,
    sans: list[str] | None = None,
    extra: list[tuple[x509.ExtensionType, bool]] | None = None,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-a.example")])
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), False
        )
    for extension, critical in extra or []:
        builder = builder.add_extension(extension, critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


async def _sign(
    backend: LocalCABackend, csr_pem: bytes, lifetime: timedelta = timedelta(hours=1)
) -> x509.Certificate:
    signed = await backend.sign(
        validate_csr(csr_pem),
        grant_id=GRANT,
        subject_user_id=SUBJECT,
        peer_id=PEER,
        lifetime=lifetime,
    )
    assert signed.chain == backend.intermediates()
    return signed.certificate


# -- CA material -----------------------------------------------------------------------


def test_root_and_intermediate_profile(material: LocalCAMaterial) -> None:
    root, intermediate = material.root_certificate, material.intermediate_certificate
    root_bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert root_bc.critical and root_bc.value.ca and root_bc.value.path_length == 1
    inter_bc = intermediate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert inter_bc.critical and inter_bc.value.ca and inter_bc.value.path_length == 0
    for cert in (root, intermediate):
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert isinstance(material.root_key.curve, ec.SECP384R1)
    assert isinstance(material.intermediate_key.curve, ec.SECP256R1)
    root_days = (root.not_valid_after_utc - root.not_valid_before_utc).days
    inter_days = (intermediate.not_valid_after_utc - intermediate.not_valid_before_utc).days
    assert 3649 <= root_days <= 3651 and 1824 <= inter_days <= 1826
    intermediate.verify_directly_issued_by(root)
    assert "gateway-b" in root.subject.rfc4514_string()


def test_material_repr_hides_keys(material: LocalCAMaterial) -> None:
    text = repr(material)
    assert "root_key" not in text and "intermediate_key" not in text
    assert "PRIVATE" not in text


@pytest.mark.parametrize("prefix", ["", "   ", "x" * 60])
def test_create_local_ca_refuses_bad_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError, match="common_name_prefix"):
        create_local_ca(prefix)


def test_unencrypted_key_pem_round_trip(material: LocalCAMaterial) -> None:
    pem = unencrypted_private_key_pem(material.intermediate_key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_unencrypted_private_key_pem(pem)
    assert loaded.private_numbers() == material.intermediate_key.private_numbers()


def test_loading_garbage_key_does_not_echo_it() -> None:
    secret = (
        b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(ValueError) as info:
        load_unencrypted_private_key_pem(secret)
    assert "c2VjcmV0" not in str(info.value) and info.value.__cause__ is None
    assert "unseal" in str(info.value)


def test_loading_refuses_a_non_ec_key() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="EC P-256 or P-384"):
        load_unencrypted_private_key_pem(pem)


def test_backend_refuses_mismatched_material(material: LocalCAMaterial) -> None:
    other = create_local_ca("other")
    with pytest.raises(CABackendMisconfigured, match="does not belong"):
        LocalCABackend(
            material.root_certificate, material.intermediate_certificate, other.intermediate_key
        )
    with pytest.raises(CABackendMisconfigured, match="not issued by the configured root"):
        LocalCABackend(
            other.root_certificate, material.intermediate_certificate, material.intermediate_key
        )


def test_backend_satisfies_the_protocol(backend: LocalCABackend, material: LocalCAMaterial) -> None:
    as_protocol: CABackend = backend
    assert as_protocol.name == "local"
    assert backend.trust_roots() == [material.root_certificate]
    assert backend.intermediates() == [material.intermediate_certificate]


# -- signing -----------------------------------------------------------------------------


async def test_signed_leaf_carries_the_grant_and_the_client_profile(
    backend: LocalCABackend, material: LocalCAMaterial, peer_key: ec.EllipticCurvePrivateKey
) -> None:
    before = datetime.now(UTC)
    leaf = await _sign(backend, _csr(peer_key), timedelta(minutes=30))

    raw = {ext.oid: ext for ext in leaf.extensions}
    assert raw[GRANT_ID_OID].value.value == b"\x0c\x24" + GRANT.encode()
    assert raw[SUBJECT_USER_ID_OID].value.value == b"\x0c\x24" + SUBJECT.encode()
    assert not raw[GRANT_ID_OID].critical and not raw[SUBJECT_USER_ID_OID].critical
    der = leaf.public_bytes(serialization.Encoding.DER)
    assert b"\x0c\x24" + GRANT.encode() in der

    identity = grant_identity(leaf)
    assert (identity.grant_id, identity.subject_user_id) == (GRANT, SUBJECT)

    verify_chain(leaf, backend.intermediates(), backend.trust_roots())

    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    assert leaf.subject.rfc4514_string() == "CN=gateway-a.example"
    assert leaf.issuer == material.intermediate_certificate.subject
    assert leaf.public_key() == peer_key.public_key()
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    assert 0 < leaf.serial_number < 1 << 159
    assert leaf.not_valid_before_utc <= before
    assert before + timedelta(minutes=29) < leaf.not_valid_after_utc
    assert leaf.not_valid_after_utc <= datetime.now(UTC) + timedelta(minutes=30)
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    inter_ski = material.intermediate_certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(peer_key.public_key())
    assert aki.key_identifier == inter_ski.digest


async def test_leaf_is_expired_after_its_lifetime(
    backend: LocalCABackend, peer_key: ec.EllipticCurvePrivateKey
) -> None:
    leaf = await _sign(backend, _csr(peer_key), timedelta(minutes=5))
    with pytest.raises(ChainError):
        verify_chain(
            leaf,
            backend.intermediates(),
            backend.trust_roots(),
            at=datetime.now(UTC) + timedelta(minutes=6),
        )


async def test_lifetime_is_cut_to_the_intermediate_expiry(
    backend: LocalCABackend, material: LocalCAMaterial, peer_key: ec.EllipticCurvePrivateKey
) -> None:
    leaf = await _sign(backend, _csr(peer_key), timedelta(days=5000))
    assert leaf.not_valid_after_utc == material.intermediate_certificate.not_valid_after_utc


async def test_dns_sans_are_copied(
    backend: LocalCABackend, peer_key: ec.EllipticCurvePrivateKey
) -> None:
    leaf = await _sign(backend, _csr(peer_key, sans=["gateway-a.example", "a.example"]))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gateway-a.example", "a.example"]
    verify_chain(leaf, backend.intermediates(), backend.trust_roots())


async def test_forged_csr_extensions_are_never_copied(
    backend: LocalCABackend, peer_key: ec.EllipticCurvePrivateKey
) -> None:
    forged = [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(True, False, False, False, False, True, True, False, False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        *[(ext, False) for ext in grant_extensions(FORGED, FORGED)],
    ]
    leaf = await _sign(backend, _csr(peer_key, extra=forged))

    identity = grant_identity(leaf)
    assert (identity.grant_id, identity.subject_user_id) == (GRANT, SUBJECT)
    assert FORGED.encode() not in leaf.public_bytes(serialization.Encoding.DER)
    assert [e.oid for e in leaf.extensions].count(GRANT_ID_OID) == 1
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert not usage.key_cert_sign and not usage.crl_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


async def test_verify_issued_passes_on_a_real_leaf(
    backend: LocalCABackend, peer_key: ec.EllipticCurvePrivateKey
) -> None:
    request = build_issuance(
        _csr(peer_key, sans=["gateway-a.example"]),
        GRANT,
        SUBJECT,
        PEER,
        600,
        max_lifetime=timedelta(hours=24),
        default_lifetime=timedelta(hours=12),
    )
    signed = await backend.sign(
        request.csr,
        grant_id=request.grant_id,
        subject_user_id=request.subject_user_id,
        peer_id=request.peer_id,
        lifetime=request.lifetime,
    )
    verify_issued(signed.certificate, request)


async def test_a_leaf_from_another_local_ca_does_not_chain_here(
    backend: LocalCABackend, peer_key: ec.EllipticCurvePrivateKey
) -> None:
    # Same names on purpose: only keys tell the two CAs apart.
    other = create_local_ca("gateway-b")
    other_backend = LocalCABackend(
        other.root_certificate, other.intermediate_certificate, other.intermediate_key
    )
    foreign = await _sign(other_backend, _csr(peer_key))
    verify_chain(foreign, other_backend.intermediates(), other_backend.trust_roots())
    with pytest.raises(ChainError, match="does not chain"):
        verify_chain(foreign, other_backend.intermediates(), backend.trust_roots())
    with pytest.raises(ChainError):
        verify_chain(foreign, backend.intermediates(), backend.trust_roots())


async def test_serials_are_random_and_distinct(
    backend: LocalCABackend, peer_key: ec.EllipticCurvePrivateKey
) -> None:
    csr = _csr(peer_key)
    serials = {(await _sign(backend, csr)).serial_number for _ in range(20)}
    assert len(serials) == 20


async def test_sign_refuses_a_non_positive_lifetime(
    backend: LocalCABackend, peer_key: ec.EllipticCurvePrivateKey
) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        await _sign(backend, _csr(peer_key), timedelta(0))


async def test_revoke_defers_to_the_ca_service_table(backend: LocalCABackend) -> None:
    assert await backend.revoke(12345, "key compromise") == RevokeOutcome(True, "")


# -- server certificates -------------------------------------------------------------------


def test_server_certificate_for_loopback(material: LocalCAMaterial) -> None:
    cert, key = issue_server_certificate(
        material.intermediate_certificate,
        material.intermediate_key,
        common_name="gateway-b",
        dns_names=["localhost", "gateway-b.example"],
        ip_addresses=["127.0.0.1", ipaddress.ip_address("::1")],
        lifetime=timedelta(days=90),
    )
    assert cert.public_key() == key.public_key()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "gateway-b.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]

    # What a peer pinning the root does during the TLS handshake.
    for subject in (
        verification.IPAddress(ipaddress.ip_address("127.0.0.1")),
        verification.DNSName("gateway-b.example"),
    ):
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store([material.root_certificate]))
            .build_server_verifier(subject)
        )
        verifier.verify(cert, [material.intermediate_certificate])
    # A server certificate is not a client certificate.
    with pytest.raises(ChainError):
        verify_chain(cert, [material.intermediate_certificate], [material.root_certificate])


def test_server_certificate_needs_a_name(material: LocalCAMaterial) -> None:
    with pytest.raises(ValueError, match="DNS name or IP address"):
        issue_server_certificate(
            material.intermediate_certificate,
            material.intermediate_key,
            common_name="gateway-b",
            dns_names=[],
            ip_addresses=[],
            lifetime=timedelta(days=1),
        )


def test_server_certificate_refuses_a_key_not_matching_the_issuer(
    material: LocalCAMaterial,
) -> None:
    with pytest.raises(CABackendMisconfigured):
        issue_server_certificate(
            material.intermediate_certificate,
            material.root_key,
            common_name="gateway-b",
            dns_names=["localhost"],
            ip_addresses=[],
            lifetime=timedelta(days=1),
        )
