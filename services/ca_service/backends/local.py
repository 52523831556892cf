"""The embedded CA: a root and an intermediate made with ``cryptography`` at ``mosaic init``.

The root (EC P-384, 10 years, pathlen 1) signs only the intermediate; the intermediate
(EC P-256, 5 years, pathlen 0) signs peer client certificates and the gateway's TLS
server certificates. The caller stores the intermediate key sealed: the helpers here
hand out and take back *unencrypted* PEM and say so in their names.

Signing runs inline on the event loop. It is one ECDSA P-256 signature plus DER
encoding: p50 about 0.13 ms, p99 about 0.3 ms (``scripts/bench_issuance.py``), the same
order as an ``asyncio.to_thread`` hand-off (0.05-0.1 ms). cryptography also holds the GIL
while building a certificate (two threads measured no faster than one), so a thread
would add latency without adding throughput.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca_service.backends.base import CABackendMisconfigured, RevokeOutcome, SignedChain
from mosaic.x509ext import grant_extensions

__all__ = [
    "INTERMEDIATE_LIFETIME",
    "ROOT_LIFETIME",
    "LocalCABackend",
    "LocalCAMaterial",
    "create_local_ca",
    "issue_server_certificate",
    "load_unencrypted_private_key_pem",
    "unencrypted_private_key_pem",
]

ROOT_LIFETIME: Final = timedelta(days=3650)
INTERMEDIATE_LIFETIME: Final = timedelta(days=1825)
# Backdating absorbs small clock differences between gateways.
BACKDATE: Final = timedelta(minutes=1)
_MAX_CN_LENGTH: Final = 64
_CA_NAME_SUFFIXES: Final = (" Federation Root CA", " Federation Intermediate CA")

_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_NOT_A_CA = x509.BasicConstraints(ca=False, path_length=None)


@dataclass(frozen=True)
class LocalCAMaterial:
    """A freshly made root and intermediate with their private keys (keys kept out of repr)."""

    root_certificate: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey = field(repr=False)
    intermediate_certificate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey = field(repr=False)


def create_local_ca(common_name_prefix: str) -> LocalCAMaterial:
    """Make a root (EC P-384, 10 y, pathlen 1) and an intermediate (EC P-256, 5 y, pathlen 0).

    Common names are ``"<prefix> Federation Root CA"`` and
    ``"<prefix> Federation Intermediate CA"``.
    """
    prefix = common_name_prefix.strip()
    longest_prefix = _MAX_CN_LENGTH - max(map(len, _CA_NAME_SUFFIXES))
    if not prefix or len(prefix) > longest_prefix:
        raise ValueError(
            f"common_name_prefix must be 1-{longest_prefix} characters (e.g. the instance name)"
        )
    now = datetime.now(UTC)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = _cn(prefix + _CA_NAME_SUFFIXES[0])
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), False)
        .sign(root_key, hashes.SHA384())
    )

    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(_cn(prefix + _CA_NAME_SUFFIXES[1]))
        .issuer_name(root_name)
        .public_key(intermediate_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + INTERMEDIATE_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(intermediate_key.public_key()), False
        )
        .add_extension(_authority_key_identifier(root), critical=False)
        .sign(root_key, hashes.SHA384())
    )
    return LocalCAMaterial(
        root_certificate=root,
        root_key=root_key,
        intermediate_certificate=intermediate,
        intermediate_key=intermediate_key,
    )


def unencrypted_private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Serialise ``key`` as UNENCRYPTED PKCS#8 PEM. Seal the result before it touches disk."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_unencrypted_private_key_pem(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """Load an UNENCRYPTED PEM private key (unsealed by the caller); only EC P-256/P-384."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        # The underlying message is dropped on purpose: never echo anything of a key.
        raise ValueError(
            "the CA private key does not load; expected an unencrypted PEM EC key "
            "(unseal it first, and check the seal secret if unsealing produced garbage)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
        key.curve, ec.SECP256R1 | ec.SECP384R1
    ):
        raise ValueError("the CA private key must be an EC P-256 or P-384 key")
    return key


