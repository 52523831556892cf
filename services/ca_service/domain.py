"""What the CA service accepts to sign, and what it accepts back from a backend.

Pure rules, no gRPC and no SQL: :func:`build_issuance` turns an IssueCertificate call
into a validated :class:`IssuanceRequest`; :func:`verify_issued` re-reads whatever a
backend signed and refuses it unless it says exactly what was asked.

A CSR contributes only its public key, its subject common name and its DNS subject
alternative names. Every other extension a CSR requests (basicConstraints, key usage,
the grant OIDs themselves...) is ignored, never copied and never a reason to reject:
anyone can put anything in a CSR, so what matters is that none of it reaches the
certificate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mosaic.pki import MAX_CSR_BYTES, csr_signature_valid, is_one_csr_block, spki_der
from mosaic.x509ext import InvalidGrantExtension, canonical_uuid, grant_identity

__all__ = [
    "ISSUED_CERT_SKEW",
    "MAX_CSR_BYTES",
    "MAX_DNS_NAMES",
    "CSRRejected",
    "InvalidIssuanceRequest",
    "IssuanceRequest",
    "IssuedCertificateMismatch",
    "build_issuance",
    "validate_csr",
    "verify_issued",
]

MAX_DNS_NAMES: Final = 8
MAX_DNS_NAME_LENGTH: Final = 253
MIN_RSA_BITS: Final = 3072
# Not a strength rule: bounds the work an unauthenticated caller can make us do.
MAX_RSA_BITS: Final = 8192
# Tolerated difference between our clock and a backend's when checking validity.
ISSUED_CERT_SKEW: Final = timedelta(minutes=2)

_ACCEPTED_KEYS = "EC P-256, EC P-384, or RSA with a 3072-8192 bit modulus"
_COMMON_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class CSRRejected(ValueError):
    """A CSR the CA will not sign. ``reason`` is one of:

    CSR_TOO_LARGE, CSR_MALFORMED, CSR_BAD_SIGNATURE, CSR_WEAK_KEY, CSR_BAD_NAMES.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class InvalidIssuanceRequest(ValueError):
    """An issuance call with a bad argument. ``reason`` is one of:

    INVALID_GRANT_ID, INVALID_SUBJECT_USER_ID, INVALID_PEER_ID, INVALID_LIFETIME.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class IssuedCertificateMismatch(RuntimeError):
    """A backend returned a certificate that does not say what was asked; never hand it out.

    ``problems`` lists each difference found (never key material).
    """

    reason = "ISSUED_CERT_MISMATCH"

    def __init__(self, problems: list[str]) -> None:
        message = (
            "the CA backend issued a certificate that does not match the request: "
            + "; ".join(problems)
            + ". The certificate was not handed out; check the backend's certificate template."
        )
        super().__init__(message)
        self.problems = tuple(problems)
        self.message = message


@dataclass(frozen=True)
class IssuanceRequest:
    """A validated request to sign ``csr`` for one grant; identifiers are lowercase UUIDs."""

    csr: x509.CertificateSigningRequest
    grant_id: str
    subject_user_id: str
    peer_id: str
    lifetime: timedelta


def validate_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM PKCS#10 request and check it against the CA's policy.

    Accepted: at most MAX_CSR_BYTES of PEM holding exactly one CSR block and nothing but
    whitespace around it; a valid self-signature; an EC P-256, EC P-384 or RSA 3072-8192
    bit key; a subject of exactly one common name matching
    ``[a-z0-9][a-z0-9.-]{0,62}``; optionally a subjectAltName holding only lowercase DNS
    host names (at most 8, each at most 253 characters). Other requested extensions are
    ignored, not rejected. Raises CSRRejected with a reason code.
    """
    data = pem.encode("utf-8", errors="replace") if isinstance(pem, str) else pem
    if len(data) > MAX_CSR_BYTES:
        raise CSRRejected(
            "CSR_TOO_LARGE",
            f"the CSR is {len(data)} bytes; at most {MAX_CSR_BYTES} bytes of PEM are accepted",
        )
    if not is_one_csr_block(data):
        # The parser reads the first block and ignores what surrounds it; what we sign
        # must be exactly what was sent, not one part of it.
        raise CSRRejected(
            "CSR_MALFORMED",
            "the CSR must be exactly one PEM 'CERTIFICATE REQUEST' block (PKCS#10) with "
            "nothing but whitespace around it",
        )
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        raise CSRRejected(
            "CSR_MALFORMED",
            "the CSR does not parse; send one PEM 'CERTIFICATE REQUEST' block (PKCS#10)",
        ) from None

    _check_key(csr)
    if not csr_signature_valid(csr):
        raise CSRRejected(
            "CSR_BAD_SIGNATURE",
            "the CSR's signature does not verify with its own public key; "
            "sign the request with the private key it names",
        )
    _check_subject(csr)
    _check_subject_alt_names(csr)
    return csr


