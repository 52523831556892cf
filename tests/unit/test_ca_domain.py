"""CA service rules: which CSRs are signed, and which issued certificates are handed out."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from ca_service.domain import (
    MAX_CSR_BYTES,
    CSRRejected,
    InvalidIssuanceRequest,
    IssuanceRequest,
    IssuedCertificateMismatch,
    build_issuance,
    validate_csr,
    verify_issued,
)
from mosaic.x509ext import GRANT_ID_OID, SUBJECT_USER_ID_OID, grant_extensions

GRANT = "0b8f6a4e-3c2d-4e1f-9a8b-7c6d5e4f3a2b"
SUBJECT = "5f0e9d8c-7b6a-4958-8473-6251403f2e1d"
PEER = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"
OTHER = "11111111-2222-4333-8444-555555555555"
MAX = timedelta(hours=24)
DEFAULT = timedelta(hours=12)


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa3072() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def _csr(
    key: Any,
    *,
    subject: list[x509.NameAttribute] | None = None,
    sans: Sequence[x509.GeneralName] | None = None,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(subject if subject is not None else [_cn("peer-a.example")])
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def _cn(value: str) -> x509.NameAttribute:
    return x509.NameAttribute(NameOID.COMMON_NAME, value)


def _rejected(pem: bytes | str) -> CSRRejected:
    with pytest.raises(CSRRejected) as info:
        validate_csr(pem)
    return info.value


# -- accepted CSRs -----------------------------------------------------------------------


def test_accepts_p256(p256: ec.EllipticCurvePrivateKey) -> None:
    csr = validate_csr(_csr(p256))
    assert csr.subject.rfc4514_string() == "CN=peer-a.example"


def test_accepts_p384() -> None:
    validate_csr(_csr(ec.generate_private_key(ec.SECP384R1())))


def test_accepts_rsa_3072(rsa3072: rsa.RSAPrivateKey) -> None:
    validate_csr(_csr(rsa3072))


def test_accepts_str_pem_and_dns_sans(p256: ec.EllipticCurvePrivateKey) -> None:
    sans = [x509.DNSName(f"host{i}.peer-a.example") for i in range(8)]
    validate_csr(_csr(p256, sans=sans).decode())


def test_ignores_other_requested_extensions_instead_of_rejecting(
    p256: ec.EllipticCurvePrivateKey,
) -> None:
    forged = [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        *[(ext, False) for ext in grant_extensions(OTHER, OTHER)],
    ]
    validate_csr(_csr(p256, extra=forged))


# -- rejected CSRs, one reason each --------------------------------------------------------


def test_rejects_too_large(p256: ec.EllipticCurvePrivateKey) -> None:
    padding = x509.UnrecognizedExtension(
        x509.ObjectIdentifier("1.3.6.1.4.1.99999.42"), b"\0" * 13000
    )
    pem = _csr(p256, extra=[(padding, False)])
    assert len(pem) > MAX_CSR_BYTES
    error = _rejected(pem)
    assert error.reason == "CSR_TOO_LARGE"
    assert str(MAX_CSR_BYTES) in str(error)


def test_rejects_too_large_garbage_before_parsing() -> None:
    assert _rejected(b"A" * (MAX_CSR_BYTES + 1)).reason == "CSR_TOO_LARGE"


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"garbage",
        "héllo",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_rejects_malformed(pem: bytes | str) -> None:
    error = _rejected(pem)
    assert error.reason == "CSR_MALFORMED"
    assert "PKCS#10" in str(error)


def _other_csr() -> bytes:
    return _csr(ec.generate_private_key(ec.SECP256R1()), subject=[_cn("peer-b.example")])


@pytest.mark.parametrize(
    "wrap",
    [
        lambda pem: pem + b"junk\x00\n<script>",
        lambda pem: pem + b"\x00",
        lambda pem: b"hello\n" + pem,
        lambda pem: pem + _other_csr(),
    ],
    ids=["trailing-junk", "trailing-nul", "leading-text", "two-blocks"],
)
def test_rejects_anything_but_one_csr_block(p256: ec.EllipticCurvePrivateKey, wrap: Any) -> None:
    """The parser reads the first block and ignores the rest; the CA signed such input."""
    error = _rejected(wrap(_csr(p256)))
    assert error.reason == "CSR_MALFORMED"
    assert "exactly one PEM" in str(error)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda pem: b"\n \t" + pem + b"\r\n\n  ",
        lambda pem: pem.replace(b"\n", b"\r\n"),
        lambda pem: pem.replace(b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"),
    ],
    ids=["whitespace-around", "crlf", "new-label"],
)
def test_accepts_one_csr_block_with_whitespace_around(
    p256: ec.EllipticCurvePrivateKey, wrap: Any
) -> None:
    validate_csr(wrap(_csr(p256)))


def test_rejects_a_certificate_sent_as_csr(p256: ec.EllipticCurvePrivateKey) -> None:
    now = datetime.now(UTC)
    name = x509.Name([_cn("peer-a")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(p256.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(p256, hashes.SHA256())
    )
    assert _rejected(cert.public_bytes(serialization.Encoding.PEM)).reason == "CSR_MALFORMED"


def test_rejects_bad_signature(p256: ec.EllipticCurvePrivateKey) -> None:
    der = x509.load_pem_x509_csr(_csr(p256)).public_bytes(serialization.Encoding.DER)
    # The last byte is inside the ECDSA signature's s integer: structure stays valid.
    tampered = der[:-1] + bytes([der[-1] ^ 0x01])
    csr = x509.load_der_x509_csr(tampered)
    error = _rejected(csr.public_bytes(serialization.Encoding.PEM))
    assert error.reason == "CSR_BAD_SIGNATURE"


def test_rejects_csr_signed_by_another_key(p256: ec.EllipticCurvePrivateKey) -> None:
    # Same subject and key, but the signature is one made by a different private key.
    genuine = x509.load_pem_x509_csr(_csr(p256))
    genuine_der = genuine.public_bytes(serialization.Encoding.DER)
    other = ec.generate_private_key(ec.SECP256R1())
    # ECDSA DER signatures vary in length by a byte or two; splice one of equal length.
    foreign_sig = next(
        sig
        for sig in (x509.load_pem_x509_csr(_csr(other)).signature for _ in range(200))
        if len(sig) == len(genuine.signature)
    )
    spliced = genuine_der.replace(genuine.signature, foreign_sig)
    pem = x509.load_der_x509_csr(spliced).public_bytes(serialization.Encoding.PEM)
    assert _rejected(pem).reason == "CSR_BAD_SIGNATURE"


@pytest.mark.parametrize(
    ("make_key", "says"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSA 2048"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "secp521r1"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
        (lambda: ed25519.Ed25519PrivateKey.generate(), "Ed25519"),
        (lambda: dsa.generate_private_key(key_size=2048), "DSA"),
    ],
)
def test_rejects_weak_or_unsupported_keys(make_key: Any, says: str) -> None:
    error = _rejected(_csr(make_key()))
    assert error.reason == "CSR_WEAK_KEY"
    assert says in str(error)
    assert "P-256" in str(error) and "3072" in str(error)


@pytest.mark.parametrize(
    "subject",
    [
        [_cn("Peer-A")],
        [_cn("peer_a")],
        [_cn("a" * 64)],
        [_cn("-peer")],
        [_cn(".peer")],
        [_cn("peer a")],
        [_cn("peer-a\n")],
        [_cn("pééer")],
        [_cn("peer-a"), _cn("peer-b")],
        [_cn("peer-a"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Mosaic")],
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Mosaic")],
        [],
    ],
)
def test_rejects_bad_subjects(p256: ec.EllipticCurvePrivateKey, subject: list) -> None:
    error = _rejected(_csr(p256, subject=subject))
    assert error.reason == "CSR_BAD_NAMES"


def test_accepts_longest_common_name(p256: ec.EllipticCurvePrivateKey) -> None:
    validate_csr(_csr(p256, subject=[_cn("a" * 63)]))


def test_rejects_two_cns_in_one_multivalued_rdn(p256: ec.EllipticCurvePrivateKey) -> None:
    subject = x509.Name([x509.RelativeDistinguishedName([_cn("peer-a"), _cn("peer-b")])])
    pem = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(p256, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    assert _rejected(pem).reason == "CSR_BAD_NAMES"


@pytest.mark.parametrize(
    ("san", "says"),
    [
        (x509.UniformResourceIdentifier("spiffe://peer-a/x"), "UniformResourceIdentifier"),
        (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), "IPAddress"),
        (x509.RFC822Name("admin@peer-a.example"), "RFC822Name"),
        (
            x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x01a"),
            "OtherName",
        ),
        (x509.DirectoryName(x509.Name([_cn("peer-a")])), "DirectoryName"),
    ],
)
def test_rejects_non_dns_sans(
    p256: ec.EllipticCurvePrivateKey, san: x509.GeneralName, says: str
) -> None:
    error = _rejected(_csr(p256, sans=[x509.DNSName("peer-a.example"), san]))
    assert error.reason == "CSR_BAD_NAMES"
    assert says in str(error) and "only DNS names" in str(error)


@pytest.mark.parametrize(
    "der",
    ["3002a300", "3004a5028000"],  # an x400Address, an ediPartyName
    ids=["x400Address", "ediPartyName"],
)
def test_rejects_sans_of_kinds_the_parser_does_not_know(
    p256: ec.EllipticCurvePrivateKey, der: str
) -> None:
    """cryptography raises a plain Exception for these; it used to escape as INTERNAL."""
    san = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, bytes.fromhex(der))
    error = _rejected(_csr(p256, extra=[(san, False)]))
    assert error.reason == "CSR_MALFORMED"


@pytest.mark.parametrize(
    "sans",
    [
        [x509.DNSName("Peer-A.example")],
        [x509.DNSName("*.peer-a.example")],
        [x509.DNSName("peer-a.example.")],
        [x509.DNSName("peer_a.example")],
        [x509.DNSName("-peer.example")],
        [x509.DNSName("peer-.example")],
        [x509.DNSName("a..example")],
        [x509.DNSName("a" * 64 + ".example")],
        [x509.DNSName(".".join(["a" * 63] * 4))],  # 255 characters
        [x509.DNSName(f"h{i}.example") for i in range(9)],
        [x509.DNSName("peer-a.example"), x509.DNSName("peer-a.example")],
    ],
)
def test_rejects_bad_dns_sans(p256: ec.EllipticCurvePrivateKey, sans: list) -> None:
    assert _rejected(_csr(p256, sans=sans)).reason == "CSR_BAD_NAMES"


def test_accepts_dns_name_of_253_characters(p256: ec.EllipticCurvePrivateKey) -> None:
    name = ".".join(["a" * 63] * 3 + ["a" * 61])
    assert len(name) == 253
    validate_csr(_csr(p256, sans=[x509.DNSName(name)]))


def test_rejection_messages_never_echo_keys(p256: ec.EllipticCurvePrivateKey) -> None:
    key_pem = p256.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert _rejected(key_pem).reason == "CSR_MALFORMED"
    assert "PRIVATE KEY" not in str(_rejected(key_pem))


# -- build_issuance ------------------------------------------------------------------------


def _build(csr_pem: bytes, **overrides: Any) -> IssuanceRequest:
    arguments: dict[str, Any] = {
        "grant_id": GRANT,
        "subject_user_id": SUBJECT,
        "peer_id": PEER,
        "lifetime_seconds": 3600,
    }
    arguments.update(overrides)
    return build_issuance(csr_pem, **arguments, max_lifetime=MAX, default_lifetime=DEFAULT)


def test_build_issuance_returns_a_validated_request(p256: ec.EllipticCurvePrivateKey) -> None:
    request = _build(_csr(p256))
    assert (request.grant_id, request.subject_user_id, request.peer_id) == (GRANT, SUBJECT, PEER)
    assert request.lifetime == timedelta(hours=1)
    assert request.csr.public_key() == p256.public_key()


def test_build_issuance_lowercases_identifiers(p256: ec.EllipticCurvePrivateKey) -> None:
    request = _build(
        _csr(p256), grant_id=GRANT.upper(), subject_user_id=SUBJECT.upper(), peer_id=PEER.upper()
    )
    assert (request.grant_id, request.subject_user_id, request.peer_id) == (GRANT, SUBJECT, PEER)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, DEFAULT),
        (1, timedelta(seconds=1)),
        (int(MAX.total_seconds()), MAX),
        (int(MAX.total_seconds()) + 1, MAX),
        (10**9, MAX),
        (2**63 - 1, MAX),  # the largest int64: timedelta would overflow
    ],
)
def test_lifetime_default_and_cap(
    p256: ec.EllipticCurvePrivateKey, seconds: int, expected: timedelta
) -> None:
    assert _build(_csr(p256), lifetime_seconds=seconds).lifetime == expected


def test_default_lifetime_above_max_is_capped(p256: ec.EllipticCurvePrivateKey) -> None:
    request = build_issuance(
        _csr(p256), GRANT, SUBJECT, PEER, 0, max_lifetime=MAX, default_lifetime=MAX * 2
    )
    assert request.lifetime == MAX


@pytest.mark.parametrize("seconds", [-1, -(10**9)])
def test_negative_lifetime_is_invalid(p256: ec.EllipticCurvePrivateKey, seconds: int) -> None:
    with pytest.raises(InvalidIssuanceRequest) as info:
        _build(_csr(p256), lifetime_seconds=seconds)
    assert info.value.reason == "INVALID_LIFETIME"


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("grant_id", "INVALID_GRANT_ID"),
        ("subject_user_id", "INVALID_SUBJECT_USER_ID"),
        ("peer_id", "INVALID_PEER_ID"),
    ],
)
@pytest.mark.parametrize(
    "value", ["", "nope", GRANT.replace("-", ""), "{" + GRANT + "}", GRANT + " ", GRANT[:-1]]
)
def test_invalid_uuids(
    p256: ec.EllipticCurvePrivateKey, field: str, reason: str, value: str
) -> None:
    with pytest.raises(InvalidIssuanceRequest) as info:
        _build(_csr(p256), **{field: value})
    assert info.value.reason == reason


def test_build_issuance_propagates_csr_rejection() -> None:
    with pytest.raises(CSRRejected) as info:
        _build(b"garbage")
    assert info.value.reason == "CSR_MALFORMED"


# -- verify_issued -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> tuple[x509.Name, ec.EllipticCurvePrivateKey]:
    return x509.Name([_cn("Test Intermediate")]), ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def request_(p256: ec.EllipticCurvePrivateKey) -> IssuanceRequest:
    csr = _csr(p256, sans=[x509.DNSName("peer-a.example"), x509.DNSName("alt.peer-a.example")])
    return build_issuance(
        csr, GRANT, SUBJECT, PEER, 3600, max_lifetime=MAX, default_lifetime=DEFAULT
    )


def _issue(
    request: IssuanceRequest,
    issuer: tuple[x509.Name, CertificateIssuerPrivateKeyTypes],
    *,
    grant_id: str | None = None,
    subject_user_id: str | None = None,
    drop: tuple[type[x509.ExtensionType] | x509.ObjectIdentifier, ...] = (),
    public_key: Any = None,
    ca: bool = False,
    eku: list[x509.ObjectIdentifier] | None = None,
    key_usage: x509.KeyUsage | None = None,
    cn: str | None = None,
    sans: list[x509.GeneralName] | None = None,
    lifetime: timedelta | None = None,
) -> x509.Certificate:
    """Build, by hand, what a backend might return; defaults make a correct certificate."""
    now = datetime.now(UTC)
    csr = request.csr
    key = public_key or csr.public_key()
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=ca, path_length=None), True),
        (
            key_usage
            or x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            True,
        ),
        (x509.ExtendedKeyUsage(eku or [ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        (
            x509.SubjectAlternativeName(
                sans if sans is not None else [x509.DNSName("peer-a.example")]
            ),
            False,
        ),
        *[
            (ext, False)
            for ext in grant_extensions(
                grant_id or request.grant_id, subject_user_id or request.subject_user_id
            )
        ],
    ]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([_cn(cn or "peer-a.example")]))
        .issuer_name(issuer[0])
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + (lifetime or request.lifetime))
    )
    for extension, critical in extensions:
        oid = extension.oid
        if any(d == oid or (isinstance(d, type) and isinstance(extension, d)) for d in drop):
            continue
        builder = builder.add_extension(extension, critical)
    return builder.sign(issuer[1], hashes.SHA256())


def _problems(cert: x509.Certificate, request: IssuanceRequest) -> str:
    with pytest.raises(IssuedCertificateMismatch) as info:
        verify_issued(cert, request)
    assert info.value.reason == "ISSUED_CERT_MISMATCH"
    assert "PRIVATE KEY" not in str(info.value)
    return str(info.value)


def test_verify_issued_accepts_a_correct_certificate(request_, issuer) -> None:
    verify_issued(_issue(request_, issuer), request_)


def test_verify_issued_accepts_missing_basic_constraints(request_, issuer) -> None:
    verify_issued(_issue(request_, issuer, drop=(x509.BasicConstraints,)), request_)


@pytest.mark.parametrize(
    ("oid", "what"), [(GRANT_ID_OID, "grant id"), (SUBJECT_USER_ID_OID, "subject user id")]
)
def test_verify_issued_catches_a_missing_oid(request_, issuer, oid, what) -> None:
    assert f"no {what} extension" in _problems(_issue(request_, issuer, drop=(oid,)), request_)


def test_verify_issued_catches_a_different_grant(request_, issuer) -> None:
    message = _problems(_issue(request_, issuer, grant_id=OTHER), request_)
    assert f"grant id is {OTHER}" in message and GRANT in message


def test_verify_issued_catches_a_different_subject(request_, issuer) -> None:
    message = _problems(_issue(request_, issuer, subject_user_id=OTHER), request_)
    assert f"subject user id is {OTHER}" in message


def test_verify_issued_catches_a_different_public_key(request_, issuer) -> None:
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    message = _problems(_issue(request_, issuer, public_key=other), request_)
    assert "public key is not the CSR's" in message
    assert "BEGIN" not in message


def test_verify_issued_catches_ca_true(request_, issuer) -> None:
    assert "CA:true" in _problems(_issue(request_, issuer, ca=True), request_)


def test_verify_issued_catches_missing_client_auth(request_, issuer) -> None:
    cert = _issue(request_, issuer, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert "lacks clientAuth" in _problems(cert, request_)


def test_verify_issued_catches_missing_eku(request_, issuer) -> None:
    cert = _issue(request_, issuer, drop=(x509.ExtendedKeyUsage,))
    assert "extended key usage is missing" in _problems(cert, request_)


def test_verify_issued_catches_missing_digital_signature(request_, issuer) -> None:
    usage = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    assert "digitalSignature" in _problems(_issue(request_, issuer, key_usage=usage), request_)


def test_verify_issued_catches_cert_sign_usage(request_, issuer) -> None:
    usage = x509.KeyUsage(True, False, False, False, False, True, False, False, False)
    assert "signing certificates" in _problems(_issue(request_, issuer, key_usage=usage), request_)


def test_verify_issued_catches_a_long_lifetime(request_, issuer) -> None:
    cert = _issue(request_, issuer, lifetime=request_.lifetime + timedelta(hours=1))
    assert "lifetime" in _problems(cert, request_)


def test_verify_issued_catches_a_different_common_name(request_, issuer) -> None:
    assert "common name" in _problems(_issue(request_, issuer, cn="someone-else"), request_)


@pytest.mark.parametrize(
    "san",
    [
        x509.DNSName("not-in-csr.example"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.UniformResourceIdentifier("spiffe://x"),
    ],
)
def test_verify_issued_catches_foreign_sans(request_, issuer, san) -> None:
    assert "subjectAltName" in _problems(_issue(request_, issuer, sans=[san]), request_)


def test_verify_issued_reports_every_problem(request_, issuer) -> None:
    cert = _issue(request_, issuer, grant_id=OTHER, ca=True, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(IssuedCertificateMismatch) as info:
        verify_issued(cert, request_)
    assert len(info.value.problems) == 3


def test_verify_issued_checks_against_the_request_not_the_csr_copy(request_, issuer) -> None:
    # A request for another grant must refuse a certificate made for this one.
    other_request = replace(request_, grant_id=OTHER)
    assert "grant id" in _problems(_issue(request_, issuer), other_request)