class LocalCABackend:
    """Signs peer client certificates with the embedded intermediate.

    Revocations are recorded only in the CA service's own table, which is the record
    for this backend.
    """

    name = "local"

    def __init__(
        self,
        root: x509.Certificate,
        intermediate: x509.Certificate,
        intermediate_key: ec.EllipticCurvePrivateKey,
    ) -> None:
        _check_issuer(root, intermediate, intermediate_key)
        self._root = root
        self._intermediate = intermediate
        self._key = intermediate_key
        self._hash = _signature_hash(intermediate_key)
        self._aki = _authority_key_identifier(intermediate)

    async def sign(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        grant_id: str,
        subject_user_id: str,
        peer_id: str,
        lifetime: timedelta,
    ) -> SignedChain:
        """Sign ``csr`` (already validated) for a grant; nothing but key and names is copied.

        ``not_after`` is now + ``lifetime``, cut to the intermediate's own expiry.
        ``peer_id`` is recorded by the CA service, not in the certificate.
        """
        del peer_id
        if lifetime <= timedelta(0):
            raise ValueError("lifetime must be positive")
        common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(common_names) != 1:
            raise ValueError("the CSR must carry exactly one common name; validate it first")
        dns_names = _csr_dns_names(csr)

        now = datetime.now(UTC)
        not_after = min(now + lifetime, self._intermediate.not_valid_after_utc)
        public_key = csr.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([common_names[0]]))
            .issuer_name(self._intermediate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(_NOT_A_CA, critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(self._aki, critical=False)
        )
        if dns_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), False
            )
        for extension in grant_extensions(grant_id, subject_user_id):
            builder = builder.add_extension(extension, critical=False)
        certificate = builder.sign(self._key, self._hash)
        return SignedChain(certificate=certificate, chain=[self._intermediate])

    async def revoke(self, serial: int, reason: str) -> RevokeOutcome:
        """Nothing to do at the backend: the CA service's table is the revocation record."""
        del serial, reason
        return RevokeOutcome(True, "")

    def trust_roots(self) -> list[x509.Certificate]:
        """The embedded root."""
        return [self._root]

    def intermediates(self) -> list[x509.Certificate]:
        """The embedded intermediate."""
        return [self._intermediate]


def issue_server_certificate(
    issuer_certificate: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    common_name: str,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str | ipaddress.IPv4Address | ipaddress.IPv6Address],
    lifetime: timedelta,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TLS server certificate (serverAuth) and its new EC P-256 key for a gateway listener.

    Pass the intermediate (``material.intermediate_certificate`` / ``intermediate_key``)
    and serve ``[certificate, intermediate]`` so peers pinning the root can build the
    chain. Peers dial by address as often as by name, so list ``127.0.0.1`` in
    ``ip_addresses`` for loopback listeners.
    """
    if not dns_names and not ip_addresses:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    if lifetime <= timedelta(0):
        raise ValueError("lifetime must be positive")
    _check_issuer_key(issuer_certificate, issuer_key)
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_cn(common_name))
        .issuer_name(issuer_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + lifetime, issuer_certificate.not_valid_after_utc))
        .add_extension(_NOT_A_CA, critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(_authority_key_identifier(issuer_certificate), critical=False)
        .sign(issuer_key, _signature_hash(issuer_key))
    )
    return certificate, key


def _cn(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _signature_hash(key: ec.EllipticCurvePrivateKey) -> hashes.SHA256 | hashes.SHA384:
    return hashes.SHA384() if isinstance(key.curve, ec.SECP384R1) else hashes.SHA256()


def _authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _csr_dns_names(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.DNSName)


def _check_issuer_key(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
        key.curve, ec.SECP256R1 | ec.SECP384R1
    ):
        raise CABackendMisconfigured(
            "the local CA key is not an EC P-256 or P-384 key",
            remediation="restore the intermediate key made by 'mosaic init' for this home",
        )
    if key.public_key() != certificate.public_key():
        raise CABackendMisconfigured(
            "the local CA private key does not belong to its certificate",
            remediation="restore the intermediate certificate and key from the same 'mosaic init'",
        )
    try:
        basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = _NOT_A_CA
    if not basic.ca:
        raise CABackendMisconfigured(
            "the local CA certificate is not a CA certificate (basicConstraints CA:false)",
            remediation="configure the intermediate made by 'mosaic init', not a leaf",
        )


def _check_issuer(
    root: x509.Certificate,
    intermediate: x509.Certificate,
    intermediate_key: ec.EllipticCurvePrivateKey,
) -> None:
    _check_issuer_key(intermediate, intermediate_key)
    try:
        intermediate.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise CABackendMisconfigured(
            "the local intermediate certificate was not issued by the configured root",
            remediation="restore the root and intermediate from the same 'mosaic init'",
        ) from None
