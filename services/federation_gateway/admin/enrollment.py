"""FederationAdmin: enrollment tokens (serving side) and `peer add` (querying side).

``AddPeer`` is the whole querying side of flow 3 (DESIGN.md):

1. parse the enrollment URL; reserve the peer name at grants-service before spending the
   token (a pending outbound peer: of concurrent `peer add` runs under one name, on any
   gateway replica, one goes on and the others are refused with their tokens unused);
2. open a TLS connection to the serving gateway's enrollment listener *without*
   verification, only to read the chain it presents, and take from it the root whose
   SHA-256 equals the pin — none matches: abort (CA_PIN_MISMATCH) before anything is sent;
3. make a P-256 key and a CSR, dial the listener trusting only that root, redeem (a
   redeem whose outcome is not known is repeated with the same key: the serving gateway
   answers a repeat for the key that spent the token with the same certificate);
4. check the answer: the certificate chains to the pinned root (or to a root the serving
   gateway sent over that pinned channel), its grant extensions are what it reported,
   and its key is ours;
5. hand everything to grants-service, which seals the private key bound to the reserved
   row and makes it the active outbound peer (a store whose answer is lost is read back
   before it is called a failure). An enrollment that fails lets the name go again; one
   whose gateway dies holding it leaves a reservation that lapses on its own
   (grants-service's OUTBOUND_RESERVATION_TTL).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from federation_gateway.admin.base import (
    STORE_TIMEOUT_S,
    AdminBase,
    not_stored,
    repeat_while_unknown,
    retrieved,
)
from mosaic.enrollment_url import (
    EnrollmentURL,
    EnrollmentURLError,
    build_enrollment_url,
    parse_enrollment_url,
)
from mosaic.errors import (
    OUTCOME_UNKNOWN_CODES,
    RemoteError,
    ServiceError,
    failed_precondition,
    invalid_argument,
    unavailable,
)
from mosaic.federation.v1 import (
    enrollment_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    grants_pb2,
)
from mosaic.logs import token_hint
from mosaic.pki import spki_der
from mosaic.rpc.channels import secure_channel
from mosaic.x509ext import (
    ChainError,
    InvalidGrantExtension,
    canonical_uuid,
    certs_to_pem,
    grant_identity,
    serial_hex,
    sha256_fingerprint,
    verify_chain,
)

log = logging.getLogger("federation_gateway.enrollment")

CREATE_TOKEN_TIMEOUT_S: Final = 15.0
PROBE_TIMEOUT_S: Final = 10.0
REDEEM_TIMEOUT_S: Final = 60.0
# How far ahead of our clock a certificate just issued may start (our clock being behind
# the issuer's); beyond it, the certificate is refused as not made for now.
MAX_CLOCK_SKEW: Final = dt.timedelta(days=1)
TOKEN_IN_USE: Final = "TOKEN_IN_USE"  # noqa: S105 - a reason code
ROOT_CERT: Final = "root.crt"

CA_PIN_MISMATCH: Final = "CA_PIN_MISMATCH"
ENROLLMENT_URL_INVALID: Final = "ENROLLMENT_URL_INVALID"
INVALID_RESPONSE: Final = "INVALID_RESPONSE"
NETWORK: Final = "NETWORK"
PEER_NAME_TAKEN: Final = "PEER_NAME_TAKEN"
PEER_NOT_STORED: Final = "PEER_NOT_STORED"
# Deadline of letting a reserved name go after a failed enrollment (best effort: a
# reservation left behind lapses on its own).
RELEASE_TIMEOUT_S: Final = 5.0
PEER_NAME_INVALID: Final = "PEER_NAME_INVALID"
# grants-service's rule for peer names, checked here too so that a bad --name is refused
# before the single-use token is spent.
_PEER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ENDPOINT: Final = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}")


class EnrollmentAdminMixin(AdminBase):
    """grant token (B) and peer add (A)."""

    # ---- serving side ------------------------------------------------------------------

    async def CreateToken(
        self, request: enrollment_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> enrollment_pb2.CreateTokenResponse:
        reply: enrollment_pb2.CreateTokenResponse = await self.forward(
            self.enrollment.CreateToken(request, timeout=CREATE_TOKEN_TIMEOUT_S)
        )
        reply.enrollment_url = build_enrollment_url(
            self.config.host,
            # The public port when one is set: behind a load balancer, this replica's own
            # listener would pin the peer to this replica.
            self.config.advertised_enrollment_port,
            reply.token,
            self._server_root_fingerprint(),
        )
        log.info(
            "enrollment URL made",
            extra={"token": token_hint(reply.token), "grant_id": reply.grant_id},
        )
        return reply

    def _server_root_fingerprint(self) -> str:
        root = x509.load_pem_x509_certificate(
            (self.config.federation_pki_dir / ROOT_CERT).read_bytes()
        )
        return sha256_fingerprint(root)

    # ---- querying side -----------------------------------------------------------------

    async def AddPeer(
        self, request: gateway_pb2.AddPeerRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.AddPeerResponse:
        try:
            target = parse_enrollment_url(request.enrollment_url)
        except EnrollmentURLError as exc:
            raise invalid_argument(
                ENROLLMENT_URL_INVALID,
                str(exc),
                remediation="paste the URL exactly as `mosaic federation grant token` printed it",
                violations=[("enrollment_url", str(exc))],
            ) from None
        name = request.name or target.host
        _check_name(name)
        reservation = await self._reserve_name(name)
        try:
            root = await fetch_pinned_root(target)
        except BaseException:
            # Shielded: an operator's Ctrl-C here still lets the name go.
            await self.finish_anyway(self._release_name(name, reservation))
            raise
        # From the redeem on, the serving gateway may spend the token and activate the
        # grant: finish and store the peer (or let the name go) even if the operator's
        # call goes away.
        return await self.finish_anyway(self._enroll_reserved(target, root, name, reservation))

    async def _enroll_reserved(
        self, target: EnrollmentURL, root: x509.Certificate, name: str, reservation: str
    ) -> gateway_pb2.AddPeerResponse:
        try:
            return await self._enroll(target, root, name, reservation)
        except BaseException:
            # Whatever failed, the name is free again for the next `peer add`; a peer that
            # was stored (only its answer lost) is no longer pending and stays.
            await self._release_name(name, reservation)
            raise

    async def _enroll(
        self, target: EnrollmentURL, root: x509.Certificate, name: str, reservation: str
    ) -> gateway_pb2.AddPeerResponse:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = _csr(key, self.config.name)
        reply = await self._redeem_repeating(target, root, csr)
        accepted = _accept(reply, key, root, target)

        try:
            registered: grants_pb2.RegisterOutboundPeerResponse = (
                await self.grants.RegisterOutboundPeer(
                    grants_pb2.RegisterOutboundPeerRequest(
                        name=name,
                        endpoint=reply.federation_endpoint,
                        cert_pem=accepted.cert_chain_pem,
                        ca_bundle_pem=accepted.ca_bundle_pem,
                        client_key_pem=_private_pem(key),
                        remote_grant_id=accepted.grant_id,
                        remote_subject_user_id=accepted.subject_user_id,
                        reservation_id=reservation,
                    ),
                    timeout=STORE_TIMEOUT_S,
                )
            )
            peer = registered.peer
        except grpc.aio.AioRpcError as err:
            remote = RemoteError.from_rpc_error(err)
            unknown = remote.code in OUTCOME_UNKNOWN_CODES
            stored = await self.stored_peer(name, accepted.serial) if unknown else None
            if stored is None:
                raise _not_stored(remote, target, accepted, name, unknown=unknown) from None
            peer = stored  # it committed; only its answer was lost
        log.info(
            "peer added",
            extra={
                "peer_id": peer.id,
                "peer_name": peer.name,
                "endpoint": peer.endpoint,
                "serial": peer.cert_serial,
                "token": token_hint(target.token),
            },
        )
        return gateway_pb2.AddPeerResponse(peer=peer)

    async def _reserve_name(self, name: str) -> str:
        """Reserve ``name`` at grants-service for this enrollment; the reservation's id.

        Refused (PEER_NAME_TAKEN) while another peer holds the name, or another `peer add`
        is enrolling under it right now: either way before the token is spent. When the
        operator's call goes away (Ctrl-C) while grants-service may be committing the
        reservation, the call goes on and a reservation it makes is let go at once,
        rather than holding the name until it lapses."""
        reserving = asyncio.ensure_future(self._reserve(name))
        try:
            return await asyncio.shield(reserving)
        except asyncio.CancelledError:
            reserving.add_done_callback(functools.partial(self._release_when_reserved, name))
            raise

    def _release_when_reserved(self, name: str, reserving: asyncio.Future[str]) -> None:
        if reserving.cancelled() or reserving.exception() is not None:
            return  # nothing was reserved (the refusal was for a caller gone already)
        task = self.gateway.unfinished.start(self._release_name(name, reserving.result()))
        task.add_done_callback(retrieved)

    async def _reserve(self, name: str) -> str:
        try:
            reply: grants_pb2.ReserveOutboundPeerResponse = await self.grants.ReserveOutboundPeer(
                grants_pb2.ReserveOutboundPeerRequest(name=name), timeout=STORE_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as err:
            remote = RemoteError.from_rpc_error(err)
            if remote.reason != PEER_NAME_TAKEN:
                raise remote.to_service_error() from None
            raise _name_taken(name, remote) from None
        return reply.peer.id

    async def _release_name(self, name: str, reservation: str) -> None:
        """Best effort: a reservation left behind lapses on its own."""
        try:
            await self.grants.ReleaseOutboundPeer(
                grants_pb2.ReleaseOutboundPeerRequest(reservation_id=reservation),
                timeout=RELEASE_TIMEOUT_S,
            )
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as err:
            log.warning(
                "peer name not released after a failed enrollment; it comes free when its "
                "reservation lapses",
                extra={"peer_name": name, "peer_id": reservation, "error": type(err).__name__},
            )

    async def _redeem_repeating(
        self, target: EnrollmentURL, root: x509.Certificate, csr: x509.CertificateSigningRequest
    ) -> enrollment_pb2.RedeemResponse:
        """Redeem; when the outcome is not known (no answer, or the serving gateway could
        not tell), repeat the redeem with the same key and CSR. The serving gateway answers
        a repeat for the key that spent the token with the same certificate, so a lost
        answer does not strand the grant."""

        def repeatable(exc: Exception, repeated: bool) -> bool:
            if not isinstance(exc, ServiceError):
                return False
            if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return True
            # Held by our own earlier attempt, still running at the serving gateway.
            return repeated and exc.reason == TOKEN_IN_USE

        return await repeat_while_unknown(
            lambda left: self._redeem(target, root, csr, deadline_s=min(REDEEM_TIMEOUT_S, left)),
            repeatable,
            what="enrollment",
            log_extra={"endpoint": target.endpoint},
        )

    async def _redeem(
        self,
        target: EnrollmentURL,
        root: x509.Certificate,
        csr: x509.CertificateSigningRequest,
        *,
        deadline_s: float,
    ) -> enrollment_pb2.RedeemResponse:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root.public_bytes(serialization.Encoding.PEM)
        )
        channel = secure_channel(target.endpoint, credentials)
        try:
            stub = gateway_pb2_grpc.PeerEnrollmentStub(channel)
            reply: enrollment_pb2.RedeemResponse = await stub.Redeem(
                gateway_pb2.PeerRedeemRequest(
                    token=target.token,
                    csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                ),
                timeout=deadline_s,
            )
        except grpc.aio.AioRpcError as err:
            remote = RemoteError.from_rpc_error(err)
            # Logged too: the operator's call may have gone away (finish_anyway).
            log.warning(
                "enrollment refused or failed",
                extra={
                    "endpoint": target.endpoint,
                    "code": remote.code.name,
                    "reason": remote.reason,
                    "token": token_hint(target.token),
                },
            )
            raise _redeem_error(remote, target) from None
        finally:
            await channel.close()
        return reply


def _check_name(name: str) -> None:
    if _PEER_NAME.fullmatch(name) is None:
        raise invalid_argument(
            PEER_NAME_INVALID,
            f"peer name {name[:64]!r} is not allowed",
            remediation="use --name with 1-128 letters, digits, '.', '_' and '-', starting "
            "with a letter or digit",
            violations=[("name", "letters, digits, '.', '_', '-'")],
        )


def _name_taken(name: str, remote: RemoteError) -> ServiceError:
    """grants-service's refusal to reserve ``name``, told to the operator of `peer add`."""
    until = remote.metadata.get("reserved_until", "")
    if remote.metadata.get("current_state") == "pending":
        message = (
            f"a peer named {name!r} is being added right now (another `peer add` is enrolling "
            "under that name); the enrollment token was not used"
        )
        remediation = (
            "wait for the other `peer add` to finish and check `mosaic federation peer list`, "
            "or pass another --name; the same URL still works until it expires"
            + (f" (if no `peer add` is running, the name comes free at {until})" if until else "")
        )
    else:
        message = f"a peer named {name!r} already exists; the enrollment token was not used"
        remediation = (
            "pass another --name, or remove the old peer first (`mosaic federation peer remove "
            f"{name}`); the same URL still works until it expires"
        )
    return ServiceError(
        grpc.StatusCode.ALREADY_EXISTS,
        PEER_NAME_TAKEN,
        message,
        remediation=remediation,
        metadata={
            k: v for k, v in remote.metadata.items() if k in ("current_state", "reserved_until")
        },
    )


