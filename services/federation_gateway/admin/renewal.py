"""FederationAdmin.RenewPeer: flow 6 on the querying side (DESIGN.md).

1. the outbound peer must be active and hold usable credentials (grants-service
   GetPeerCredentials, through the federation client);
2. make a new P-256 key and a CSR (the same CN as at enrollment) and ask the peer's
   ``Federation.RenewCertificate`` over the peer's existing mTLS channel, that is with the
   certificate being replaced;
3. check the answer as enrollment does: the certificate chains to the peer's stored roots,
   carries the same grant and subject as before, and is for the new key;
4. hand certificate and key to grants-service, which re-seals the key bound to the peer's
   row, then flush the peer's channel so the next query presents the new certificate.

The serving gateway makes the new certificate current and revokes the old one as soon as it
answers. A call that got no answer is repeated with the same CSR: the serving gateway
answers a repeat with the certificate it already issued for that key (for 10 minutes).
A failure after that (answer refused here, storing failed) leaves this gateway without a
working certificate for the peer, and the operator must enroll again. A store
that failed in a way that may have committed (a timeout, an outage) is read back first.
"""

from __future__ import annotations

import logging
from typing import Final

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federation_gateway.admin.base import (
    STORE_TIMEOUT_S,
    AdminBase,
    not_stored,
    repeat_while_unknown,
)
from federation_gateway.admin.enrollment import (
    INVALID_RESPONSE,
    CertificateRefused,
    _csr,
    _private_pem,
    check_own_key,
    verified_leaf,
)
from federation_gateway.authz import CERT_NOT_CURRENT
from federation_gateway.client import NETWORK, PEER_MISCONFIGURED, PeerError
from mosaic.errors import OUTCOME_UNKNOWN_CODES, RemoteError, failed_precondition
from mosaic.federation.v1 import gateway_pb2, grants_pb2
from mosaic.x509ext import InvalidGrantExtension, certs_to_pem, grant_identity, serial_hex

log = logging.getLogger("federation_gateway.renewal")

_ENROLL_AGAIN: Final = (
    "the peer has already replaced and revoked the old certificate: ask its administrator "
    "for a new grant and enrollment URL, remove this peer and run `mosaic federation peer add`"
)


