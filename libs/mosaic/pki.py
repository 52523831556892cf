"""The instance's internal PKI: one CA and one certificate per service (and the operator).

Every internal listener requires a client certificate from this CA; the service
identity is the SPIFFE URI SAN ``spiffe://<instance>/<service>``. Keys are files
readable by the owner only, like any server's TLS key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# pki/federation/ in the instance home (ca_service.keys writes it; the gateway serves it).
ROOT_CERT = "root.crt"
INTERMEDIATE_CERT = "intermediate.crt"
SERVER_CERT = "server.crt"  # leaf followed by the intermediate
SERVER_KEY = "server.key"

# Largest PKCS#10 request (PEM) the CA signs or enrollment reads.
MAX_CSR_BYTES = 16 * 1024
_CSR_PEM_LABELS = (b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST")

INTERNAL_CERT_LIFETIME = dt.timedelta(days=365)
INTERNAL_CA_LIFETIME = dt.timedelta(days=3650)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its unencrypted private key, as PEM bytes."""

    cert_pem: bytes
    key_pem: bytes


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_internal_ca(trust_domain: str) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} internal CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + INTERNAL_CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_internal_certificate(ca: KeyPair, trust_domain: str, service: str) -> KeyPair:
    """A server+client certificate for one service, named by SPIFFE id and by DNS name."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + INTERNAL_CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(f"spiffe://{trust_domain}/{service}"),
                    x509.DNSName(service),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Write a sibling and rename over the target: a crash never leaves a half-written key.
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    """Write a public file (certificates) the same way: replaced whole, never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def certificate_not_after(pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


def is_one_csr_block(data: bytes) -> bool:
    """Whether ``data`` is one PEM CSR block (label ``CERTIFICATE REQUEST``, or the older
    ``NEW CERTIFICATE REQUEST``) and only ASCII whitespace around it."""
    text = data.strip()
    if text.count(b"-----BEGIN ") != 1 or text.count(b"-----END ") != 1:
        return False
    return any(
        text.startswith(b"-----BEGIN " + label + b"-----")
        and text.endswith(b"-----END " + label + b"-----")
        for label in _CSR_PEM_LABELS
    )


def csr_signature_valid(csr: x509.CertificateSigningRequest) -> bool:
    """Whether the CSR proves its sender holds the key it names."""
    try:
        return csr.is_signature_valid
    except Exception:
        # Unsupported signature algorithms raise rather than return False; either way
        # there is no proof the sender holds the key.
        return False


def spki_der(key: CertificatePublicKeyTypes) -> bytes:
    """A public key as DER SubjectPublicKeyInfo: what "the same key" is compared by."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def csr_public_key(csr_pem: str) -> bytes | None:
    """The public key (DER SPKI) of a well-formed CSR whose signature proves its sender
    holds that key; None otherwise. For matching a request to a certificate already
    issued, not for deciding what to sign (ca-service's policy does that)."""
    data = csr_pem.encode("utf-8", errors="replace")
    if len(data) > MAX_CSR_BYTES or not is_one_csr_block(data):
        return None
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        return None
    return spki_der(csr.public_key()) if csr_signature_valid(csr) else None