@dataclass(frozen=True)
class _Accepted:
    cert_chain_pem: str  # our certificate, then the intermediates to present with it
    ca_bundle_pem: str  # roots we trust for the serving gateway's TLS certificate
    grant_id: str
    subject_user_id: str
    serial: str


async def fetch_pinned_root(target: EnrollmentURL) -> x509.Certificate:
    """The certificate in the listener's presented chain whose SHA-256 is the pin.

    Verification is off for this one connection: nothing is sent over it, and what it
    yields is trusted only if its hash equals the pin from the enrollment URL.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port, ssl=context),
            PROBE_TIMEOUT_S,
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise unavailable(
            NETWORK,
            f"cannot reach the serving gateway's enrollment listener at {target.endpoint} "
            f"({type(exc).__name__})",
            remediation="check the host and port in the URL, and that the serving gateway "
            "is running and reachable from here",
            metadata={"endpoint": target.endpoint},
        ) from None
    try:
        presented = _presented_chain(writer.get_extra_info("ssl_object"))
    finally:
        # Abort rather than close: a graceful TLS close waits for the server's
        # close_notify, which a gRPC server may never send (asyncio then waits its 30 s
        # SSL shutdown timeout). Nothing was sent on this connection, so nothing is lost.
        writer.transport.abort()
    for der in presented:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            continue
        if sha256_fingerprint(cert) == target.ca_sha256:
            return cert
    raise failed_precondition(
        CA_PIN_MISMATCH,
        f"the enrollment listener at {target.endpoint} does not present a CA root with the "
        "fingerprint in the enrollment URL; nothing was sent and the token was not used",
        remediation=(
            "check that the URL is complete and points at the right gateway; its "
            "administrator can show the fingerprint (federation_root_sha256 of `mosaic init`)"
        ),
        metadata={"endpoint": target.endpoint},
    )


def _presented_chain(ssl_object: ssl.SSLObject | None) -> list[bytes]:
    """DER certificates the server sent, leaf first (unverified)."""
    if ssl_object is None:
        return []
    public = getattr(ssl_object, "get_unverified_chain", None)  # Python 3.13+
    if public is not None:
        return [bytes(c) for c in public() or []]
    # Python 3.10-3.12 have it on the underlying _ssl socket only.
    inner = getattr(ssl_object, "_sslobj", None)
    getter = getattr(inner, "get_unverified_chain", None)
    if getter is None:
        der = ssl_object.getpeercert(binary_form=True)
        return [der] if der else []
    return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in getter() or []]  # type: ignore[attr-defined]


def _csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _not_stored(
    remote: RemoteError, target: EnrollmentURL, accepted: _Accepted, name: str, *, unknown: bool
) -> ServiceError:
    """Enrolled, but the peer is not stored (or grants-service does not say whether)."""
    log.error(
        "enrolled, but the peer may not be stored; the token is spent"
        if unknown
        else "enrolled, but the peer could not be stored; the token is spent",
        extra={"reason": remote.reason, "serial": accepted.serial, "peer_name": name},
    )
    return not_stored(
        remote,
        unknown=unknown,
        done=f"enrolled with {target.endpoint} (the enrollment token was used)",
        what="the peer",
        check=f"check `mosaic federation peer list` for {name!r} with serial {accepted.serial}",
        remediation="the token is spent and the key of its certificate was not kept: ask the "
        f"serving gateway's administrator to revoke grant {accepted.grant_id} and make a new "
        "grant and token, then run `peer add` with the new URL",
        # Not the store's own reason (PEER_NAME_TAKEN would read as "nothing was used").
        reason=None if unknown else PEER_NOT_STORED,
    )


def _redeem_error(remote: RemoteError, target: EnrollmentURL) -> ServiceError:
    """The serving gateway's refusal as it gave it; a transport failure as NETWORK."""
    no_details = remote.reason == remote.code.name
    if no_details and remote.code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        return unavailable(
            NETWORK,
            f"the enrollment call to {target.endpoint} failed ({remote.code.name}); whether "
            "the token was used is not known",
            remediation="run `mosaic federation peer add` again with the same URL; if the "
            "token was used, ask for a new one",
            metadata={"endpoint": target.endpoint},
        )
    return ServiceError(
        remote.code,
        remote.reason,
        f"the serving gateway refused the enrollment: {remote.message}",
        remediation=remote.remediation,
        metadata={"endpoint": target.endpoint},
        violations=remote.violations,
        retry_after_s=remote.retry_after_s,
    )


