"""Enrollment: single-use tokens, and the redeem that turns one into an active grant.

Redeem, step by step (only the gateway calls it):

1. claim the token (``unused → redeeming``, one conditional UPDATE: exactly one of any
   number of concurrent redeems wins; the others are told why from the row they lost);
2. read the grant: it must still be pending and bound to the token's peer;
3. have the CA issue the certificate — on failure the claim is released, the token stays
   usable, and the CA's error goes back unchanged (a bad CSR is INVALID_ARGUMENT);
4. in one grants-service transaction activate grant and peer (both conditionally) —
   on failure the just-issued certificate is revoked and the claim released;
5. mark the token used.

A redeem of a spent token (or of one claimed by a redeem whose outcome was not known)
that comes with a CSR for the key the token was spent on, within ``REPEAT_WINDOW`` of the
token's expiry, gets the same answer again (``repeated``): the peer lost the first
answer. Nothing is issued or changed; any other key is refused as before.

Refusals say what happened to *this* token with their own reason code and a generic
message; the grant and peer ids go in the error metadata for the gateway's audit row
(the gateway strips them before answering the peer).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Final

import grpc
from google.protobuf import timestamp_pb2

from enrollment_service import domain
from enrollment_service.store import TokenRow, TokenStore
from mosaic.errors import (
    DEPENDENCY_UNAVAILABLE,
    INVALID_ARGUMENT,
    TOKEN_CHECK_KEY,
    TOKEN_NOT_CHECKED,
    TOKEN_VALID,
    RemoteError,
    ServiceError,
    failed_precondition,
    invalid_argument,
    unavailable,
)
from mosaic.federation.v1 import (
    ca_pb2,
    ca_pb2_grpc,
    enrollment_pb2,
    enrollment_pb2_grpc,
    grants_pb2,
    grants_pb2_grpc,
)
from mosaic.logs import token_hint
from mosaic.pki import csr_public_key
from mosaic.repeats import served_certificate
from mosaic.sqltypes import utcnow

log = logging.getLogger("enrollment_service")

# Deadlines inside one redeem. On the way to an answer: the trust bundle, then GetGrant,
# IssueCertificate and ActivateGrantAndPeer, 30 s in all, below the gateway's deadline
# for the whole redeem (peer_enrollment.REDEEM_TIMEOUT_S, 40 s) and well below
# domain.CLAIM_DURATION (60 s). Nothing slow comes after the activation, so a redeem
# that activated the grant also answers the peer.
GRANTS_TIMEOUT_S: Final = 5.0
CA_TIMEOUT_S: Final = 15.0
TRUST_TIMEOUT_S: Final = 5.0
ABORTED_REASON: Final = "enrollment aborted"

REMEDIATION: Final = (
    "ask the serving gateway's administrator for a new enrollment URL "
    "(`mosaic federation grant token GRANT_ID`)"
)
_STATUS_FOR_REASON: Final = {
    domain.TOKEN_UNKNOWN: grpc.StatusCode.UNAUTHENTICATED,
    domain.TOKEN_EXPIRED: grpc.StatusCode.UNAUTHENTICATED,
    domain.TOKEN_ALREADY_USED: grpc.StatusCode.UNAUTHENTICATED,
    domain.TOKEN_BINDING_MISMATCH: grpc.StatusCode.UNAUTHENTICATED,
    domain.TOKEN_IN_USE: grpc.StatusCode.ABORTED,
    domain.GRANT_NOT_PENDING: grpc.StatusCode.FAILED_PRECONDITION,
}
_GRANT_PENDING = grants_pb2.GRANT_STATUS_PENDING
_ENROLLABLE_PEER_STATES = (grants_pb2.PEER_STATE_PENDING, grants_pb2.PEER_STATE_ACTIVE)


@dataclass
class _Progress:
    """How far one redeem got: once the grant is active, or may be, the claim is never
    released (an unknown outcome lets it lapse by itself)."""

    activated: bool = False
    outcome_unknown: bool = False


class EnrollmentServicer(enrollment_pb2_grpc.EnrollmentServicer):
    def __init__(
        self,
        store: TokenStore,
        grants: grants_pb2_grpc.GrantsStub,
        ca: ca_pb2_grpc.CertificateAuthorityStub,
    ) -> None:
        self._store = store
        self._grants = grants
        self._ca = ca

    # ---- CreateToken -----------------------------------------------------------------

    async def CreateToken(
        self, request: enrollment_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> enrollment_pb2.CreateTokenResponse:
        try:
            ttl = domain.token_ttl(request.ttl_seconds)
        except domain.InvalidTTL as exc:
            raise invalid_argument(
                domain.TOKEN_TTL_INVALID,
                str(exc),
                violations=[("ttl_seconds", f"0 (default) or 1..{domain.MAX_TTL_S}")],
            ) from None
        grant_id = _uuid_argument("grant_id", request.grant_id)
        reply = await self._get_grant(str(grant_id))
        grant, peer = reply.grant, reply.peer
        if grant.status != _GRANT_PENDING:
            raise failed_precondition(
                domain.GRANT_NOT_PENDING,
                f"grant {grant.id} is {_grant_status(grant.status)}; tokens are only made "
                "for pending grants",
                remediation="create a new grant with `mosaic federation grant create`",
                metadata={"current_state": _grant_status(grant.status)},
            )
        if (
            peer.id != grant.peer_id
            or peer.direction != grants_pb2.PEER_DIRECTION_INBOUND
            or peer.state not in _ENROLLABLE_PEER_STATES
        ):
            raise failed_precondition(
                domain.TOKEN_BINDING_MISMATCH,
                f"grant {grant.id}'s peer cannot enroll (it is not a pending or active "
                "gateway we serve)",
                remediation="resume the peer or create a new grant for it",
            )
        now = utcnow()
        new = domain.new_token(now, ttl)
        row = await self._store.create(
            new, grant_id=grant_id, peer_id=uuid.UUID(grant.peer_id), now=now
        )
        log.info(
            "enrollment token created",
            extra={
                "token_id": str(row.id),
                "token": token_hint(new.token),
                "grant_id": str(row.grant_id),
                "peer_id": str(row.peer_id),
                "expires_at": row.expires_at.isoformat(),
            },
        )
        return enrollment_pb2.CreateTokenResponse(
            token=new.token,
            expires_at=_timestamp(row.expires_at),
            grant_id=str(row.grant_id),
            peer_id=str(row.peer_id),
        )

    # ---- Redeem --------------------------------------------------------------------

    async def Redeem(
        self, request: enrollment_pb2.RedeemRequest, context: grpc.aio.ServicerContext
    ) -> enrollment_pb2.RedeemResponse:
        if not request.csr_pem:
            raise invalid_argument(
                "CSR_REQUIRED", "csr_pem is required", violations=[("csr_pem", "is required")]
            )
        token = request.token
        hint = token_hint(token)
        if not domain.is_well_formed_token(token):
            raise _refused(domain.RedeemRefused(domain.TOKEN_UNKNOWN), None, hint)
        token_hash = domain.hash_token(token)
        # Before the claim (nothing slow after activation), so before the token is checked.
        trust = await self._trust_bundle()
        now = utcnow()
        row = await self._store.claim(token_hash, now=now, until=now + domain.CLAIM_DURATION)
        if row is None:
            found = await self._store.find(token_hash)
            if found is not None and found.state != "unused":
                repeated = await self._repeat(found, request.csr_pem, trust, hint)
                if repeated is not None:
                    return repeated
            refusal = domain.refusal_for_unclaimable(found.view() if found else None, utcnow())
            raise _refused(refusal, found, hint)
        progress = _Progress()
        try:
            return await self._redeem_claimed(row, request.csr_pem, hint, progress, trust)
        except BaseException as exc:
            # Whatever stopped the redeem before the grant became active (refusal, CA or
            # grants failure, cancellation), the token goes back to unused. Shielded so a
            # cancelled caller cannot leave the claim behind.
            if not (progress.activated or progress.outcome_unknown):
                await asyncio.shield(self._release(row))
            if isinstance(exc, ServiceError):
                exc.metadata[TOKEN_CHECK_KEY] = TOKEN_VALID  # it was claimed
            raise

    async def _redeem_claimed(
        self,
        row: TokenRow,
        csr_pem: str,
        hint: str,
        progress: _Progress,
        trust: ca_pb2.GetTrustBundleResponse,
    ) -> enrollment_pb2.RedeemResponse:
        # With its certificate, should the grant be active already (a claim taken over).
        grant_reply = await self._get_grant(str(row.grant_id), with_certificate=True)
        grant = grant_reply.grant
        if grant.status != _GRANT_PENDING:
            # A claim taken over after a redeem whose activation outcome was not known:
            # if that activation committed for this peer's key, this is its answer.
            key = csr_public_key(csr_pem)
            repeated = None if key is None else self._repeated_answer(row, grant_reply, key, trust)
            if repeated is not None:
                progress.activated = True
                await asyncio.shield(self._mark_used(row, repeated.serial, hint))
                return repeated
            raise _refused(
                domain.RedeemRefused(
                    domain.GRANT_NOT_PENDING,
                    "the grant this enrollment token is for is no longer pending",
                ),
                row,
                hint,
            )
        if grant.peer_id != str(row.peer_id) or grant.id != str(row.grant_id):
            raise _refused(domain.RedeemRefused(domain.TOKEN_BINDING_MISMATCH), row, hint)

        try:
            issued = await self._ca.IssueCertificate(
                ca_pb2.IssueCertificateRequest(
                    csr_pem=csr_pem,
                    grant_id=grant.id,
                    subject_user_id=grant.subject_user_id,
                    peer_id=grant.peer_id,
                ),
                timeout=CA_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as err:
            remote = RemoteError.from_rpc_error(err)
            log.info(
                "redeem failed at the CA; the token stays usable",
                extra=_ids(row, hint) | {"reason": remote.reason, "code": remote.code.name},
            )
            raise remote.to_service_error() from None

        await self._activate(row, grant, issued, hint, progress)
        progress.activated = True
        await asyncio.shield(self._mark_used(row, issued.serial, hint))
        log.info(
            "enrollment token redeemed",
            extra=_ids(row, hint) | {"serial": issued.serial},
        )
        return _answer(
            grant,
            certificate_pem=issued.certificate_pem,
            chain_pem=list(issued.chain_pem),
            serial=issued.serial,
            not_after=issued.not_after,
            trust=trust,
        )

    async def _mark_used(self, row: TokenRow, serial: str, hint: str) -> None:
        try:
            marked = await self._store.mark_used(row.id, serial=serial, now=utcnow())
        except Exception:
            # The grant is active with this certificate, so a later claim of this token
            # finds the grant no longer pending: still single use. Hand out the result.
            log.exception("could not mark the enrollment token used", extra=_ids(row, hint))
            return
        if not marked:
            log.warning("enrollment token was not marked used", extra=_ids(row, hint))

    # ---- a repeated redeem ---------------------------------------------------------

    async def _repeat(
        self, row: TokenRow, csr_pem: str, trust: ca_pb2.GetTrustBundleResponse, hint: str
    ) -> enrollment_pb2.RedeemResponse | None:
        """The answer to a redeem of a spent (or still claimed) token repeated by the peer
        that spent it, proving it with a CSR for the same key: its first answer was lost.
        None for anyone else, who is refused as before."""
        now = utcnow()
        key = csr_public_key(csr_pem)
        if key is None or now >= row.expires_at + domain.REPEAT_WINDOW:
            return None
        try:
            grant = await self._get_grant(str(row.grant_id), with_certificate=True)
        except ServiceError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return None  # the grant is gone: refused as any spent token
            raise
        repeated = self._repeated_answer(row, grant, key, trust)
        if repeated is None:
            return None
        if row.state == "redeeming" and (row.claimed_until is None or row.claimed_until < now):
            # The redeem that held the claim is gone (its outcome was unknown): finish it.
            await asyncio.shield(self._mark_used(row, repeated.serial, hint))
        log.info("enrollment answered again", extra=_ids(row, hint) | {"serial": repeated.serial})
        return repeated

    @staticmethod
    def _repeated_answer(
        row: TokenRow,
        reply: grants_pb2.GetGrantResponse,
        key: bytes,
        trust: ca_pb2.GetTrustBundleResponse,
    ) -> enrollment_pb2.RedeemResponse | None:
        """The answer again if this token's grant is active, bound to its active peer, and
        still served with the certificate the token was spent on, and that certificate is
        for ``key`` (the CSR's, DER SPKI). The certificate is the grant's own (grants-service
        keeps one per grant; mosaic.repeats), so the peer's other grants do not matter."""
        grant, peer = reply.grant, reply.peer
        if (
            grant.status != grants_pb2.GRANT_STATUS_ACTIVE
            or grant.id != str(row.grant_id)
            or grant.peer_id != str(row.peer_id)
            or peer.id != grant.peer_id
            or peer.state != grants_pb2.PEER_STATE_ACTIVE  # a suspended peer is refused
            or row.used_by_serial not in (None, grant.cert_serial)
        ):
            return None
        current = served_certificate(reply, key)
        if current is None:
            return None
        return _answer(
            grant,
            certificate_pem=current.pem,
            chain_pem=list(trust.intermediates_pem),
            serial=grant.cert_serial,
            not_after=current.not_after,
            trust=trust,
            repeated=True,
        )

    async def _activate(
        self,
        row: TokenRow,
        grant: grants_pb2.Grant,
        issued: ca_pb2.IssueCertificateResponse,
        hint: str,
        progress: _Progress,
    ) -> None:
        """Activate grant and peer with the new certificate; revoke it if that fails.

        When neither the call nor a read-back says whether the activation committed, the
        certificate is kept and the token's claim left to lapse: revoking a certificate a
        committed activation made current would leave the grant active with a dead
        certificate and the token refused (GRANT_NOT_PENDING), with no retry possible."""
        request = grants_pb2.ActivateGrantAndPeerRequest(
            grant_id=grant.id,
            peer_id=grant.peer_id,
            cert_serial=issued.serial,
            cert_pem=issued.certificate_pem,
            cert_not_after=issued.not_after,
            token_id=str(row.id),
        )
        try:
            await self._grants.ActivateGrantAndPeer(request, timeout=GRANTS_TIMEOUT_S)
            return
        except grpc.aio.AioRpcError as err:
            remote = RemoteError.from_rpc_error(err)
        except asyncio.CancelledError:
            await asyncio.shield(self._settle_cancelled(row, grant, issued, hint, progress))
            raise
        if remote.code not in _DEFINITE_REFUSALS:
            activated = await self._activated_with(grant.id, issued.serial)
            if activated:
                return  # the transaction committed but its answer was lost
            if activated is None:
                progress.outcome_unknown = True
                log.warning(
                    "activation outcome unknown; certificate kept, token claim left to lapse",
                    extra=_ids(row, hint) | {"reason": remote.reason, "serial": issued.serial},
                )
                raise unavailable(
                    DEPENDENCY_UNAVAILABLE,
                    "grants-service did not confirm the activation",
                    remediation="try again in a minute",
                    retry_after_s=domain.CLAIM_DURATION.total_seconds(),
                )
        log.info(
            "activation refused; revoking the certificate just issued",
            extra=_ids(row, hint) | {"reason": remote.reason, "serial": issued.serial},
        )
        await self._undo_issuance(row, grant, issued, hint)
        raise remote.to_service_error()

    async def _settle_cancelled(
        self,
        row: TokenRow,
        grant: grants_pb2.Grant,
        issued: ca_pb2.IssueCertificateResponse,
        hint: str,
        progress: _Progress,
    ) -> None:
        """The caller went away during activation: finish whichever way it went (and when
        that cannot be told, leave both the certificate and the claim as they are)."""
        activated = await self._activated_with(grant.id, issued.serial)
        if activated:
            progress.activated = True
            await self._store.mark_used(row.id, serial=issued.serial, now=utcnow())
        elif activated is None:
            progress.outcome_unknown = True
        else:
            await self._undo_issuance(row, grant, issued, hint)

    async def _activated_with(self, grant_id: str, serial: str) -> bool | None:
        """Whether the grant is active with ``serial``; None when grants-service does not
        say."""
        try:
            reply = await self._grants.GetGrant(
                grants_pb2.GetGrantRequest(id=grant_id), timeout=GRANTS_TIMEOUT_S
            )
        except grpc.aio.AioRpcError:
            return None
        return (
            reply.grant.status == grants_pb2.GRANT_STATUS_ACTIVE
            and reply.grant.cert_serial == serial
        )

    async def _undo_issuance(
        self,
        row: TokenRow,
        grant: grants_pb2.Grant,
        issued: ca_pb2.IssueCertificateResponse,
        hint: str,
    ) -> None:
        try:
            await self._ca.RevokeCertificate(
                ca_pb2.RevokeCertificateRequest(serial=issued.serial, reason=ABORTED_REASON),
                timeout=CA_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as err:
            # It is recorded as issued for a grant that never became active; the grant
            # cannot be activated with it any more, so it opens nothing.
            log.error(
                "could not revoke the certificate of an aborted enrollment",
                extra=_ids(row, hint) | {"serial": issued.serial, "code": err.code().name},
            )

    async def _release(self, row: TokenRow) -> None:
        try:
            await self._store.release(row, failed=True)
        except Exception:
            log.exception(
                "could not release an enrollment token claim; it frees itself when the "
                "claim times out",
                extra={"token_id": str(row.id)},
            )

    async def _get_grant(
        self, grant_id: str, *, with_certificate: bool = False
    ) -> grants_pb2.GetGrantResponse:
        try:
            reply: grants_pb2.GetGrantResponse = await self._grants.GetGrant(
                grants_pb2.GetGrantRequest(id=grant_id, with_certificate=with_certificate),
                timeout=GRANTS_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as err:
            remote = RemoteError.from_rpc_error(err)
            if remote.code == grpc.StatusCode.NOT_FOUND:
                raise ServiceError(
                    grpc.StatusCode.NOT_FOUND,
                    remote.reason,
                    f"no grant {grant_id}",
                    remediation="list grants with `mosaic federation grant list`",
                ) from None
            raise remote.to_service_error() from None
        return reply

    async def _trust_bundle(self) -> ca_pb2.GetTrustBundleResponse:
        try:
            reply: ca_pb2.GetTrustBundleResponse = await self._ca.GetTrustBundle(
                ca_pb2.GetTrustBundleRequest(), timeout=TRUST_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as err:
            # Asked before the token is claimed: refusing now spends nothing, while
            # enrolling without the root (step-ca's) would hand the peer a chain it
            # cannot verify after the grant is active.
            log.warning("trust bundle unavailable", extra={"code": err.code().name})
            raise unavailable(
                DEPENDENCY_UNAVAILABLE,
                "the certificate authority is not answering",
                remediation="retry shortly; the enrollment token is still unused",
                retry_after_s=5.0,
                metadata={TOKEN_CHECK_KEY: TOKEN_NOT_CHECKED},
            ) from None
        return reply


# A refusal that certainly did not commit (anything else may have committed unseen).
_DEFINITE_REFUSALS: Final = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


def _answer(
    grant: grants_pb2.Grant,
    *,
    certificate_pem: str,
    chain_pem: list[str],
    serial: str,
    not_after: timestamp_pb2.Timestamp,
    trust: ca_pb2.GetTrustBundleResponse,
    repeated: bool = False,
) -> enrollment_pb2.RedeemResponse:
    # With the step-ca backend the client certificate chains to step-ca's root, not to
    # the root the peer pinned: send that root along (over the pinned channel) so the
    # peer can verify the whole chain.
    if trust.root_pem and trust.root_sha256 != trust.server_root_sha256:
        chain_pem.append(trust.root_pem)
    return enrollment_pb2.RedeemResponse(
        certificate_pem=certificate_pem,
        chain_pem=chain_pem,
        grant_id=grant.id,
        subject_user_id=grant.subject_user_id,
        peer_id=grant.peer_id,
        serial=serial,
        not_after=not_after,
        repeated=repeated,
    )


def _refused(refusal: domain.RedeemRefused, row: TokenRow | None, hint: str) -> ServiceError:
    metadata: dict[str, str] = {}
    if row is not None:
        metadata = {"grant_id": str(row.grant_id), "peer_id": str(row.peer_id)}
    log.info(
        "redeem refused",
        extra={"reason": refusal.reason, "token": hint}
        | ({"token_id": str(row.id)} if row is not None else {}),
    )
    return ServiceError(
        _STATUS_FOR_REASON[refusal.reason],
        refusal.reason,
        refusal.message,
        remediation=REMEDIATION,
        metadata=metadata,
    )


def _ids(row: TokenRow, hint: str) -> dict[str, str]:
    return {
        "token_id": str(row.id),
        "token": hint,
        "grant_id": str(row.grant_id),
        "peer_id": str(row.peer_id),
    }


def _uuid_argument(field: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise invalid_argument(
            INVALID_ARGUMENT,
            f"{field} must be a UUID",
            violations=[(field, "must be a UUID (8-4-4-4-12 hex digits)")],
        ) from None


def _grant_status(status: grants_pb2.GrantStatus.ValueType) -> str:
    name: str = grants_pb2.GrantStatus.Name(status)
    return name.removeprefix("GRANT_STATUS_").lower()


def _timestamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp
