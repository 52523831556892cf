"""FederationAdmin: grants, peers and seal rotation, forwarded to grants-service."""

from __future__ import annotations

import logging

import grpc

from federation_gateway.admin.base import AdminBase
from mosaic.config import GRANTS
from mosaic.errors import DEPENDENCY_UNAVAILABLE, ServiceError, unavailable
from mosaic.federation.v1 import ca_pb2, gateway_pb2, grants_pb2
from mosaic.x509ext import MAX_REVOCATION_REASON, revocation_reason

log = logging.getLogger("mosaic.admin")

# grants-service's refusals of RevokeGrant for a grant that no longer serves anyone.
_NO_LONGER_USABLE = frozenset({"GRANT_ALREADY_REVOKED", "GRANT_EXPIRED"})
# grants-service's refusal to revoke a revoked peer.
_PEER_ALREADY_REVOKED = "PEER_ALREADY_REVOKED"
# (message, remediation) of a CA that does not answer, by what the caller was doing.
_NOTHING_REMOVED = (
    "ca-service did not revoke the certificates; nothing was removed",
    "run the command again once ca-service answers (`mosaic gateway doctor`); "
    "`peer suspend` stops the peer meanwhile",
)
_REVOKED_BUT_NOT_AT_THE_CA = (
    "the grant is revoked, but ca-service did not revoke its certificates",
    "run `grant revoke` again once ca-service answers (`mosaic gateway doctor`); the grant "
    "refuses every request meanwhile",
)
_PEER_REVOKED_BUT_NOT_AT_THE_CA = (
    "the peer is revoked, but ca-service did not revoke its grants' certificates",
    "revoke the peer again once ca-service answers (`mosaic gateway doctor`); the peer is "
    "refused meanwhile",
)