def _check_key(csr: x509.CertificateSigningRequest) -> None:
    try:
        key = csr.public_key()
    except Exception:
        raise CSRRejected(
            "CSR_WEAK_KEY",
            f"the CSR's public key algorithm is not supported; use {_ACCEPTED_KEYS}",
        ) from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            return
        raise CSRRejected(
            "CSR_WEAK_KEY",
            f"the CSR's key is on curve {key.curve.name}; use {_ACCEPTED_KEYS}",
        )
    if isinstance(key, rsa.RSAPublicKey):
        if MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            return
        raise CSRRejected(
            "CSR_WEAK_KEY",
            f"the CSR's key is RSA {key.key_size} bits; use {_ACCEPTED_KEYS}",
        )
    raise CSRRejected(
        "CSR_WEAK_KEY",
        f"the CSR's key is {type(key).__name__.removesuffix('PublicKey') or 'of an unknown type'}"
        f"; use {_ACCEPTED_KEYS}",
    )


def _check_subject(csr: x509.CertificateSigningRequest) -> None:
    try:
        rdns = list(csr.subject.rdns)
    except ValueError:
        raise CSRRejected("CSR_MALFORMED", "the CSR's subject name does not parse") from None
    attributes = [attribute for rdn in rdns for attribute in rdn]
    if len(attributes) != 1 or attributes[0].oid != NameOID.COMMON_NAME:
        raise CSRRejected(
            "CSR_BAD_NAMES",
            f"the CSR's subject is {csr.subject.rfc4514_string()!r}; it must be exactly one "
            "common name (CN=...) and no other attribute",
        )
    value = attributes[0].value
    if not isinstance(value, str) or _COMMON_NAME.fullmatch(value) is None:
        raise CSRRejected(
            "CSR_BAD_NAMES",
            f"the CSR's common name {value!r} is not accepted; use 1-63 characters of "
            "lowercase letters, digits, '.' and '-', starting with a letter or digit",
        )


def _check_subject_alt_names(csr: x509.CertificateSigningRequest) -> None:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    except x509.DuplicateExtension as exc:
        raise CSRRejected(
            "CSR_MALFORMED", f"the CSR requests extension {exc.oid.dotted_string} more than once"
        ) from None
    except (ValueError, x509.UnsupportedGeneralNameType):
        raise CSRRejected("CSR_MALFORMED", "the CSR's requested extensions do not parse") from None

    names = list(san)
    if not names:
        raise CSRRejected(
            "CSR_BAD_NAMES", "the CSR's subjectAltName is empty; omit it or list DNS names"
        )
    if len(names) > MAX_DNS_NAMES:
        raise CSRRejected(
            "CSR_BAD_NAMES",
            f"the CSR lists {len(names)} subject alternative names; at most {MAX_DNS_NAMES}",
        )
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, x509.DNSName):
            raise CSRRejected(
                "CSR_BAD_NAMES",
                f"the CSR's subjectAltName holds a {type(name).__name__}; only DNS names "
                "are accepted (no URI, IP address, email or otherName)",
            )
        if not _is_lowercase_hostname(name.value):
            raise CSRRejected(
                "CSR_BAD_NAMES",
                f"the CSR's DNS name {name.value!r} is not a lowercase host name; use labels "
                "of a-z, 0-9 and '-', at most 253 characters, no wildcard or trailing dot",
            )
        if name.value in seen:
            raise CSRRejected("CSR_BAD_NAMES", f"the CSR lists DNS name {name.value!r} twice")
        seen.add(name.value)


def _is_lowercase_hostname(value: str) -> bool:
    if not value or len(value) > MAX_DNS_NAME_LENGTH:
        return False
    return all(_DNS_LABEL.fullmatch(label) is not None for label in value.split("."))


def build_issuance(
    csr_pem: str | bytes,
    grant_id: str,
    subject_user_id: str,
    peer_id: str,
    lifetime_seconds: int,
    *,
    max_lifetime: timedelta,
    default_lifetime: timedelta,
) -> IssuanceRequest:
    """Validate an IssueCertificate call and return what the backend should sign.

    Identifiers must be hyphenated UUIDs and come back lowercase. ``lifetime_seconds``
    of 0 means ``default_lifetime``; anything above ``max_lifetime`` is capped to it;
    a negative value is refused. Raises InvalidIssuanceRequest or CSRRejected.
    """
    if max_lifetime <= timedelta(0) or default_lifetime <= timedelta(0):
        raise ValueError("max_lifetime and default_lifetime must be positive (CA configuration)")
    grant = _uuid_argument(grant_id, "INVALID_GRANT_ID", "grant id")
    subject = _uuid_argument(subject_user_id, "INVALID_SUBJECT_USER_ID", "subject user id")
    peer = _uuid_argument(peer_id, "INVALID_PEER_ID", "peer id")

    if isinstance(lifetime_seconds, bool) or not isinstance(lifetime_seconds, int):
        raise InvalidIssuanceRequest(
            "INVALID_LIFETIME", "the lifetime must be a whole number of seconds"
        )
    if lifetime_seconds < 0:
        raise InvalidIssuanceRequest(
            "INVALID_LIFETIME",
            f"the lifetime is {lifetime_seconds} s; use 0 for the default "
            f"({int(default_lifetime.total_seconds())} s) or a positive number of seconds",
        )
    # Compared in seconds: a huge request (the field is an int64) would overflow timedelta.
    if lifetime_seconds == 0:
        lifetime = min(default_lifetime, max_lifetime)
    elif lifetime_seconds >= max_lifetime.total_seconds():
        lifetime = max_lifetime
    else:
        lifetime = timedelta(seconds=lifetime_seconds)

    return IssuanceRequest(
        csr=validate_csr(csr_pem),
        grant_id=grant,
        subject_user_id=subject,
        peer_id=peer,
        lifetime=lifetime,
    )


