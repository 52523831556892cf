"""Key material a test peer makes: a CSR, as A's gateway sends one to B; a throw-away
self-signed certificate."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def csr_pem(key: ec.EllipticCurvePrivateKey | None = None) -> str:
    """A PEM CSR for ``key`` (a new P-256 key when None), subject CN=a, no extensions."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def self_signed_pem(
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    serial: int | None = None,
    extensions: Sequence[x509.ExtensionType] = (),
) -> str:
    """A PEM certificate for ``key``, self-signed, valid for a day from now, with
    ``serial`` (random by default) and ``extensions`` (non-critical)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number() if serial is None else serial)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
