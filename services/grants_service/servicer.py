"""The Grants gRPC API: proto in, domain/store call, proto out, errors mapped to ServiceError."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from grants_service import domain
from grants_service.store import GrantRow, GrantsStore, PeerRow
from mosaic.config import ConfigError
from mosaic.errors import (
    ServiceError,
    failed_precondition,
    invalid_argument,
    not_found,
)
from mosaic.federation.v1 import grants_pb2, grants_pb2_grpc
from mosaic.sealing import Sealer, SealError, seal_context
from mosaic.sqltypes import utcnow

log = logging.getLogger("grants_service")

SEALED_KEY_TABLE = "federation_peers"
SEALED_KEY_COLUMN = "sealed_client_key"

_GRANT_STATUS_TO_PROTO = {
    "pending": grants_pb2.GRANT_STATUS_PENDING,
    "active": grants_pb2.GRANT_STATUS_ACTIVE,
    "revoked": grants_pb2.GRANT_STATUS_REVOKED,
    "expired": grants_pb2.GRANT_STATUS_EXPIRED,
}
_GRANT_STATUS_FROM_PROTO = {v: k for k, v in _GRANT_STATUS_TO_PROTO.items()}
_PEER_STATE_TO_PROTO = {
    "pending": grants_pb2.PEER_STATE_PENDING,
    "active": grants_pb2.PEER_STATE_ACTIVE,
    "suspended": grants_pb2.PEER_STATE_SUSPENDED,
    "revoked": grants_pb2.PEER_STATE_REVOKED,
}
_PEER_STATE_FROM_PROTO = {v: k for k, v in _PEER_STATE_TO_PROTO.items()}
_DIRECTION_TO_PROTO = {
    "inbound": grants_pb2.PEER_DIRECTION_INBOUND,
    "outbound": grants_pb2.PEER_DIRECTION_OUTBOUND,
}
_DIRECTION_FROM_PROTO = {v: k for k, v in _DIRECTION_TO_PROTO.items()}


def sealed_key_context(peer_id: uuid.UUID) -> str:
    """Where a peer's sealed client key lives; a blob moved to another row will not open."""
    return seal_context(SEALED_KEY_TABLE, SEALED_KEY_COLUMN, str(peer_id))


# Changes queued for one WatchChanges subscriber before it is cut off as stalled.
MAX_PENDING_CHANGES = 10_000


class ChangeNotifier:
    """Tells WatchChanges subscribers which grants and peers changed, within this process.

    One grants-service process sees every change it makes. With several replicas a
    subscriber hears only the replica it is connected to; the gateway's short cache TTL
    bounds how long another replica's change can go unnoticed.
    """

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[grants_pb2.WatchChangesResponse | None]] = set()

    def publish(
        self, *, grant_ids: Iterable[uuid.UUID] = (), peer_ids: Iterable[uuid.UUID] = ()
    ) -> None:
        change = grants_pb2.WatchChangesResponse(
            grant_ids=[str(i) for i in grant_ids], peer_ids=[str(i) for i in peer_ids]
        )
        if not change.grant_ids and not change.peer_ids:
            return
        for queue in list(self._queues):
            try:
                queue.put_nowait(change)
            except asyncio.QueueFull:
                # A subscriber this far behind is cut off rather than grown without end:
                # its stream ends, and a watcher that reconnects drops what it cached.
                self._queues.discard(queue)
                _end(queue)

    async def subscribe(self) -> AsyncGenerator[grants_pb2.WatchChangesResponse, None]:
        """Yield changes until the notifier closes; the first message is empty (subscribed)."""
        queue: asyncio.Queue[grants_pb2.WatchChangesResponse | None] = asyncio.Queue(
            MAX_PENDING_CHANGES
        )
        self._queues.add(queue)
        try:
            yield grants_pb2.WatchChangesResponse()
            while (change := await queue.get()) is not None:
                yield change
        finally:
            self._queues.discard(queue)

    def close(self) -> None:
        for queue in self._queues:
            _end(queue)

    async def close_when_cancelled(self) -> None:
        """A background job: when the service stops, end every stream so shutdown is prompt."""
        try:
            await asyncio.Event().wait()
        finally:
            self.close()


