"""Whether a grant may be served right now: grant and peer state, cached for a moment.

GetGrant answers (grant + its peer) are kept for at most :data:`GRANT_TTL_S` and dropped
at once when grants-service's WatchChanges names the grant or its peer, so a revoke or a
suspension takes effect on the next request (and within the TTL even if the change
stream is down or another grants-service replica made the change). Expiry is checked
locally on every request as well. The decision itself (:func:`decide`) is pure.

Apart from that, the cache remembers which peer each grant it has fetched belongs to
(:meth:`GrantCache.peer_of`), past the TTL and every invalidation: a grant never moves to
another peer, so an audit row of a request refused before grants-service could answer
(or before the revocation list loaded) still names its peer. Attribution, never
authorization: nothing is admitted on it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from federation_gateway.watch import follow
from mosaic.errors import DEPENDENCY_UNAVAILABLE, ServiceError
from mosaic.federation.v1 import common_pb2, grants_pb2, grants_pb2_grpc
from mosaic.scope import Scope, ScopeError, parse_scope

log = logging.getLogger("mosaic.gateway.authz")

GRANT_TTL_S = 0.5
GET_GRANT_DEADLINE_S = 2.0
MAX_ENTRIES = 10_000

# Reason codes (ErrorInfo.reason) of refusals decided here.
GRANT_UNKNOWN = "GRANT_UNKNOWN"
GRANT_NOT_ACTIVE = "GRANT_NOT_ACTIVE"
GRANT_REVOKED = "GRANT_REVOKED"
GRANT_EXPIRED = "GRANT_EXPIRED"
GRANT_SCOPE_INVALID = "GRANT_SCOPE_INVALID"
PEER_NOT_ACTIVE = "PEER_NOT_ACTIVE"
PEER_SUSPENDED = "PEER_SUSPENDED"
PEER_REVOKED = "PEER_REVOKED"
PEER_GRANT_MISMATCH = "PEER_GRANT_MISMATCH"
CERT_NOT_CURRENT = "CERT_NOT_CURRENT"
CERT_NOT_CURRENT_MESSAGE = "this certificate is not the grant's current certificate"

_GRANT_REFUSALS = {
    grants_pb2.GRANT_STATUS_PENDING: (GRANT_NOT_ACTIVE, "the grant is not active yet"),
    grants_pb2.GRANT_STATUS_REVOKED: (GRANT_REVOKED, "the grant has been revoked"),
    grants_pb2.GRANT_STATUS_EXPIRED: (GRANT_EXPIRED, "the grant has expired"),
}
_PEER_REFUSALS = {
    grants_pb2.PEER_STATE_PENDING: (PEER_NOT_ACTIVE, "this peer is not active"),
    grants_pb2.PEER_STATE_SUSPENDED: (PEER_SUSPENDED, "this peer is suspended"),
    grants_pb2.PEER_STATE_REVOKED: (PEER_REVOKED, "this peer has been revoked"),
}


def refused(reason: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, reason, message)


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    message: str
    peer_id: str = ""  # so a change to the peer drops a cached refusal too

    def error(self) -> ServiceError:
        return refused(self.reason, self.message)


@dataclass(frozen=True, slots=True)
class ResourceAccess:
    """What one granted resource lets the peer see, precomputed for the hot path."""

    visibility: common_pb2.Visibility
    teams: frozenset[str]
    include_personal: bool


@dataclass(frozen=True, slots=True)
class GrantView:
    """An active grant with an active, bound peer, ready to serve."""

    grant_id: str
    subject_user_id: str
    peer_id: str
    cert_serial: str
    expires_at: float | None  # unix seconds
    scope: Scope
    access: dict[str, ResourceAccess]
    # UUID objects for audit rows, parsed once per fetch rather than once per request.
    grant_uuid: uuid.UUID
    subject_uuid: uuid.UUID
    peer_uuid: uuid.UUID


@functools.lru_cache(maxsize=1024)
def _scope(scope_json: str) -> Scope:
    return parse_scope(scope_json)


def decide(reply: grants_pb2.GetGrantResponse) -> GrantView | Refusal:
    """Whether GetGrant's answer is servable: the grant active, the peer active, inbound and
    bound to it, and the scope readable. Certificate-specific checks come later."""
    grant, peer = reply.grant, reply.peer
    refusal = _GRANT_REFUSALS.get(grant.status)
    if refusal is not None:
        return Refusal(*refusal, peer_id=peer.id)
    if grant.status != grants_pb2.GRANT_STATUS_ACTIVE:
        return Refusal(GRANT_NOT_ACTIVE, "the grant is not active", peer.id)
    if (
        not peer.id
        or peer.id != grant.peer_id
        or peer.direction != grants_pb2.PEER_DIRECTION_INBOUND
    ):
        return Refusal(PEER_GRANT_MISMATCH, "the grant is not bound to this peer", peer.id)
    refusal = _PEER_REFUSALS.get(peer.state)
    if refusal is not None:
        return Refusal(*refusal, peer_id=peer.id)
    if peer.state != grants_pb2.PEER_STATE_ACTIVE:
        return Refusal(PEER_NOT_ACTIVE, "this peer is not active", peer.id)
    try:
        scope = _scope(grant.scope_json)
    except ScopeError:
        log.error("stored grant scope does not parse", extra={"grant_id": grant.id})
        return Refusal(GRANT_SCOPE_INVALID, "the grant's scope cannot be read", peer.id)
    access = {}
    for resource in scope.resources:
        row_filter = scope.filter_for(resource)
        access[resource] = ResourceAccess(
            visibility=common_pb2.Visibility(
                owner_user_id=grant.subject_user_id,
                include_teams=list(row_filter.include_teams),
                include_personal=row_filter.include_personal,
            ),
            teams=frozenset(row_filter.include_teams),
            include_personal=row_filter.include_personal,
        )
    expires_at = (
        grant.expires_at.ToDatetime(tzinfo=dt.UTC).timestamp()
        if grant.HasField("expires_at")
        else None
    )
    return GrantView(
        grant_id=grant.id,
        subject_user_id=grant.subject_user_id,
        peer_id=peer.id,
        cert_serial=grant.cert_serial,
        expires_at=expires_at,
        scope=scope,
        access=access,
        grant_uuid=uuid.UUID(grant.id),
        subject_uuid=uuid.UUID(grant.subject_user_id),
        peer_uuid=uuid.UUID(peer.id),
    )


def check_certificate(
    view: GrantView, *, serial: str, subject_user_id: str, now: float
) -> Refusal | None:
    """The per-request checks: unexpired, and this certificate is the grant's current one,
    for the grant's subject."""
    if view.expires_at is not None and now >= view.expires_at:
        return Refusal(GRANT_EXPIRED, "the grant has expired")
    if subject_user_id != view.subject_user_id:
        return Refusal(PEER_GRANT_MISMATCH, "the certificate's subject does not match the grant")
    if serial != view.cert_serial:
        return Refusal(CERT_NOT_CURRENT, CERT_NOT_CURRENT_MESSAGE)
    return None


