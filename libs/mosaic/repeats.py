"""The certificate to answer again when a peer repeats a redeem or a renewal whose first
answer was lost (enrollment-service and the federation gateway, DESIGN.md flows 3 and 6).

Nothing is issued for a repeat: the answer is the certificate the grant is served with,
and only to the holder of its key. grants-service keeps that certificate per grant
(GetGrant ``with_certificate``, migration grants_0003).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from google.protobuf import timestamp_pb2

from mosaic.federation.v1 import grants_pb2
from mosaic.pki import spki_der
from mosaic.x509ext import grant_identity, serial_hex


@dataclass(frozen=True)
class ServedCertificate:
    pem: str
    not_after: timestamp_pb2.Timestamp
    certificate: x509.Certificate


def served_certificate(reply: grants_pb2.GetGrantResponse, key: bytes) -> ServedCertificate | None:
    """The certificate ``reply``'s grant is served with (read with ``with_certificate``),
    if it is that grant's by its serial and both extensions, and for ``key`` (DER SPKI,
    from a CSR whose signature proved possession); None otherwise.

    A grants-service from before grants_0003 (during a rolling upgrade) sends no
    certificate, nor does one for a grant the migration could not give one: the peer's
    row stands in when it holds the grant's serial, as it did before per-grant storage.
    """
    grant, peer = reply.grant, reply.peer
    if not grant.cert_serial:
        return None
    if reply.certificate.pem:
        pem, not_after = reply.certificate.pem, reply.certificate.not_after
    elif peer.cert_serial == grant.cert_serial and peer.id == grant.peer_id:
        pem, not_after = peer.cert_pem, peer.cert_not_after
    else:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
        serial = serial_hex(certificate.serial_number)
        identity = grant_identity(certificate)
    except ValueError:  # InvalidGrantExtension included
        return None
    if (
        serial != grant.cert_serial
        or identity.grant_id != grant.id
        or identity.subject_user_id != grant.subject_user_id
        or spki_der(certificate.public_key()) != key
    ):
        return None
    return ServedCertificate(pem, not_after, certificate)