def _end(queue: asyncio.Queue[grants_pb2.WatchChangesResponse | None]) -> None:
    """End a subscriber's stream now: what is still queued for it is dropped."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)


class GrantsServicer(grants_pb2_grpc.GrantsServicer):
    def __init__(
        self,
        store: GrantsStore,
        sealer: Sealer,
        notifier: ChangeNotifier,
        *,
        sealer_on_disk: Callable[[], Sealer],
    ) -> None:
        self._store = store
        self._sealer = sealer
        self._notifier = notifier
        # Reads the seal secret files again: Reseal refuses to run while this process still
        # holds an older secret than the home (not restarted after a rotation step).
        self._sealer_on_disk = sealer_on_disk

    # ---- grants --------------------------------------------------------------------

    async def CreateGrant(
        self, request: grants_pb2.CreateGrantRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.CreateGrantResponse:
        now = utcnow()
        try:
            new = domain.validate_new_grant(
                subject_user_id=request.subject_user_id,
                peer_name=request.peer_name,
                scope_json=request.scope_json,
                allow_sensitive=request.allow_sensitive,
                expires_at=_from_ts(request, "expires_at", domain.GRANT_REQUEST_INVALID),
                now=now,
            )
            grant, peer, created = await self._store.create_grant(new, now=now)
        except (domain.InvalidGrantRequest, domain.TransitionRefused) as exc:
            raise _mapped(exc) from None
        if grant.sensitive:
            log.warning(
                "sensitive grant created",
                extra={
                    "grant_id": str(grant.id),
                    "peer_id": str(peer.id),
                    "sensitive_resources": ",".join(sorted(new.scope.sensitive_resources)),
                },
            )
        else:
            log.info("grant created", extra={"grant_id": str(grant.id), "peer_id": str(peer.id)})
        self._notifier.publish(grant_ids=[grant.id], peer_ids=[peer.id] if created else [])
        return grants_pb2.CreateGrantResponse(grant=grant_proto(grant), peer=peer_proto(peer))

    async def GetGrant(
        self, request: grants_pb2.GetGrantRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.GetGrantResponse:
        grant_id = _uuid("id", request.id)
        await self._expire(grant_id)
        try:
            grant = await self._store.get_grant(grant_id)
            peer = await self._store.get_peer(str(grant.peer_id))
        except (domain.GrantNotFound, domain.PeerNotFound) as exc:
            raise _mapped(exc) from None
        certificate = (
            grants_pb2.GrantCertificate(pem=grant.cert_pem, not_after=_ts(grant.cert_not_after))
            if request.with_certificate and grant.cert_pem
            else None
        )
        return grants_pb2.GetGrantResponse(
            grant=grant_proto(grant), peer=peer_proto(peer), certificate=certificate
        )

    async def ListGrants(
        self, request: grants_pb2.ListGrantsRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.ListGrantsResponse:
        peer_id = _uuid("peer_id", request.peer_id) if request.peer_id else None
        status = None
        if request.status != grants_pb2.GRANT_STATUS_UNSPECIFIED:
            status = _enum("status", request.status, _GRANT_STATUS_FROM_PROTO)
        await self._expire(None)
        grants = await self._store.list_grants(peer_id=peer_id, status=status)
        return grants_pb2.ListGrantsResponse(grants=[grant_proto(g) for g in grants])

    async def RevokeGrant(
        self, request: grants_pb2.RevokeGrantRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.RevokeGrantResponse:
        grant_id = _uuid("id", request.id)
        reason = _reason(request.reason)
        await self._expire(grant_id)
        try:
            grant = await self._store.revoke_grant(grant_id, reason=reason, now=utcnow())
        except (domain.GrantNotFound, domain.TransitionRefused) as exc:
            raise _mapped(exc) from None
        log.info("grant revoked", extra={"grant_id": str(grant.id)})
        self._notifier.publish(grant_ids=[grant.id])
        return grants_pb2.RevokeGrantResponse(grant=grant_proto(grant))

    async def ActivateGrantAndPeer(
        self, request: grants_pb2.ActivateGrantAndPeerRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.ActivateGrantAndPeerResponse:
        grant_id = _uuid("grant_id", request.grant_id)
        peer_id = _uuid("peer_id", request.peer_id)
        token_id = _uuid("token_id", request.token_id) if request.token_id else None
        if not request.cert_serial or not request.cert_pem:
            raise invalid_argument(
                "CERTIFICATE_REQUIRED",
                "cert_serial and cert_pem are required",
                violations=[
                    (f, "is required")
                    for f in ("cert_serial", "cert_pem")
                    if not getattr(request, f)
                ],
            )
        await self._expire(grant_id)
        try:
            grant, peer = await self._store.activate_grant_and_peer(
                grant_id=grant_id,
                peer_id=peer_id,
                cert_serial=request.cert_serial,
                cert_pem=request.cert_pem,
                cert_not_after=_from_ts(request, "cert_not_after"),
                token_id=token_id,
                now=utcnow(),
            )
        except (domain.GrantNotFound, domain.PeerNotFound, domain.TransitionRefused) as exc:
            raise _mapped(exc) from None
        log.info(
            "grant and peer activated",
            extra={"grant_id": str(grant.id), "peer_id": str(peer.id), "serial": peer.cert_serial},
        )
        self._notifier.publish(grant_ids=[grant.id], peer_ids=[peer.id])
        return grants_pb2.ActivateGrantAndPeerResponse(
            grant=grant_proto(grant), peer=peer_proto(peer)
        )

    # ---- peers ---------------------------------------------------------------------

    async def GetPeer(
        self, request: grants_pb2.GetPeerRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.GetPeerResponse:
        if not request.id:
            raise invalid_argument("PEER_REQUIRED", "id (peer id or name) is required")
        try:
            peer = await self._store.get_peer(request.id)
        except domain.PeerNotFound as exc:
            raise _mapped(exc) from None
        return grants_pb2.GetPeerResponse(peer=peer_proto(peer))

    async def ListPeers(
        self, request: grants_pb2.ListPeersRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.ListPeersResponse:
        direction = state = None
        if request.direction != grants_pb2.PEER_DIRECTION_UNSPECIFIED:
            direction = _enum("direction", request.direction, _DIRECTION_FROM_PROTO)
        if request.state != grants_pb2.PEER_STATE_UNSPECIFIED:
            state = _enum("state", request.state, _PEER_STATE_FROM_PROTO)
        peers = await self._store.list_peers(direction=direction, state=state)
        return grants_pb2.ListPeersResponse(peers=[peer_proto(p) for p in peers])

    async def SetPeerState(
        self, request: grants_pb2.SetPeerStateRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.SetPeerStateResponse:
        target = _enum("state", request.state, _PEER_STATE_FROM_PROTO)
        if target == "pending":
            raise invalid_argument(
                "PEER_STATE_INVALID",
                "a peer cannot be set back to pending",
                violations=[("state", "must be active, suspended or revoked")],
            )
        reason = _reason(request.reason)
        peer_id = await self._peer_id(request.id)
        try:
            peer, revoked = await self._store.set_peer_state(
                peer_id, target=target, reason=reason, now=utcnow()
            )
        except (domain.PeerNotFound, domain.GrantNotFound, domain.TransitionRefused) as exc:
            raise _mapped(exc) from None
        log.info(
            "peer state changed",
            extra={"peer_id": str(peer.id), "state": peer.state, "grants_revoked": len(revoked)},
        )
        self._notifier.publish(grant_ids=revoked, peer_ids=[peer.id])
        return grants_pb2.SetPeerStateResponse(peer=peer_proto(peer))

    async def RemovePeer(
        self, request: grants_pb2.RemovePeerRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.RemovePeerResponse:
        peer_id = await self._peer_id(request.id)
        try:
            peer, grant_ids = await self._store.remove_peer(peer_id, now=utcnow())
        except domain.PeerNotFound as exc:
            raise _mapped(exc) from None
        log.info("peer removed", extra={"peer_id": str(peer.id), "grants_removed": len(grant_ids)})
        self._notifier.publish(grant_ids=grant_ids, peer_ids=[peer.id])
        return grants_pb2.RemovePeerResponse(
            peer=peer_proto(peer), removed_grant_ids=[str(g) for g in grant_ids]
        )

    async def ReserveOutboundPeer(
        self, request: grants_pb2.ReserveOutboundPeerRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.ReserveOutboundPeerResponse:
        """Hold a name for an enrollment before its token is spent (the gateway's `peer
        add`): of concurrent enrollments under one name, on any gateway replica, one goes
        on and the others are refused while their tokens are still unused."""
        problem = domain.validate_peer_name(request.name)
        if problem is not None:
            raise invalid_argument(
                "PEER_REQUEST_INVALID",
                f"invalid peer: name: {problem}",
                violations=[("name", problem)],
            )
        try:
            peer = await self._store.reserve_outbound_peer(request.name, now=utcnow())
        except domain.PeerNameTaken as exc:
            raise _mapped(exc) from None
        log.info("outbound peer name reserved", extra={"peer_id": str(peer.id)})
        self._notifier.publish(peer_ids=[peer.id])
        return grants_pb2.ReserveOutboundPeerResponse(
            peer=peer_proto(peer),
            reserved_until=_ts(domain.reservation_end(peer.direction, peer.state, peer.updated_at)),
        )

    async def ReleaseOutboundPeer(
        self, request: grants_pb2.ReleaseOutboundPeerRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.ReleaseOutboundPeerResponse:
        reservation_id = _uuid("reservation_id", request.reservation_id)
        released = await self._store.release_outbound_peer(reservation_id)
        if released:
            log.info("outbound peer name released", extra={"peer_id": str(reservation_id)})
            self._notifier.publish(peer_ids=[reservation_id])
        return grants_pb2.ReleaseOutboundPeerResponse(released=released)

    async def RegisterOutboundPeer(
        self, request: grants_pb2.RegisterOutboundPeerRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.RegisterOutboundPeerResponse:
        try:
            new = domain.validate_outbound_peer(
                name=request.name,
                endpoint=request.endpoint,
                cert_pem=request.cert_pem,
                ca_bundle_pem=request.ca_bundle_pem,
                client_key_pem=request.client_key_pem,
                remote_grant_id=request.remote_grant_id,
                remote_subject_user_id=request.remote_subject_user_id,
            )
        except domain.InvalidGrantRequest as exc:
            raise _mapped(exc) from None
        reserved = bool(request.reservation_id)
        peer_id = _uuid("reservation_id", request.reservation_id) if reserved else uuid.uuid4()
        sealed = self._sealer.seal(new.client_key_pem.encode(), sealed_key_context(peer_id))
        try:
            peer = await self._store.register_outbound_peer(
                peer_id, new, sealed_key=sealed, now=utcnow(), reserved=reserved
            )
        except (domain.PeerNameTaken, domain.PeerReservationLost) as exc:
            raise _mapped(exc) from None
        log.info("outbound peer registered", extra={"peer_id": str(peer.id)})
        self._notifier.publish(peer_ids=[peer.id])
        return grants_pb2.RegisterOutboundPeerResponse(peer=peer_proto(peer))

    async def RotatePeerCertificate(
        self, request: grants_pb2.RotatePeerCertificateRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.RotatePeerCertificateResponse:
        """Renewal (serving side): the grant's current certificate becomes the new one, only
        if it is still ``expected_serial``, and so does the inbound peer's latest; concurrent
        renewals have one winner and the others get FAILED_PRECONDITION CERT_NOT_CURRENT."""
        peer_id = _uuid("peer_id", request.peer_id)
        grant_id = _uuid("grant_id", request.grant_id)
        if not request.expected_serial:
            raise invalid_argument(
                "EXPECTED_SERIAL_REQUIRED",
                "expected_serial is required",
                violations=[("expected_serial", "is required")],
            )
        try:
            new = domain.validate_new_certificate(request.cert_pem)
        except domain.InvalidGrantRequest as exc:
            raise _mapped(exc) from None
        if request.cert_serial and request.cert_serial != new.cert_serial:
            raise invalid_argument(
                "CERT_SERIAL_MISMATCH",
                "cert_serial differs from the certificate's serial",
                violations=[("cert_serial", "must be the serial of cert_pem")],
            )
        try:
            peer = await self._store.rotate_peer_certificate(
                peer_id,
                grant_id=grant_id,
                expected_serial=request.expected_serial,
                new=new,
                now=utcnow(),
            )
        except (domain.PeerNotFound, domain.TransitionRefused) as exc:
            raise _mapped(exc) from None
        log.info(
            "peer certificate rotated",
            extra={
                "peer_id": str(peer.id),
                "old_serial": request.expected_serial,
                "serial": peer.cert_serial,
            },
        )
        self._notifier.publish(grant_ids=[grant_id], peer_ids=[peer.id])
        return grants_pb2.RotatePeerCertificateResponse(peer=peer_proto(peer))

    async def UpdateOutboundPeerCredentials(
        self,
        request: grants_pb2.UpdateOutboundPeerCredentialsRequest,
        context: grpc.aio.ServicerContext,
    ) -> grants_pb2.UpdateOutboundPeerCredentialsResponse:
        """Renewal (querying side): store an outbound peer's new certificate and CA bundle, and
        its new key sealed bound to the peer's row."""
        peer_id = _uuid("peer_id", request.peer_id)
        try:
            new = domain.validate_new_certificate(request.cert_pem, request.client_key_pem)
        except domain.InvalidGrantRequest as exc:
            raise _mapped(exc) from None
        if not request.ca_bundle_pem.strip():
            raise invalid_argument(
                "CA_BUNDLE_REQUIRED",
                "ca_bundle_pem is required",
                violations=[("ca_bundle_pem", "is required")],
            )
        sealed = self._sealer.seal(request.client_key_pem.encode(), sealed_key_context(peer_id))
        try:
            peer = await self._store.update_outbound_credentials(
                peer_id,
                new=new,
                ca_bundle_pem=request.ca_bundle_pem,
                sealed_key=sealed,
                now=utcnow(),
            )
        except (domain.PeerNotFound, domain.TransitionRefused) as exc:
            raise _mapped(exc) from None
        log.info(
            "outbound peer credentials updated",
            extra={"peer_id": str(peer.id), "serial": peer.cert_serial},
        )
        self._notifier.publish(peer_ids=[peer.id])
        return grants_pb2.UpdateOutboundPeerCredentialsResponse(peer=peer_proto(peer))

    async def GetPeerCredentials(
        self, request: grants_pb2.GetPeerCredentialsRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.GetPeerCredentialsResponse:
        peer_id = await self._peer_id(request.id)
        try:
            peer, blob = await self._store.sealed_client_key(peer_id)
        except domain.PeerNotFound as exc:
            raise _mapped(exc) from None
        if blob is None and peer.direction == "outbound":
            raise failed_precondition(
                domain.PEER_PENDING,
                f"peer {peer.name!r} is being added: its enrollment has not finished",
                remediation="wait for `mosaic federation peer add` to finish",
            )
        if blob is None:
            raise failed_precondition(
                "PEER_HAS_NO_CREDENTIALS",
                "this peer has no client key (only peers we query have one)",
            )
        try:
            key = self._sealer.open(blob, sealed_key_context(peer.id))
        except SealError as exc:
            log.error("sealed client key cannot be opened", extra={"peer_id": str(peer.id)})
            raise failed_precondition(
                exc.reason,
                "the peer's sealed client key cannot be opened",
                remediation=(
                    "the seal secret it was sealed under is not configured; restore it as "
                    "secrets/seal.previous.key, or remove the peer and enroll again"
                ),
            ) from None
        return grants_pb2.GetPeerCredentialsResponse(
            peer=peer_proto(peer), client_key_pem=key.decode()
        )

    async def Reseal(
        self, request: grants_pb2.ResealRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.ResealResponse:
        try:
            on_disk = self._sealer_on_disk().key_id
        except ConfigError as exc:
            raise failed_precondition(
                "SEAL_SECRET_UNREADABLE", exc.message, remediation=exc.remediation
            ) from None
        if on_disk != self._sealer.key_id:
            raise failed_precondition(
                "SEAL_RESTART_NEEDED",
                "grants-service runs with an older seal secret than the instance home holds",
                remediation="restart the services so they load the new secret, then run "
                "`mosaic seal rotate` again",
            )
        resealed = 0
        for peer_id, blob in await self._store.sealed_client_keys():
            try:
                if not self._sealer.needs_reseal(blob):
                    continue
                fresh = self._sealer.reseal(blob, sealed_key_context(peer_id))
            except SealError as exc:
                raise failed_precondition(
                    exc.reason,
                    f"the sealed client key of peer {peer_id} cannot be opened",
                    remediation="configure the secret it was sealed under as the previous secret",
                ) from None
            if await self._store.replace_sealed_client_key(peer_id, blob, fresh, now=utcnow()):
                resealed += 1
        log.info(
            "sealed values re-sealed", extra={"resealed": resealed, "key_id": self._sealer.key_id}
        )
        return grants_pb2.ResealResponse(resealed=resealed)

    async def WatchChanges(
        self, request: grants_pb2.WatchChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[grants_pb2.WatchChangesResponse]:
        stream = self._notifier.subscribe()
        try:
            async for change in stream:
                yield change
        finally:
            await stream.aclose()

    # ---- helpers -------------------------------------------------------------------

    async def _expire(self, grant_id: uuid.UUID | None) -> None:
        """Move due grants to expired before anyone reads them (never reported active)."""
        expired = await self._store.expire_due(utcnow(), grant_id)
        if expired:
            log.info("grants expired", extra={"count": len(expired)})
            self._notifier.publish(grant_ids=expired)

    async def _peer_id(self, key: str) -> uuid.UUID:
        """A peer id from an id or a name."""
        if not key:
            raise invalid_argument("PEER_REQUIRED", "id (peer id or name) is required")
        try:
            return (await self._store.get_peer(key)).id
        except domain.PeerNotFound as exc:
            raise _mapped(exc) from None


# ---- mapping ---------------------------------------------------------------------------


def grant_proto(grant: GrantRow) -> grants_pb2.Grant:
    return grants_pb2.Grant(
        id=str(grant.id),
        peer_id=str(grant.peer_id),
        subject_user_id=str(grant.subject_user_id),
        status=_GRANT_STATUS_TO_PROTO[grant.status],
        scope_json=json.dumps(grant.scope, sort_keys=True, separators=(",", ":")),
        created_at=_ts(grant.created_at),
        activated_at=_ts(grant.activated_at),
        expires_at=_ts(grant.expires_at),
        revoked_at=_ts(grant.revoked_at),
        revoke_reason=grant.revoke_reason or "",
        sensitive=grant.sensitive,
        peer_name=grant.peer_name,
        cert_serial=grant.cert_serial or "",
    )


def peer_proto(peer: PeerRow) -> grants_pb2.Peer:
    return grants_pb2.Peer(
        id=str(peer.id),
        name=peer.name,
        display_name=peer.display_name,
        direction=_DIRECTION_TO_PROTO[peer.direction],
        state=_PEER_STATE_TO_PROTO[peer.state],
        endpoint=peer.endpoint or "",
        cert_pem=peer.cert_pem or "",
        cert_serial=peer.cert_serial or "",
        cert_not_after=_ts(peer.cert_not_after),
        ca_bundle_pem=peer.ca_bundle_pem or "",
        created_at=_ts(peer.created_at),
        updated_at=_ts(peer.updated_at),
        has_client_key=peer.has_client_key,
        remote_grant_id=str(peer.remote_grant_id or ""),
        remote_subject_user_id=str(peer.remote_subject_user_id or ""),
        state_reason=peer.state_reason or "",
    )


def _ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _from_ts(message: Any, field: str, reason: str = "") -> dt.datetime | None:
    """The timestamp field as a UTC datetime, None if unset; INVALID_ARGUMENT (``reason``,
    else ``<FIELD>_INVALID``) if it is outside years 1-9999 or its nanos outside 0..1e9-1."""
    if not message.HasField(field):
        return None
    try:
        value: dt.datetime = getattr(message, field).ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        problem = "must be a valid timestamp (years 1-9999, nanos 0-999999999)"
        raise invalid_argument(
            reason or f"{field.upper()}_INVALID",
            f"{field} {problem}",
            violations=[(field, problem)],
        ) from None
    return value


def _uuid(field: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise invalid_argument(
            f"{field.upper()}_INVALID",
            f"{field} must be a UUID",
            violations=[(field, "must be a UUID (8-4-4-4-12 hex digits)")],
        ) from None


def _reason(text: str) -> str:
    try:
        return domain.clean_reason(text)
    except domain.InvalidGrantRequest as exc:
        raise _mapped(exc) from None


def _enum(field: str, value: int, mapping: Mapping[Any, str]) -> str:
    try:
        return mapping[value]
    except KeyError:
        raise invalid_argument(
            f"{field.upper()}_INVALID",
            f"{field} has an unknown value {value}",
            violations=[(field, "must be one of " + ", ".join(mapping.values()))],
        ) from None


def _mapped(exc: Exception) -> ServiceError:
    """The gRPC error for a domain refusal."""
    if isinstance(exc, domain.InvalidGrantRequest):
        return invalid_argument(
            exc.reason, exc.message, violations=exc.violations, remediation=exc.remediation
        )
    if isinstance(exc, domain.TransitionRefused):
        return failed_precondition(
            exc.reason,
            exc.message,
            remediation=exc.remediation,
            metadata={"current_state": exc.current},
        )
    if isinstance(exc, domain.GrantNotFound):
        return not_found(
            "GRANT_NOT_FOUND",
            f"no grant {str(exc.args[0])[:64]}",
            remediation="list the grants with `mosaic federation grant list`",
        )
    if isinstance(exc, domain.PeerNotFound):
        return not_found(
            "PEER_NOT_FOUND",
            f"no peer {str(exc.args[0])[:64]!r}",
            remediation="list the peers with `mosaic federation peer list` (an id or a name)",
        )
    if isinstance(exc, domain.PeerNameTaken):
        if exc.reserved_until is not None:
            until = exc.reserved_until.strftime("%Y-%m-%dT%H:%M:%SZ")
            return ServiceError(
                grpc.StatusCode.ALREADY_EXISTS,
                domain.PEER_NAME_TAKEN,
                f"a peer named {exc.name[:64]!r} is being added right now",
                remediation="wait for that enrollment to finish, or choose another name; if it "
                f"never finishes, the name comes free at {until}",
                metadata={"current_state": "pending", "reserved_until": until},
            )
        return ServiceError(
            grpc.StatusCode.ALREADY_EXISTS,
            domain.PEER_NAME_TAKEN,
            f"a peer named {exc.name[:64]!r} already exists",
            remediation="choose another name, or remove the old peer first",
        )
    if isinstance(exc, domain.PeerReservationLost):
        return failed_precondition(
            domain.PEER_RESERVATION_LOST,
            f"the name {str(exc.args[0])[:64]!r} is no longer reserved for this enrollment",
            remediation="its reservation lapsed and another enrollment took the name, or the "
            "pending peer was removed",
        )
    raise exc