def _accept(
    reply: enrollment_pb2.RedeemResponse,
    key: ec.EllipticCurvePrivateKey,
    pinned_root: x509.Certificate,
    target: EnrollmentURL,
) -> _Accepted:
    """Check what the serving gateway issued; refuse (INVALID_RESPONSE) anything off."""
    try:
        return _check_reply(reply, key, pinned_root)
    except CertificateRefused as exc:
        log.error(
            "the serving gateway's certificate was refused",
            extra={"endpoint": target.endpoint, "problem": str(exc), "serial": reply.serial},
        )
        raise ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            INVALID_RESPONSE,
            f"the serving gateway at {target.endpoint} issued a certificate that cannot be "
            f"accepted: {exc}",
            remediation=(
                "the enrollment token is spent: ask that gateway's administrator to revoke "
                f"grant {reply.grant_id or '(unknown)'} and make a new grant and token"
            ),
            metadata={"endpoint": target.endpoint},
        ) from None


class CertificateRefused(Exception):
    """What is wrong with a certificate the serving gateway issued."""


def _check_reply(
    reply: enrollment_pb2.RedeemResponse,
    key: ec.EllipticCurvePrivateKey,
    pinned_root: x509.Certificate,
) -> _Accepted:
    leaf, intermediates = verified_leaf(reply.certificate_pem, reply.chain_pem, [pinned_root])
    try:
        identity = grant_identity(leaf)
        reported = (canonical_uuid(reply.grant_id), canonical_uuid(reply.subject_user_id))
    except (InvalidGrantExtension, ValueError) as exc:
        raise CertificateRefused(f"grant identity: {exc}") from None
    if (identity.grant_id, identity.subject_user_id) != reported:
        raise CertificateRefused(
            "the certificate's grant extensions differ from the grant the gateway reported"
        )
    check_own_key(leaf, key)
    serial = serial_hex(leaf.serial_number)
    if reply.serial and reply.serial != serial:
        raise CertificateRefused("the certificate's serial differs from the one reported")
    if _ENDPOINT.fullmatch(reply.federation_endpoint) is None:
        raise CertificateRefused("the federation endpoint is missing or not host:port")
    return _Accepted(
        cert_chain_pem=certs_to_pem([leaf, *intermediates]),
        # The pinned root alone verifies the serving gateway's TLS certificate; whatever
        # else its answer lists is not trusted for it.
        ca_bundle_pem=certs_to_pem([pinned_root]),
        grant_id=identity.grant_id,
        subject_user_id=identity.subject_user_id,
        serial=serial,
    )