def _uuid_argument(value: str, reason: str, what: str) -> str:
    try:
        return canonical_uuid(value)
    except ValueError:
        raise InvalidIssuanceRequest(
            reason,
            f"the {what} {value!r} is not a UUID; "
            "expected the hyphenated form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
        ) from None


def verify_issued(
    cert: x509.Certificate, request: IssuanceRequest, *, now: datetime | None = None
) -> None:
    """Re-parse a backend's certificate and refuse it unless it matches ``request``.

    Checked: both grant extensions present and equal to the request, the CSR's public
    key, the CSR's common name, only DNS subject alternative names taken from the CSR
    (or its common name), clientAuth extended key usage, digitalSignature key usage
    without keyCertSign, not a CA, and a validity that fits ``request.lifetime`` (with
    ISSUED_CERT_SKEW for clock differences). A certificate without basicConstraints is
    accepted as not a CA (RFC 5280 4.2.1.9). Raises IssuedCertificateMismatch.
    """
    moment = now if now is not None else datetime.now(UTC)
    problems: list[str] = []
    # Re-read from DER so the checks see the bytes a peer will see, not a builder's object.
    try:
        issued = x509.load_der_x509_certificate(cert.public_bytes(serialization.Encoding.DER))
        extensions = issued.extensions
    except (ValueError, x509.DuplicateExtension):
        raise IssuedCertificateMismatch(
            ["the certificate or its extensions do not parse"]
        ) from None

    try:
        identity = grant_identity(issued)
    except InvalidGrantExtension as exc:
        problems.append(str(exc))
    else:
        if identity.grant_id != request.grant_id:
            problems.append(
                f"grant id is {identity.grant_id}, the request was for {request.grant_id}"
            )
        if identity.subject_user_id != request.subject_user_id:
            problems.append(
                f"subject user id is {identity.subject_user_id}, "
                f"the request was for {request.subject_user_id}"
            )

    if spki_der(issued.public_key()) != spki_der(request.csr.public_key()):
        problems.append("the certificate's public key is not the CSR's")

    problems.extend(_name_problems(issued, extensions, request.csr))
    problems.extend(_usage_problems(extensions))

    latest_not_after = moment + request.lifetime + ISSUED_CERT_SKEW
    if issued.not_valid_after_utc > latest_not_after:
        problems.append(
            f"not_after {issued.not_valid_after_utc.isoformat()} is later than the requested "
            f"lifetime of {int(request.lifetime.total_seconds())} s allows"
        )
    if issued.not_valid_after_utc <= moment:
        problems.append(f"not_after {issued.not_valid_after_utc.isoformat()} is already past")
    if issued.not_valid_before_utc > moment + ISSUED_CERT_SKEW:
        problems.append(f"not_before {issued.not_valid_before_utc.isoformat()} is in the future")

    if problems:
        raise IssuedCertificateMismatch(problems)


def _name_problems(
    issued: x509.Certificate, extensions: x509.Extensions, csr: x509.CertificateSigningRequest
) -> list[str]:
    problems: list[str] = []
    csr_cn = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    issued_cn = [a.value for a in issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if issued_cn != csr_cn:
        problems.append(f"subject common name is {issued_cn!r}, the CSR asked for {csr_cn!r}")

    try:
        csr_san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        allowed = set(csr_san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        allowed = set()
    allowed.update(str(cn) for cn in csr_cn)
    try:
        issued_san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return problems
    for name in issued_san:
        if not isinstance(name, x509.DNSName):
            problems.append(f"subjectAltName holds a {type(name).__name__}; only DNS names allowed")
        elif name.value not in allowed:
            problems.append(f"subjectAltName DNS name {name.value!r} was not in the CSR")
    return problems


def _usage_problems(extensions: x509.Extensions) -> list[str]:
    problems: list[str] = []
    try:
        eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        problems.append("extended key usage is missing (clientAuth required)")
    else:
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            problems.append("extended key usage lacks clientAuth")

    try:
        key_usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        problems.append("key usage is missing (digitalSignature required)")
    else:
        if not key_usage.digital_signature:
            problems.append("key usage lacks digitalSignature")
        if key_usage.key_cert_sign or key_usage.crl_sign:
            problems.append("key usage allows signing certificates or CRLs")

    try:
        basic = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        pass
    else:
        if basic.ca:
            problems.append("basicConstraints says CA:true")
    return problems
