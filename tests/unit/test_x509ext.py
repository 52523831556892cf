"""Grant extensions and certificate helpers in mosaic.x509ext, against real certificates."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mosaic.x509ext import (
    GRANT_ID_OID,
    SUBJECT_USER_ID_OID,
    ChainError,
    GrantIdentity,
    InvalidGrantExtension,
    canonical_uuid,
    certs_to_pem,
    decode_uuid_utf8string,
    encode_uuid_utf8string,
    grant_extensions,
    grant_identity,
    load_pem_certificates,
    parse_serial_hex,
    serial_hex,
    sha256_fingerprint,
    verify_chain,
)

GRANT = "0b8f6a4e-3c2d-4e1f-9a8b-7c6d5e4f3a2b"
SUBJECT = "5f0e9d8c-7b6a-4958-8473-6251403f2e1d"
NOW = datetime.now(UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    extensions: list[tuple[x509.ExtensionType, bool]],
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
    cn: str = "peer-a",
    key: ec.EllipticCurvePrivateKey | None = None,
    not_after: datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (_name(cn), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=1))
        .not_valid_after(not_after or NOW + timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), False
        )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=1), True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    return builder.sign(signing_key, hashes.SHA256()), key


def _leaf_extensions() -> list[tuple[x509.ExtensionType, bool]]:
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(True, False, False, False, False, False, False, False, False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        *[(ext, False) for ext in grant_extensions(GRANT, SUBJECT)],
    ]


def _raw(oid: x509.ObjectIdentifier, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(oid, value)


# -- UTF8String encoding ---------------------------------------------------------------


def test_encode_is_exact_der_utf8string() -> None:
    assert encode_uuid_utf8string(GRANT) == b"\x0c\x24" + GRANT.encode("ascii")


def test_encode_lowercases_and_round_trips() -> None:
    der = encode_uuid_utf8string(GRANT.upper())
    assert der == b"\x0c\x24" + GRANT.encode("ascii")
    assert decode_uuid_utf8string(der) == GRANT


def test_round_trip_many_random_uuids() -> None:
    for _ in range(200):
        value = str(uuid.uuid4())
        assert decode_uuid_utf8string(encode_uuid_utf8string(value)) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not-a-uuid",
        GRANT.replace("-", ""),
        "{" + GRANT + "}",
        "urn:uuid:" + GRANT,
        GRANT + "\n",
        GRANT[:-1] + "g",
        " " + GRANT,
    ],
)
def test_encode_refuses_non_uuids(value: str) -> None:
    with pytest.raises(ValueError, match="not a UUID"):
        encode_uuid_utf8string(value)


def test_canonical_uuid_normalises_case_only() -> None:
    assert canonical_uuid(GRANT.upper()) == GRANT


@pytest.mark.parametrize(
    ("der", "message"),
    [
        (b"\x13\x24" + GRANT.encode(), "tag 0x0c"),  # PrintableString
        (b"\x16\x24" + GRANT.encode(), "tag 0x0c"),  # IA5String
        (b"\x04\x24" + GRANT.encode(), "tag 0x0c"),  # OCTET STRING
        (b"\x0c\x23" + GRANT.encode()[:35], "length byte"),
        (b"\x0c\x25" + GRANT.encode() + b"0", "length byte"),
        (b"\x0c\x81\x24" + GRANT.encode(), "length byte"),  # long-form length, not DER
        (b"\x0c\x24" + GRANT.encode() + b"\x00", "trailing"),
        (b"\x0c\x24" + GRANT.encode()[:35], "exactly 38"),
        (b"\x0c\x24" + GRANT.upper().encode(), "lowercase"),
        (b"\x0c\x24" + b"x" * 36, "lowercase canonical UUID"),
        (b"\x0c\x24" + GRANT.replace("-", "0").encode(), "lowercase canonical UUID"),
        (b"\x0c\x24" + b"\xc3\xa9" + GRANT.encode()[2:], "lowercase canonical UUID"),
        (b"", "tag 0x0c"),
        (b"\x0c", "tag 0x0c"),
    ],
)
def test_decode_refuses_anything_but_the_exact_encoding(der: bytes, message: str) -> None:
    with pytest.raises(InvalidGrantExtension, match=message):
        decode_uuid_utf8string(der)


def test_invalid_grant_extension_is_a_value_error() -> None:
    assert issubclass(InvalidGrantExtension, ValueError)


# -- grant_identity --------------------------------------------------------------------


def test_grant_identity_reads_both_extensions() -> None:
    cert, _ = _cert(_leaf_extensions())
    assert grant_identity(cert) == GrantIdentity(grant_id=GRANT, subject_user_id=SUBJECT)


def test_grant_extensions_are_unrecognized_extensions_with_raw_der() -> None:
    grant, subject = grant_extensions(GRANT, SUBJECT)
    assert (grant.oid, grant.value) == (GRANT_ID_OID, b"\x0c\x24" + GRANT.encode())
    assert (subject.oid, subject.value) == (SUBJECT_USER_ID_OID, b"\x0c\x24" + SUBJECT.encode())
    assert GRANT_ID_OID.dotted_string == "1.3.6.1.4.1.99999.1"
    assert SUBJECT_USER_ID_OID.dotted_string == "1.3.6.1.4.1.99999.2"


@pytest.mark.parametrize(
    ("oid", "what"), [(GRANT_ID_OID, "grant id"), (SUBJECT_USER_ID_OID, "subject user id")]
)
def test_grant_identity_refuses_a_missing_extension(oid: x509.ObjectIdentifier, what: str) -> None:
    extensions = [(e, c) for e, c in _leaf_extensions() if getattr(e, "oid", None) != oid]
    cert, _ = _cert(extensions)
    with pytest.raises(InvalidGrantExtension, match=f"no {what} extension"):
        grant_identity(cert)


def test_grant_identity_refuses_a_certificate_without_any_grant() -> None:
    cert, _ = _cert([])
    with pytest.raises(InvalidGrantExtension, match="not issued for a federation grant"):
        grant_identity(cert)


@pytest.mark.parametrize("oid", [GRANT_ID_OID, SUBJECT_USER_ID_OID])
def test_grant_identity_refuses_a_critical_extension(oid: x509.ObjectIdentifier) -> None:
    extensions = [(e, getattr(e, "oid", None) == oid or c) for e, c in _leaf_extensions()]
    cert, _ = _cert(extensions)
    with pytest.raises(InvalidGrantExtension, match="critical"):
        grant_identity(cert)


@pytest.mark.parametrize("oid", [GRANT_ID_OID, SUBJECT_USER_ID_OID])
def test_grant_identity_refuses_a_duplicated_extension(oid: x509.ObjectIdentifier) -> None:
    # CertificateBuilder refuses duplicates, so add the second copy under a placeholder
    # OID and patch the DER: the result is a certificate whose signature no longer
    # verifies, which does not matter to a parser-level check.
    placeholder = x509.ObjectIdentifier("1.3.6.1.4.1.99999.9")
    value = encode_uuid_utf8string(str(uuid.uuid4()))
    cert, _ = _cert([*_leaf_extensions(), (_raw(placeholder, value), False)])
    der = cert.public_bytes(serialization.Encoding.DER)
    placeholder_der = _oid_der(placeholder)
    assert der.count(placeholder_der) == 1
    patched = der.replace(placeholder_der, _oid_der(oid))
    duplicated = x509.load_der_x509_certificate(patched)
    with pytest.raises(InvalidGrantExtension, match="more than once"):
        grant_identity(duplicated)


def _oid_der(oid: x509.ObjectIdentifier) -> bytes:
    arcs = [int(a) for a in oid.dotted_string.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.insert(0, 0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(chunk)
    return bytes([0x06, len(body)]) + bytes(body)


@pytest.mark.parametrize(
    "value",
    [
        b"\x13\x24" + GRANT.encode(),
        b"\x0c\x24" + GRANT.upper().encode(),
        b"\x0c\x24" + GRANT.encode() + b"\x00",
        b"\x0c\x10" + b"0123456789abcdef",
        b"",
    ],
)
def test_grant_identity_refuses_a_malformed_value(value: bytes) -> None:
    extensions = [
        (_raw(GRANT_ID_OID, value), False) if getattr(e, "oid", None) == GRANT_ID_OID else (e, c)
        for e, c in _leaf_extensions()
    ]
    cert, _ = _cert(extensions)
    with pytest.raises(
        InvalidGrantExtension, match=r"grant id extension \(1\.3\.6\.1\.4\.1\.99999\.1\)"
    ):
        grant_identity(cert)


# -- fingerprints, serials, PEM ---------------------------------------------------------


def test_sha256_fingerprint_is_lowercase_hex_of_der() -> None:
    import hashlib

    cert, _ = _cert([])
    expected = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert sha256_fingerprint(cert) == expected
    assert len(expected) == 64 and expected == expected.lower()


@pytest.mark.parametrize(
    ("serial", "text"),
    [(1, "1"), (255, "ff"), (0xABCDEF, "abcdef"), ((1 << 159) - 1, "7" + "f" * 39)],
)
def test_serial_hex_round_trip(serial: int, text: str) -> None:
    assert serial_hex(serial) == text
    assert parse_serial_hex(text) == serial


def test_serial_hex_of_real_certificate_round_trips() -> None:
    cert, _ = _cert([])
    assert parse_serial_hex(serial_hex(cert.serial_number)) == cert.serial_number


@pytest.mark.parametrize("serial", [0, -1, 1 << 160, True])
def test_serial_hex_refuses_non_serials(serial: int) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        serial_hex(serial)


@pytest.mark.parametrize("text", ["", "0", "00", "ABCDEF", "0xab", "ab:cd", " ab", "g1", "1" * 41])
def test_parse_serial_hex_refuses_other_spellings(text: str) -> None:
    with pytest.raises(ValueError, match="serial"):
        parse_serial_hex(text)


def test_pem_bundle_round_trip_keeps_order() -> None:
    first, _ = _cert([], cn="first")
    second, _ = _cert([], cn="second")
    bundle = certs_to_pem([first, second])
    assert bundle.count("-----BEGIN CERTIFICATE-----") == 2
    assert load_pem_certificates(bundle) == [first, second]
    assert load_pem_certificates(bundle.encode()) == [first, second]


@pytest.mark.parametrize(
    "pem", ["", "garbage", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_load_pem_certificates_refuses_non_certificates(pem: str) -> None:
    with pytest.raises(ValueError, match="BEGIN CERTIFICATE"):
        load_pem_certificates(pem)


# -- verify_chain ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]]:
    root = _cert([], ca=True, cn="root")
    intermediate = _cert([], ca=True, cn="intermediate", issuer=root)
    leaf = _cert(_leaf_extensions(), issuer=intermediate)
    other_root = _cert([], ca=True, cn="root")
    return {"root": root, "intermediate": intermediate, "leaf": leaf, "other_root": other_root}


def test_verify_chain_accepts_a_client_leaf_without_san(pki: dict) -> None:
    verify_chain(pki["leaf"][0], [pki["intermediate"][0]], [pki["root"][0]])


def test_verify_chain_refuses_a_missing_intermediate(pki: dict) -> None:
    with pytest.raises(ChainError, match="does not chain"):
        verify_chain(pki["leaf"][0], [], [pki["root"][0]])


def test_verify_chain_refuses_another_root_with_the_same_name(pki: dict) -> None:
    with pytest.raises(ChainError):
        verify_chain(pki["leaf"][0], [pki["intermediate"][0]], [pki["other_root"][0]])


def test_verify_chain_refuses_an_expired_leaf(pki: dict) -> None:
    with pytest.raises(ChainError):
        verify_chain(
            pki["leaf"][0], [pki["intermediate"][0]], [pki["root"][0]], at=NOW + timedelta(days=2)
        )


def test_verify_chain_refuses_a_leaf_without_client_auth(pki: dict) -> None:
    extensions = [(e, c) for e, c in _leaf_extensions() if not isinstance(e, x509.ExtendedKeyUsage)]
    extensions.append((x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False))
    leaf, _ = _cert(extensions, issuer=pki["intermediate"])
    with pytest.raises(ChainError):
        verify_chain(leaf, [pki["intermediate"][0]], [pki["root"][0]])


def test_verify_chain_refuses_a_leaf_signed_by_a_non_ca(pki: dict) -> None:
    # A peer's own leaf used as an issuer must not extend the chain.
    leaf, leaf_key = pki["leaf"]
    grandchild, _ = _cert(_leaf_extensions(), issuer=(leaf, leaf_key), cn="evil")
    with pytest.raises(ChainError):
        verify_chain(grandchild, [leaf, pki["intermediate"][0]], [pki["root"][0]])


def test_verify_chain_needs_roots(pki: dict) -> None:
    with pytest.raises(ChainError, match="no trust roots"):
        verify_chain(pki["leaf"][0], [pki["intermediate"][0]], [])
