"""Grant identity in X.509 certificates, and the few certificate helpers services share.

A federation client certificate carries two non-critical extensions, each the DER
encoding of an ASN.1 UTF8String holding a lowercase canonical UUID:

* ``1.3.6.1.4.1.99999.1`` (:data:`GRANT_ID_OID`): the grant id on the issuing gateway;
* ``1.3.6.1.4.1.99999.2`` (:data:`SUBJECT_USER_ID_OID`): the local user whose data it exposes.

Readers here are strict on purpose: an authorization decision hangs on these bytes, so
anything other than exactly ``0x0C 0x24`` followed by 36 lowercase UUID characters is
refused rather than interpreted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import verification

__all__ = [
    "GRANT_ID_OID",
    "SUBJECT_USER_ID_OID",
    "ChainError",
    "GrantIdentity",
    "InvalidGrantExtension",
    "canonical_uuid",
    "certs_to_pem",
    "decode_uuid_utf8string",
    "encode_uuid_utf8string",
    "grant_extensions",
    "grant_identity",
    "load_pem_certificates",
    "parse_serial_hex",
    "serial_hex",
    "sha256_fingerprint",
    "verify_chain",
]

GRANT_ID_OID = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")
SUBJECT_USER_ID_OID = x509.ObjectIdentifier("1.3.6.1.4.1.99999.2")

_UTF8STRING_TAG = 0x0C
_UUID_LENGTH = 36
_UUID_ANY_CASE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_UUID_LOWERCASE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SERIAL_HEX = re.compile(r"[0-9a-f]{1,40}")
# RFC 5280 4.1.2.2: serials are positive and at most 20 octets.
_MAX_SERIAL = (1 << 160) - 1


class InvalidGrantExtension(ValueError):
    """A grant extension is missing, duplicated, critical, or not exactly a lowercase UUID."""


class ChainError(ValueError):
    """A certificate does not chain to a trusted root as a TLS client certificate."""


@dataclass(frozen=True)
class GrantIdentity:
    """The grant a client certificate stands for, read from its two extensions."""

    grant_id: str
    subject_user_id: str


def canonical_uuid(value: str) -> str:
    """Return ``value`` as a lowercase 8-4-4-4-12 UUID; raise ValueError for any other form.

    Only the hyphenated form is accepted (either case); braces, ``urn:uuid:`` prefixes
    and unhyphenated hex are refused so that one UUID has exactly one spelling.
    """
    if not isinstance(value, str) or _UUID_ANY_CASE.fullmatch(value) is None:
        raise ValueError(
            f"{value!r} is not a UUID; expected the hyphenated form "
            "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex digits)"
        )
    return value.lower()


def encode_uuid_utf8string(value: str) -> bytes:
    """DER-encode a UUID as an ASN.1 UTF8String: ``0x0C 0x24`` then 36 lowercase ASCII bytes."""
    text = canonical_uuid(value)
    return bytes((_UTF8STRING_TAG, _UUID_LENGTH)) + text.encode("ascii")


def decode_uuid_utf8string(der: bytes) -> str:
    """Decode the exact encoding :func:`encode_uuid_utf8string` produces, and nothing else.

    Raises InvalidGrantExtension for another tag or length, trailing bytes, uppercase
    hex, or text that is not a canonical UUID.
    """
    if not isinstance(der, bytes | bytearray | memoryview):
        raise InvalidGrantExtension("grant extension value must be bytes")
    raw = bytes(der)
    if len(raw) < 2 or raw[0] != _UTF8STRING_TAG:
        raise InvalidGrantExtension(
            "grant extension value is not a DER UTF8String (expected tag 0x0c)"
        )
    if raw[1] != _UUID_LENGTH:
        raise InvalidGrantExtension(
            f"grant extension UTF8String has length byte 0x{raw[1]:02x}; expected 0x24 (36)"
        )
    if len(raw) != 2 + _UUID_LENGTH:
        raise InvalidGrantExtension(
            f"grant extension value is {len(raw)} bytes; expected exactly 38 "
            "(0x0c 0x24 and a 36-character UUID, no trailing bytes)"
        )
    payload = raw[2:]
    if _UUID_LOWERCASE.fullmatch(payload) is None:
        raise InvalidGrantExtension(
            "grant extension does not hold a lowercase canonical UUID "
            "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, digits and a-f only)"
        )
    return payload.decode("ascii")


def grant_extensions(grant_id: str, subject_user_id: str) -> list[x509.UnrecognizedExtension]:
    """The two grant extensions, for ``CertificateBuilder.add_extension(ext, critical=False)``."""
    return [
        x509.UnrecognizedExtension(GRANT_ID_OID, encode_uuid_utf8string(grant_id)),
        x509.UnrecognizedExtension(SUBJECT_USER_ID_OID, encode_uuid_utf8string(subject_user_id)),
    ]


def grant_identity(cert: x509.Certificate) -> GrantIdentity:
    """Read the grant id and subject user id from ``cert``.

    Raises InvalidGrantExtension when either extension is missing, appears twice, is
    marked critical, or does not hold exactly a DER UTF8String of a lowercase UUID.
    """
    try:
        extensions = cert.extensions
    except x509.DuplicateExtension as exc:
        raise InvalidGrantExtension(
            f"certificate carries extension {exc.oid.dotted_string} more than once"
        ) from None
    except ValueError as exc:
        # cryptography's reason (an ASN.1 parse error, no certificate content beyond the
        # tags it met) is kept: it is what tells an operator which template went wrong.
        raise InvalidGrantExtension(f"certificate extensions do not parse: {exc}") from None

    return GrantIdentity(
        grant_id=_read_uuid_extension(extensions, GRANT_ID_OID, "grant id"),
        subject_user_id=_read_uuid_extension(extensions, SUBJECT_USER_ID_OID, "subject user id"),
    )


def _read_uuid_extension(extensions: x509.Extensions, oid: x509.ObjectIdentifier, what: str) -> str:
    # cryptography raises DuplicateExtension while parsing, but count anyway: this is
    # the check an authorization decision relies on, so do not lean on parser details.
    found = [ext for ext in extensions if ext.oid == oid]
    if not found:
        raise InvalidGrantExtension(
            f"certificate has no {what} extension ({oid.dotted_string}); "
            "it was not issued for a federation grant"
        )
    if len(found) > 1:
        raise InvalidGrantExtension(
            f"certificate carries the {what} extension ({oid.dotted_string}) more than once"
        )
    ext = found[0]
    if ext.critical:
        raise InvalidGrantExtension(
            f"the {what} extension ({oid.dotted_string}) is marked critical; it must not be"
        )
    if not isinstance(ext.value, x509.UnrecognizedExtension):
        raise InvalidGrantExtension(f"the {what} extension ({oid.dotted_string}) is malformed")
    try:
        return decode_uuid_utf8string(ext.value.value)
    except InvalidGrantExtension as exc:
        raise InvalidGrantExtension(f"the {what} extension ({oid.dotted_string}): {exc}") from None


def sha256_fingerprint(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's DER encoding (64 characters, no colons)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def serial_hex(serial: int) -> str:
    """A certificate serial as lowercase hex without separators or leading zeros."""
    if isinstance(serial, bool) or not isinstance(serial, int) or not 0 < serial <= _MAX_SERIAL:
        raise ValueError("a certificate serial must be a positive integer of at most 20 octets")
    return format(serial, "x")


def parse_serial_hex(text: str) -> int:
    """Inverse of :func:`serial_hex`; refuses uppercase, separators, ``0x`` and zero."""
    if not isinstance(text, str) or _SERIAL_HEX.fullmatch(text) is None:
        raise ValueError(
            f"{text!r} is not a certificate serial; expected 1-40 lowercase hex digits "
            "without separators (as printed by mosaic)"
        )
    serial = int(text, 16)
    if serial == 0:
        raise ValueError("a certificate serial must be positive")
    return serial


# What ca-service records as a revocation's reason (step-ca takes no more either).
MAX_REVOCATION_REASON = 256


def revocation_reason(text: str) -> str:
    """``text`` on one line, each run of whitespace (line breaks, tabs) as one space;
    callers keep it within MAX_REVOCATION_REASON and refuse other control characters
    (mosaic.text)."""
    return " ".join(text.split())


def load_pem_certificates(pem: str | bytes) -> list[x509.Certificate]:
    """Load every certificate of a PEM bundle, in order; raise ValueError if there is none."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(
            "no PEM certificate could be read; expected one or more "
            "'-----BEGIN CERTIFICATE-----' blocks"
        ) from None