@dataclass(slots=True)
class _Entry:
    result: GrantView | Refusal
    fetched_at: float


class GrantCache:
    """GetGrant results per grant id, for at most GRANT_TTL_S, dropped on change events.

    Concurrent misses for one grant share one GetGrant call.
    """

    def __init__(self, grants: grants_pb2_grpc.GrantsStub, *, ttl_s: float = GRANT_TTL_S) -> None:
        self._grants = grants
        self._ttl_s = ttl_s
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[GrantView | Refusal]] = {}  # fetch tasks
        self._inflight_since: dict[str, float] = {}  # when each fetch in flight began
        self._peers: dict[str, uuid.UUID] = {}  # grant id -> its peer (module docstring)
        self.fetches = 0

    def peer_of(self, grant_id: str) -> uuid.UUID | None:
        """The peer ``grant_id`` was last seen bound to, however long ago; for audit rows."""
        return self._peers.get(grant_id)

    async def get(self, grant_id: str) -> GrantView | Refusal:
        now = time.monotonic()
        entry = self._entries.get(grant_id)
        if entry is not None and now - entry.fetched_at < self._ttl_s:
            return entry.result
        pending = self._inflight.get(grant_id)
        # A fetch that began a TTL ago or more is not joined: its answer may be older than
        # a cached entry is allowed to be (a slow GetGrant, a change this gateway did not
        # hear of). A new one starts; the old one still answers those already waiting.
        if pending is None or now - self._inflight_since[grant_id] >= self._ttl_s:
            # Its own task, awaited through shield by every caller (the first included): a
            # caller that goes away cancels only its own wait, never the others' answer.
            pending = asyncio.ensure_future(self._fetch_and_keep(grant_id))
            self._inflight[grant_id] = pending
            self._inflight_since[grant_id] = now
            pending.add_done_callback(_retrieved)
        return await asyncio.shield(pending)

    async def _fetch_and_keep(self, grant_id: str) -> GrantView | Refusal:
        started = time.monotonic()
        try:
            result = await self._fetch(grant_id)
        finally:
            # Dropped from _inflight by an invalidation meanwhile: serve, but do not cache.
            current = self._inflight.get(grant_id) is asyncio.current_task()
            if current:
                del self._inflight[grant_id]
                del self._inflight_since[grant_id]
        if current:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[grant_id] = _Entry(result, started)
        return result

    async def _fetch(self, grant_id: str) -> GrantView | Refusal:
        self.fetches += 1
        try:
            reply = await self._grants.GetGrant(
                grants_pb2.GetGrantRequest(id=grant_id), timeout=GET_GRANT_DEADLINE_S
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return Refusal(GRANT_UNKNOWN, "no such grant")
            log.warning("GetGrant failed", extra={"code": err.code().name})
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                DEPENDENCY_UNAVAILABLE,
                "the gateway cannot check the grant right now",
                remediation="retry shortly",
                retry_after_s=1.0,
            ) from None
        self._remember_peer(grant_id, reply.grant.peer_id)
        return decide(reply)

    def _remember_peer(self, grant_id: str, peer_id: str) -> None:
        try:
            peer = uuid.UUID(peer_id)
        except ValueError:
            return
        if grant_id not in self._peers and len(self._peers) >= MAX_ENTRIES:
            self._peers.clear()
        self._peers[grant_id] = peer

    def invalidate(self, grant_ids: Iterable[str] = (), peer_ids: Iterable[str] = ()) -> None:
        """Forget the named grants and every grant of the named peers (including fetches in
        flight, so the next request asks grants-service again)."""
        for grant_id in grant_ids:
            self._entries.pop(grant_id, None)
            self._inflight.pop(grant_id, None)
            self._inflight_since.pop(grant_id, None)
        peers = set(peer_ids)
        if peers:
            for grant_id, entry in list(self._entries.items()):
                if entry.result.peer_id in peers:
                    del self._entries[grant_id]
            # A fetch in flight may be for one of these peers' grants: we cannot tell.
            self._inflight.clear()
            self._inflight_since.clear()

    def clear(self) -> None:
        self._entries.clear()
        self._inflight.clear()
        self._inflight_since.clear()

    def on_change(self, change: grants_pb2.WatchChangesResponse) -> None:
        if change.grant_ids or change.peer_ids:
            self.invalidate(change.grant_ids, change.peer_ids)


def _retrieved(fetch: asyncio.Future[Any]) -> None:
    if not fetch.cancelled():
        fetch.exception()  # retrieved: every caller may have gone away


async def watch_changes(grants: grants_pb2_grpc.GrantsStub, *listeners: GrantCacheListener) -> None:
    """Background job: follow WatchChanges, hand every change to each listener; a broken
    stream clears their caches (changes may have been missed)."""

    def on_message(change: grants_pb2.WatchChangesResponse) -> None:
        for listener in listeners:
            listener.on_change(change)

    def on_disconnect() -> None:
        for listener in listeners:
            listener.clear()

    def open_stream() -> Any:
        # Waits for the channel like the revocation watch (watch.py).
        return grants.WatchChanges(
            grants_pb2.WatchChangesRequest(), timeout=365 * 86400, wait_for_ready=True
        )

    await follow("grant-changes", open_stream, on_message, on_disconnect)


class GrantCacheListener(Protocol):
    """Anything that caches grant or peer state and must hear about changes."""

    def on_change(self, change: grants_pb2.WatchChangesResponse) -> None: ...

    def clear(self) -> None: ...