def verified_leaf(
    certificate_pem: str,
    chain_pem: Sequence[str],
    trusted_roots: Sequence[x509.Certificate],
    *,
    now: dt.datetime | None = None,
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The issued leaf and its intermediates, once the leaf chains to one of
    ``trusted_roots`` (or to a root the serving gateway sent in ``chain_pem`` over a channel
    that already authenticated it). Raises CertificateRefused.

    Validity is checked at ``now`` (our clock), or at the leaf's start if that is later
    by at most MAX_CLOCK_SKEW: a certificate the serving gateway has just issued (and may
    already have made current) is ours even while our clock is behind its; queries then
    name the clock (client.py). One that starts later than that is refused."""
    try:
        leaf = x509.load_pem_x509_certificate(certificate_pem.encode())
        chain = [x509.load_pem_x509_certificate(pem.encode()) for pem in chain_pem]
    except ValueError:
        raise CertificateRefused("a certificate in the answer does not parse") from None
    intermediates = [c for c in chain if not _self_signed(c)]
    # Roots sent over the pinned channel are vouched for by the gateway we pinned (the
    # step-ca backend issues client certificates under its own root).
    roots = [*trusted_roots, *(c for c in chain if _self_signed(c))]
    now = now or dt.datetime.now(dt.UTC)
    if leaf.not_valid_before_utc > now + MAX_CLOCK_SKEW:
        raise CertificateRefused(
            f"its validity begins at {leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}, more "
            f"than {MAX_CLOCK_SKEW.total_seconds() / 3600:g} h after this machine's clock "
            f"({now:%Y-%m-%dT%H:%M:%SZ})"
        )
    at = max(now, leaf.not_valid_before_utc)
    try:
        verify_chain(leaf, intermediates, roots, at=at)
    except ChainError as exc:
        raise CertificateRefused(str(exc)) from None
    return leaf, intermediates


def check_own_key(leaf: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    """Refuse a certificate that is not for the key this gateway generated."""
    if spki_der(leaf.public_key()) != spki_der(key.public_key()):
        raise CertificateRefused("the certificate is not for the key this gateway generated")


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except Exception:  # a bad signature or an unsupported key type alike: not a root
        return False
    return True