class GrantsAdminMixin(AdminBase):
    """The operator's grant and peer commands; grants-service decides, errors pass through."""

    async def CreateGrant(
        self, request: grants_pb2.CreateGrantRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.CreateGrantResponse:
        return await self.forward(self.grants.CreateGrant(request))

    async def GetGrant(
        self, request: grants_pb2.GetGrantRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.GetGrantResponse:
        return await self.forward(self.grants.GetGrant(request))

    async def ListGrants(
        self, request: grants_pb2.ListGrantsRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.ListGrantsResponse:
        return await self.forward(self.grants.ListGrants(request))

    async def RevokeGrant(
        self, request: grants_pb2.RevokeGrantRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.RevokeGrantResponse:
        """Revoke the grant, then every certificate issued for it.

        The grant's status alone already stops every request; revoking the
        certificates too puts their serials on every gateway's revoked set and, with
        step-ca, at the CA. A CA that does not answer then is said (UNAVAILABLE, the grant
        revoked all the same): the operator runs the revoke again, which does the rest.
        """
        try:
            reply = await self.forward(self.grants.RevokeGrant(request))
        except ServiceError as exc:
            if exc.reason in _NO_LONGER_USABLE:
                # Revoked (or expired) before: revoking its certificates again is harmless
                # at the CA, and retries what a CA outage then may have left undone. This
                # retry is what the operator runs to finish that: a CA that is still down
                # is said, not taken for "revoked already, nothing to do".
                await self._revoke_certificates(
                    [request.id],
                    request.reason or "grant revoked",
                    strict=_REVOKED_BUT_NOT_AT_THE_CA,
                )
            raise
        await self._revoke_certificates(
            [reply.grant.id],
            request.reason or "grant revoked",
            strict=_REVOKED_BUT_NOT_AT_THE_CA,
        )
        return reply

    async def GetPeer(
        self, request: grants_pb2.GetPeerRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.GetPeerResponse:
        return await self.forward(self.grants.GetPeer(request))

    async def ListPeers(
        self, request: grants_pb2.ListPeersRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.ListPeersResponse:
        return await self.forward(self.grants.ListPeers(request))

    async def SetPeerState(
        self, request: grants_pb2.SetPeerStateRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.SetPeerStateResponse:
        """Suspend, resume or revoke a peer. Revoking also revokes the certificates of
        every grant of the peer at the CA; a CA that does not answer is said (the peer
        revoked all the same), and revoking the revoked peer again, which grants-service
        refuses as PEER_ALREADY_REVOKED, revokes them again first, as `grant revoke` does."""
        revoking = request.state == grants_pb2.PEER_STATE_REVOKED
        reason = request.reason or "peer revoked"
        try:
            reply = await self.forward(self.grants.SetPeerState(request))
        except ServiceError as exc:
            if revoking and exc.reason == _PEER_ALREADY_REVOKED:
                peer = await self.forward(
                    self.grants.GetPeer(grants_pb2.GetPeerRequest(id=request.id))
                )
                await self._revoke_peer_certificates(peer.peer.id, reason)
            raise
        if revoking:
            await self._revoke_peer_certificates(reply.peer.id, reason)
        return reply

    async def _revoke_peer_certificates(self, peer_id: str, reason: str) -> None:
        grants = await self.forward(
            self.grants.ListGrants(grants_pb2.ListGrantsRequest(peer_id=peer_id))
        )
        await self._revoke_certificates(
            [g.id for g in grants.grants], reason, strict=_PEER_REVOKED_BUT_NOT_AT_THE_CA
        )

    async def _revoke_certificates(
        self, grant_ids: list[str], reason: str, *, strict: tuple[str, str] | None = None
    ) -> None:
        """Revoke every certificate issued for these grants at the CA.

        Best effort unless ``strict``: a CA that is down must not undo a revocation that
        already holds (a retry of the revoke does it again). ``strict`` (message,
        remediation) raises UNAVAILABLE with them at the first failure, for a caller that
        must not report success without the CA: one that has not yet changed anything, or
        one that has revoked a grant or a peer (the operator runs it again to finish).

        The CA records a reason of at most MAX_REVOCATION_REASON characters; grants-service
        keeps the operator's whole text, so a longer one is shortened here, not refused.
        """
        reason = revocation_reason(reason)
        if len(reason) > MAX_REVOCATION_REASON:
            reason = reason[: MAX_REVOCATION_REASON - 1] + "…"
        for grant_id in grant_ids:
            try:
                await self.ca.RevokeCertificate(
                    ca_pb2.RevokeCertificateRequest(grant_id=grant_id, reason=reason)
                )
            except grpc.aio.AioRpcError as err:
                log.warning(
                    "certificates of a revoked grant not revoked at the CA",
                    extra={"grant_id": grant_id, "code": err.code().name},
                )
                if strict is not None:
                    message, remediation = strict
                    raise unavailable(
                        DEPENDENCY_UNAVAILABLE, message, remediation=remediation, retry_after_s=1.0
                    ) from None

    async def RemovePeer(
        self, request: grants_pb2.RemovePeerRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.RemovePeerResponse:
        """Revoke every certificate issued for the peer's grants, then remove the peer and
        its grants.

        In that order: once the grants are gone nothing can name them to the CA any more,
        so a CA that is down stops the removal (nothing changed; run it again) rather than
        leave their certificates unrevoked for good. Every grant grants-service removed is
        revoked again afterwards, best effort (revoking is idempotent at the CA; the
        gateways refuse its certificates anyway: the grant is gone): a redeem of a pending
        grant may have issued its certificate after the first pass, or a grant may have
        been made in between."""
        peer = await self.forward(self.grants.GetPeer(grants_pb2.GetPeerRequest(id=request.id)))
        if peer.peer.direction == grants_pb2.PEER_DIRECTION_INBOUND:
            grants = await self.forward(
                self.grants.ListGrants(grants_pb2.ListGrantsRequest(peer_id=peer.peer.id))
            )
            await self._revoke_certificates(
                [g.id for g in grants.grants], "peer removed", strict=_NOTHING_REMOVED
            )
        reply = await self.forward(self.grants.RemovePeer(request))
        await self._revoke_certificates(list(reply.removed_grant_ids), "peer removed")
        return reply

    async def RotateSeal(
        self, request: gateway_pb2.RotateSealRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.RotateSealResponse:
        """Re-seal the sealed columns of every service that has them (only grants-service).

        The CA's sealed key files are not in any database: `mosaic seal rotate` re-seals
        them in the CLI process, on the host that holds the instance home.
        """
        reply = await self.forward(self.grants.Reseal(grants_pb2.ResealRequest()))
        return gateway_pb2.RotateSealResponse(resealed={GRANTS: reply.resealed})