class RenewalAdminMixin(AdminBase):
    """peer renew (A)."""

    async def RenewPeer(
        self, request: gateway_pb2.RenewPeerRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.RenewPeerResponse:
        client = self.gateway.federation_client
        try:
            peer, _ = await client.credentials(request.id)
            grant_id, subject_user_id = _current_identity(peer)
        except PeerError as exc:
            raise exc.to_service_error() from None
        # From the RenewCertificate call on, the peer may have switched to the new
        # certificate: finish and store it even if the operator's call goes away.
        return await self.finish_anyway(self._renew(peer, grant_id, subject_user_id))

    async def _renew(
        self, peer: grants_pb2.Peer, grant_id: str, subject_user_id: str
    ) -> gateway_pb2.RenewPeerResponse:
        client = self.gateway.federation_client
        key = ec.generate_private_key(ec.SECP256R1())
        csr = _csr(key, self.config.name).public_bytes(serialization.Encoding.PEM)
        try:
            # Repeated with the same CSR when no answer came: the peer answers a repeat
            # (presented with the certificate it replaced) with the same new certificate.
            reply = await repeat_while_unknown(
                lambda left: client.renew(peer.id, csr.decode("ascii"), deadline_s=left),
                _renewal_repeatable,
                what="renewal",
                log_extra={"peer_id": peer.id, "peer_name": peer.name},
            )
        except PeerError as exc:
            raise exc.to_service_error() from None
        ids = {"peer_id": peer.id, "peer_name": peer.name, "old_serial": peer.cert_serial}
        try:
            leaf, intermediates = _check_renewal(reply, peer, key, grant_id, subject_user_id)
        except CertificateRefused as exc:
            log.error(
                "the peer's renewed certificate was refused",
                extra=ids | {"problem": str(exc), "serial": reply.serial},
            )
            raise failed_precondition(
                INVALID_RESPONSE,
                f"peer {peer.name} issued a renewed certificate that cannot be accepted: {exc}",
                remediation=_ENROLL_AGAIN,
                metadata={"endpoint": peer.endpoint},
            ) from None
        serial = serial_hex(leaf.serial_number)
        try:
            stored: grants_pb2.UpdateOutboundPeerCredentialsResponse = (
                await self.grants.UpdateOutboundPeerCredentials(
                    grants_pb2.UpdateOutboundPeerCredentialsRequest(
                        peer_id=peer.id,
                        cert_pem=certs_to_pem([leaf, *intermediates]),
                        ca_bundle_pem=peer.ca_bundle_pem,
                        client_key_pem=_private_pem(key),
                    ),
                    timeout=STORE_TIMEOUT_S,
                )
            )
            renewed = stored.peer
        except grpc.aio.AioRpcError as err:
            remote = RemoteError.from_rpc_error(err)
            unknown = remote.code in OUTCOME_UNKNOWN_CODES
            found = await self.stored_peer(peer.id, serial) if unknown else None
            if found is None:
                log.error(
                    "renewed, but the new certificate may not be stored"
                    if unknown
                    else "renewed, but the new certificate could not be stored",
                    extra=ids | {"reason": remote.reason, "serial": serial},
                )
                raise not_stored(
                    remote,
                    unknown=unknown,
                    done=f"peer {peer.name} renewed our certificate",
                    what="it",
                    check=f"check `mosaic federation peer show {peer.name}` for serial {serial}",
                    remediation=_ENROLL_AGAIN,
                ) from None
            renewed = found  # it committed; only its answer was lost
        client.flush(peer.id)
        log.info("peer certificate renewed", extra=ids | {"serial": renewed.cert_serial})
        return gateway_pb2.RenewPeerResponse(peer=renewed)


def _renewal_repeatable(exc: Exception, repeated: bool) -> bool:
    """No answer (NETWORK); or, after such an attempt, CERT_NOT_CURRENT: our first attempt,
    still running at the peer when the repeat arrived, made another certificate current,
    and the next repeat is answered with it."""
    if not isinstance(exc, PeerError):
        return False
    return exc.code == NETWORK or (repeated and exc.server_reason == CERT_NOT_CURRENT)


def _current_identity(peer: grants_pb2.Peer) -> tuple[str, str]:
    """The grant and subject our current certificate carries (the renewed one must match)."""
    try:
        identity = grant_identity(x509.load_pem_x509_certificate(peer.cert_pem.encode()))
    except (ValueError, InvalidGrantExtension):
        raise PeerError(
            PEER_MISCONFIGURED, "the stored certificate does not parse or carries no grant"
        ) from None
    return identity.grant_id, identity.subject_user_id


def _check_renewal(
    reply: gateway_pb2.RenewCertificateResponse,
    peer: grants_pb2.Peer,
    key: ec.EllipticCurvePrivateKey,
    grant_id: str,
    subject_user_id: str,
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The renewed leaf and intermediates if acceptable; raise CertificateRefused if not."""
    try:
        roots = x509.load_pem_x509_certificates(peer.ca_bundle_pem.encode())
    except ValueError:
        raise CertificateRefused("the stored CA bundle does not parse") from None
    leaf, intermediates = verified_leaf(reply.certificate_pem, reply.chain_pem, roots)
    try:
        identity = grant_identity(leaf)
    except InvalidGrantExtension as exc:
        raise CertificateRefused(f"grant identity: {exc}") from None
    if (identity.grant_id, identity.subject_user_id) != (grant_id, subject_user_id):
        raise CertificateRefused(
            "the certificate's grant extensions differ from the certificate it renews"
        )
    check_own_key(leaf, key)
    serial = serial_hex(leaf.serial_number)
    if reply.serial and reply.serial != serial:
        raise CertificateRefused("the certificate's serial differs from the one reported")
    if serial == peer.cert_serial:
        raise CertificateRefused("the certificate is the one it should replace")
    return leaf, intermediates