def certs_to_pem(certs: Iterable[x509.Certificate]) -> str:
    """Concatenate certificates as one PEM bundle, in the given order."""
    return "".join(cert.public_bytes(serialization.Encoding.PEM).decode("ascii") for cert in certs)


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    at: datetime | None = None,
) -> None:
    """Check that ``leaf`` is a valid TLS client certificate chaining to one of ``roots``.

    Path building, signatures, validity periods, basicConstraints, key usage and the
    clientAuth extended key usage are checked by cryptography's RFC 5280 / Web PKI
    verifier. One relaxation: the leaf may have no subjectAltName, since a peer's
    identity is its grant extensions, not a host name. ``at`` defaults to now.
    Raises ChainError saying why the chain was refused.
    """
    if not roots:
        raise ChainError("no trust roots given; pass the federation CA root certificate(s)")
    builder = (
        verification.PolicyBuilder()
        .store(verification.Store(list(roots)))
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
                x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
            ),
        )
    )
    when = at if at is not None else datetime.now(UTC)
    builder = builder.time(when)
    try:
        builder.build_client_verifier().verify(leaf, list(intermediates))
    except verification.VerificationError as exc:
        raise ChainError(
            f"certificate with serial {leaf.serial_number:x} does not chain to a trusted root "
            f"as a client certificate at {when.isoformat()}: {exc}; check that the bundle holds "
            "the issuing intermediate and that the pinned root is this CA's"
        ) from None
