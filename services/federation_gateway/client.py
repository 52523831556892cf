"""The outbound federation client: this gateway (A) querying a peer (B) that enrolled us.

* One channel per peer, built once even under concurrent first use (a lock per peer),
  from grants-service GetPeerCredentials: our client certificate and unsealed key, and
  B's CA bundle as the only trust roots (never the public roots).
* :meth:`FederationClient.flush` closes a peer's channel; the next call rebuilds it with
  fresh credentials. The gateway flushes on every WatchChanges event naming the peer
  (suspend, remove, renew) and flushes everything when that stream breaks. A flush that
  lands while a channel is being built makes that build fetch the credentials again, and
  a flushed channel closes once the calls already on it have ended (each has a deadline).
* Every call has a deadline. Failures are :class:`PeerError` with a client-side code of
  DESIGN.md's taxonomy and, when B refused, B's own reason code, message, remediation and
  retry delay. NETWORK with a reason is B up but unable to answer (UNAVAILABLE
  REVOCATIONS_NOT_LOADED, DEPENDENCY_UNAVAILABLE, DATABASE_UNAVAILABLE, ...; B
  failing internally, INTERNAL, gRPC's UNKNOWN or DATA_LOSS, whose reason is that code
  and whose message gives B's request id for B's operator; B giving up on the call,
  ABORTED or CANCELLED: retry); without one, B was not reached. B not implementing what
  we asked (UNIMPLEMENTED: a verb an older release lacks) or refusing an argument
  (OUT_OF_RANGE) is INVALID_ARGUMENT with that reason; any other status B answers with is
  INVALID_RESPONSE naming it.
  Our own certificate is named instead of the network when it is the likely cause:
  UNAUTHENTICATED when it has expired (no call is made), or when B was not reached while
  its validity has not begun by our clock (B's handshake refuses it: a clock is off).
* Successful answers are kept in memory only, for :data:`CACHE_TTL_S` at most (an
  expired one is dropped then, asked for or not), :data:`CACHE_MAX_ENTRIES` and
  :data:`CACHE_MAX_BYTES` at most (the oldest go first); one is served — marked stale,
  with its original fetch time — only when B cannot be reached (NETWORK without a reason
  of B's: an answer B cannot give now, an internal failure included, is not replaced by an
  older one, which might hold what B would refuse now). A peer's answers are forgotten
  when B refuses us (FORBIDDEN, UNAUTHENTICATED) or answers rows we did not ask for
  (INVALID_RESPONSE), and when the peer is flushed; any other failure (B failing, giving
  up, lacking a verb, a status we do not expect) says nothing about our access and keeps
  them; a resource outside the grant's scope forgets that resource's answers only, and a
  ``get`` B answers NOT_FOUND that row's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import Counter

from mosaic.errors import DEPENDENCY_UNAVAILABLE, RemoteError, ServiceError
from mosaic.federation.v1 import gateway_pb2, gateway_pb2_grpc, grants_pb2, grants_pb2_grpc
from mosaic.rpc.channels import secure_channel
from mosaic.rpc.interceptors import response_request_id
from mosaic.text import enum_word

log = logging.getLogger("mosaic.gateway.client")

# Calls to peers, by verb and how they ended, so a peer that is down shows on our own
# scrape: a stale answer is OK on our Query RPC. No peer label (metrics.py: the scrape
# names no one); the log line under the request id names the peer.
PEER_CALLS = Counter(
    "mosaic_federation_client_calls",
    "Calls this gateway made to peers, by verb and result: ok, stale (the peer not "
    "reached, a cached answer served), unreachable (not reached, nothing cached), "
    "unavailable (the peer up but unable to answer), refused, invalid_response.",
    ["verb", "result"],
)
_VERBS = ("capabilities", "list", "get", "search", "renew")
_RESULTS = ("ok", "stale", "unreachable", "unavailable", "refused", "invalid_response")
for _verb in _VERBS:  # every series from the start, so increase() sees the first failure
    for _result in _RESULTS:
        PEER_CALLS.labels(_verb, _result)

CALL_DEADLINE_S = 5.0
RENEW_DEADLINE_S = 60.0
CREDENTIALS_DEADLINE_S = 5.0
CACHE_TTL_S = 30.0
CACHE_MAX_ENTRIES = 1000
# One answer is at most a message (4 MiB): without a byte budget a full cache could hold
# some GiB of peers' rows.
CACHE_MAX_BYTES = 64 * 1024 * 1024
# Credentials fetched while a flush happened are fetched again, at most this many times.
BUILD_ATTEMPTS = 3

# Client-side codes (DESIGN.md "Errors").
PEER_NOT_FOUND = "PEER_NOT_FOUND"
PEER_INACTIVE = "PEER_INACTIVE"
PEER_MISCONFIGURED = "PEER_MISCONFIGURED"
# grants-service: the peer has no client key (it is one we serve).
PEER_HAS_NO_CREDENTIALS = "PEER_HAS_NO_CREDENTIALS"
# grants-service: an outbound peer whose `peer add` has reserved its name but not finished.
PEER_PENDING = "PEER_PENDING"
NETWORK = "NETWORK"
FORBIDDEN = "FORBIDDEN"
NOT_FOUND = "NOT_FOUND"
RATE_LIMITED = "RATE_LIMITED"
INVALID_RESPONSE = "INVALID_RESPONSE"
UNAUTHENTICATED = "UNAUTHENTICATED"
# Not in DESIGN.md's list: B refused our request's arguments (an unknown resource, a page
# token it did not issue); neither the peer nor the link is at fault.
INVALID_ARGUMENT = "INVALID_ARGUMENT"

_CODE_FOR_STATUS = {
    grpc.StatusCode.UNAVAILABLE: NETWORK,
    grpc.StatusCode.DEADLINE_EXCEEDED: NETWORK,
    grpc.StatusCode.PERMISSION_DENIED: FORBIDDEN,
    # B refuses a request its grant's state does not allow (a renewal that lost to another,
    # a grant or peer that changed state meanwhile), passing on grants-service's reason.
    grpc.StatusCode.FAILED_PRECONDITION: FORBIDDEN,
    grpc.StatusCode.NOT_FOUND: NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RATE_LIMITED,
    grpc.StatusCode.UNAUTHENTICATED: UNAUTHENTICATED,
    grpc.StatusCode.INVALID_ARGUMENT: INVALID_ARGUMENT,
    # B failed while answering (INTERNAL: an unexpected exception, UNKNOWN: one that got
    # past B's own mapping, DATA_LOSS: its data is damaged): B cannot answer now, as with
    # an outage; it withdrew nothing.
    grpc.StatusCode.INTERNAL: NETWORK,
    grpc.StatusCode.UNKNOWN: NETWORK,
    grpc.StatusCode.DATA_LOSS: NETWORK,
    # B gave up on this one call (a conflict, a restart): the next may well succeed.
    grpc.StatusCode.ABORTED: NETWORK,
    grpc.StatusCode.CANCELLED: NETWORK,
    # B does not serve what we asked: UNIMPLEMENTED, a verb (or the whole service) its
    # release does not have; OUT_OF_RANGE, an argument past what B has (a page token).
    grpc.StatusCode.UNIMPLEMENTED: INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE: INVALID_ARGUMENT,
}
_FAILED_TO_ANSWER = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)
_GAVE_UP = frozenset({grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED})
# Statuses only B (or something in front of it) sends, never gRPC on our side for a peer
# it did not reach: they are B answering, so its reason is at least the status's name.
_ANSWERED_BY_THE_PEER = frozenset(
    {
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
# The status our own caller (the admin API) gets for each client-side code.
_STATUS_FOR_CODE = {
    PEER_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    PEER_INACTIVE: grpc.StatusCode.FAILED_PRECONDITION,
    PEER_MISCONFIGURED: grpc.StatusCode.FAILED_PRECONDITION,
    NETWORK: grpc.StatusCode.UNAVAILABLE,
    FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    INVALID_RESPONSE: grpc.StatusCode.FAILED_PRECONDITION,
    # Not UNAUTHENTICATED: on the admin API that would read as "wrong admin token".
    UNAUTHENTICATED: grpc.StatusCode.FAILED_PRECONDITION,
    INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
}
# B refused us: the peer's cached answers are dropped (a stale copy of data B withdrew
# must not be served when it goes offline next). Other failures say nothing about our
# access (B failing, giving up, not having the verb, a status we do not expect) and keep
# them; an answer that cannot be right (_check_answer) drops them too.
_WITHDRAWN = frozenset({FORBIDDEN, UNAUTHENTICATED})
# B's reasons (federation.py) for refusing a resource the grant does not cover. A grant's
# scope never changes, so such a refusal concerns that resource alone: only its answers
# are dropped, and what B served of other resources stays.
_REFUSED_FOR_THE_RESOURCE = frozenset({"RESOURCE_NOT_GRANTED", "RESOURCE_EXCLUDED"})
_REMEDIATION = {
    PEER_NOT_FOUND: "list the peers you can query with `mosaic federation peer list`",
    PEER_INACTIVE: "resume the peer (`mosaic federation peer resume`) or enroll again",
    PEER_MISCONFIGURED: "remove the peer and enroll again with a fresh enrollment URL",
    NETWORK: "check that the peer gateway is running and reachable",
    FORBIDDEN: "ask the peer's operator to check the grant",
    NOT_FOUND: "check the id: `mosaic federation query PEER list RESOURCE` shows the rows "
    "the grant lets you read",
    RATE_LIMITED: "retry after the delay given",
    INVALID_RESPONSE: "give the peer's operator the request id (its audit log has the "
    "request); if it keeps happening, compare the peer's server_version "
    "(`mosaic federation query PEER capabilities`) with this gateway's release",
    UNAUTHENTICATED: "the peer no longer accepts our certificate; renew or enroll again",
    INVALID_ARGUMENT: "check the arguments: the peer's reason and violations say which",
}
_FAILED_REMEDIATION = (
    "retry later; if it keeps failing, give the peer's operator the request id in the message"
)
_GAVE_UP_REMEDIATION = (
    "retry shortly: the peer gave up on this call only (a conflict or a restart on its side)"
)
_UNIMPLEMENTED_REMEDIATION = (
    "run `mosaic federation query PEER capabilities`: its verbs and server_version say what "
    "the peer's gateway serves; ask the peer's operator to upgrade it for this one"
)
_NOTHING_IMPLEMENTED_REMEDIATION = (
    "check that the peer's endpoint is a Mosaic federation gateway, and ask its operator "
    "which release it runs: one this old needs an upgrade"
)
_UNEXPECTED_REMEDIATION = (
    "the peer may run another release: compare its server_version "
    "(`mosaic federation query PEER capabilities`) with this gateway's, and give its "
    "operator the request id"
)
_NOT_YET_VALID_REMEDIATION = (
    "check that the peer gateway is running and reachable; if it is, a clock is off: "
    "check that this machine's clock is right (NTP), and ask the peer's "
    "operator to check the clocks of their gateway and CA; the certificate works from its "
    "start on, by the peer's clock, with no need to enroll or renew again"
)
_EXPIRED_REMEDIATION = (
    "an expired certificate cannot be renewed: ask the peer's operator for a new grant and "
    "enrollment URL, run `mosaic federation peer remove` for this peer and "
    "`mosaic federation peer add` with the URL; then renew before cert_not_after "
    "(`mosaic federation peer renew`)"
)


class PeerError(Exception):
    """A query to a peer failed: a client-side ``code``, and B's ``server_reason`` if any."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        server_reason: str = "",
        request_id: str = "",
        retry_after_s: float | None = None,
        remediation: str = "",
        violations: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.remediation = remediation or _REMEDIATION[code]
        self.violations = tuple(violations)
        self.code = code
        self.message = message
        self.server_reason = server_reason
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    def to_service_error(self) -> ServiceError:
        """For our admin API: reason = the client-side code; B's reason in the metadata."""
        metadata = {}
        if self.server_reason:
            metadata["server_reason"] = self.server_reason
        if self.request_id:
            metadata["request_id"] = self.request_id
        return ServiceError(
            _STATUS_FOR_CODE[self.code],
            self.code,
            self.message,
            remediation=self.remediation,
            metadata=metadata,
            violations=self.violations,
            retry_after_s=self.retry_after_s,
        )


@dataclass(eq=False)
class _PeerChannel:
    peer_id: str
    name: str
    cert_serial: str  # of the client certificate the channel presents
    not_before: dt.datetime  # ... when its validity begins
    not_after: dt.datetime  # ... and when it expires
    channel: grpc.aio.Channel
    stub: gateway_pb2_grpc.FederationStub
    in_flight: int = 0  # our calls on it right now


@dataclass
class _Cached:
    response: gateway_pb2.QueryResponse
    expires: float  # monotonic
    size: int  # bytes, serialized


# (peer id, resource or "", verb and request)
_Key = tuple[str, str, bytes]


class _AnswerCache:
    """Answers by (peer id, resource, request), oldest first. With one TTL for all, the
    oldest entry is also the first to expire, so expiry and both bounds evict from the
    front; a timer drops expired entries even when no query comes."""

    def __init__(self, ttl_s: float, max_entries: int, max_bytes: int) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: collections.OrderedDict[_Key, _Cached] = collections.OrderedDict()
        self.size = 0  # bytes held
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: _Key) -> gateway_pb2.QueryResponse | None:
        self._drop_expired()
        entry = self._entries.get(key)
        return None if entry is None else entry.response

    def put(self, key: _Key, response: gateway_pb2.QueryResponse) -> None:
        self.forget(key)  # re-added at the back: the order stays that of expiry
        size = response.ByteSize()
        if size > self._max_bytes:
            return
        self._entries[key] = _Cached(response, time.monotonic() + self._ttl_s, size)
        self.size += size
        self._drop_expired()
        while len(self._entries) > self._max_entries or self.size > self._max_bytes:
            self.forget(next(iter(self._entries)))
        self._schedule()

    def forget(self, key: _Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size -= entry.size

    def forget_peer(self, peer_id: str, resource: str | None = None) -> None:
        """The peer's answers: all of them, or those about ``resource``."""
        for key in [k for k in self._entries if k[0] == peer_id and resource in (None, k[1])]:
            self.forget(key)

    def clear(self) -> None:
        self._entries.clear()
        self.size = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _drop_expired(self) -> None:
        now = time.monotonic()
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            self.forget(key)

    def _schedule(self) -> None:
        """A timer for the oldest entry's expiry, if there is none yet."""
        if self._timer is None and self._entries:
            first = next(iter(self._entries.values()))
            delay = max(0.0, first.expires - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._drop_expired()
        self._schedule()


@dataclass
class FederationClient:
    """Queries peers this gateway enrolled with; one per gateway process."""

    grants: grants_pb2_grpc.GrantsStub
    call_deadline_s: float = CALL_DEADLINE_S
    cache_ttl_s: float = CACHE_TTL_S
    cache_max_entries: int = CACHE_MAX_ENTRIES
    cache_max_bytes: int = CACHE_MAX_BYTES
    builds: int = 0  # channels built so far (tests and diagnostics)
    _channels: dict[str, _PeerChannel] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)  # id or name -> peer id
    # Per peer key, the lock its builds take and how many callers hold or wait for it
    # (dropped at zero: keys that were never peers leave nothing behind).
    _locks: dict[str, tuple[asyncio.Lock, int]] = field(default_factory=dict)
    _closed: bool = False
    _cache: _AnswerCache = field(init=False)
    # Flushed channels whose calls are still running (closed when the last one ends), and
    # channel closes under way.
    _retired: set[_PeerChannel] = field(default_factory=set)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)
    _flushes: int = 0  # flushes so far: a build that saw one start over

    def __post_init__(self) -> None:
        self._cache = _AnswerCache(self.cache_ttl_s, self.cache_max_entries, self.cache_max_bytes)

    # ---- queries -------------------------------------------------------------------

    async def query(self, request: gateway_pb2.QueryRequest) -> gateway_pb2.QueryResponse:
        """Ask the peer ``request.peer`` (id or name); raise PeerError on failure."""
        verb = request.WhichOneof("verb")
        if verb is None:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "VERB_REQUIRED",
                "one of capabilities, list, get or search is required",
            )
        peer = await self.channel(request.peer)
        self._check_certificate(peer)
        inner = getattr(request, verb)
        key = (
            peer.peer_id,
            getattr(inner, "resource", ""),
            verb.encode() + b"\x00" + inner.SerializeToString(deterministic=True),
        )
        method = {
            "capabilities": peer.stub.Capabilities,
            "list": peer.stub.List,
            "get": peer.stub.Get,
            "search": peer.stub.Search,
        }[verb]
        try:
            with self._in_flight(peer):
                call = method(inner, timeout=self.call_deadline_s)
                answer = await call
                request_id = response_request_id(await call.trailing_metadata())
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as err:
            error = _not_reached_error(peer, _call_error(err, _verb_text(verb)))
            if error.code == NETWORK and not error.server_reason:
                cached = self._cached(key)
                if cached is not None:
                    PEER_CALLS.labels(verb, "stale").inc()
                    log.info(
                        "peer unreachable; serving a stale answer",
                        extra={"peer_id": peer.peer_id},
                    )
                    return cached
            elif error.server_reason in _REFUSED_FOR_THE_RESOURCE:
                self._cache.forget_peer(peer.peer_id, resource=key[1])
            elif error.code in _WITHDRAWN:
                # B no longer serves us what it served before:
                # nothing it answered may come back as stale should it go offline next.
                self._forget_answers(peer.peer_id)
            elif error.code == NOT_FOUND:
                self._cache.forget(key)  # the row is gone, or no longer in our scope
            PEER_CALLS.labels(verb, _result_of(error)).inc()
            raise error from None
        try:
            _check_answer(verb, inner, answer, request_id)
        except PeerError as wrong:
            PEER_CALLS.labels(verb, _result_of(wrong)).inc()
            self._forget_answers(peer.peer_id)
            raise
        PEER_CALLS.labels(verb, "ok").inc()
        response = gateway_pb2.QueryResponse(request_id=request_id)
        getattr(response, verb).CopyFrom(answer)
        response.fetched_at.GetCurrentTime()
        if self._channels.get(peer.peer_id) is peer:
            # Not when the channel was flushed during the call (the peer suspended, removed
            # or renewed meanwhile): the answer is returned but not kept.
            self._cache.put(key, response)
        return response

    async def renew(
        self, key: str, csr_pem: str, *, deadline_s: float = RENEW_DEADLINE_S
    ) -> gateway_pb2.RenewCertificateResponse:
        """Ask the peer to re-issue our certificate for the CSR (flow 6), over the peer's
        channel, so with the certificate it replaces; raise PeerError on failure."""
        peer = await self.channel(key)
        self._check_certificate(peer)
        try:
            with self._in_flight(peer):
                answer: gateway_pb2.RenewCertificateResponse = await peer.stub.RenewCertificate(
                    gateway_pb2.RenewCertificateRequest(csr_pem=csr_pem),
                    timeout=min(deadline_s, RENEW_DEADLINE_S),
                )
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as err:
            error = _not_reached_error(
                peer, _call_error(err, "certificate renewal (RenewCertificate)")
            )
            PEER_CALLS.labels("renew", _result_of(error)).inc()
            raise error from None
        PEER_CALLS.labels("renew", "ok").inc()
        return answer

    async def credentials(self, key: str) -> tuple[grants_pb2.Peer, str]:
        """An active outbound peer (id or name) and its unsealed client key; PeerError if
        there is none."""
        if not key:
            raise PeerError(PEER_NOT_FOUND, "a peer id or name is required")
        return await self._credentials(key)

    def _cached(self, key: _Key) -> gateway_pb2.QueryResponse | None:
        response = self._cache.get(key)
        if response is None:
            return None
        stale = gateway_pb2.QueryResponse()
        stale.CopyFrom(response)
        stale.stale = True
        return stale

    def _forget_answers(self, peer_id: str) -> None:
        self._cache.forget_peer(peer_id)

    def _check_certificate(self, peer: _PeerChannel) -> None:
        """Refuse to call with a client certificate that has expired since the channel was
        built: B's handshake would fail it, which reads as B unreachable (NETWORK) and
        would serve stale answers. The channel is flushed so the next call fetches the
        credentials again (a renewal may have replaced them)."""
        if _utcnow() >= peer.not_after:
            self.flush(peer.peer_id)
            raise _certificate_expired(peer.name, peer.not_after)

    # ---- channels ------------------------------------------------------------------

    async def channel(self, key: str) -> _PeerChannel:
        """The peer's channel, built on first use; concurrent first callers share one build."""
        if not key:
            raise PeerError(PEER_NOT_FOUND, "a peer id or name is required")
        found = self._channels.get(self._aliases.get(key, key))
        if found is not None:
            return found
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                return await self._channel_locked(key)
        finally:
            lock, users = self._locks[key]
            if users > 1:
                self._locks[key] = (lock, users - 1)
            else:
                del self._locks[key]

    async def _channel_locked(self, key: str) -> _PeerChannel:
        found = self._channels.get(self._aliases.get(key, key))
        if found is not None:
            return found
        peer, client_key = await self._current_credentials(key)
        if self._closed:  # shut down while the credentials were fetched
            raise PeerError(NETWORK, "the gateway is shutting down")
        found = self._channels.get(peer.id)  # built meanwhile under another alias
        if found is None:
            found = self._build(peer, client_key)
            self._channels[peer.id] = found
        self._aliases[key] = peer.id
        self._aliases[peer.id] = peer.id
        return found

    async def _current_credentials(self, key: str) -> tuple[grants_pb2.Peer, str]:
        """Credentials no flush happened during the fetch of (else those may be the ones a
        renewal or a suspension just replaced)."""
        for _ in range(BUILD_ATTEMPTS):
            flushes = self._flushes
            found = await self._credentials(key)
            if flushes == self._flushes:
                return found
        raise ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            DEPENDENCY_UNAVAILABLE,
            "the peer's credentials kept changing while the channel was built",
            remediation="retry shortly",
            retry_after_s=1.0,
        )

    async def _credentials(self, key: str) -> tuple[grants_pb2.Peer, str]:
        try:
            reply = await self.grants.GetPeerCredentials(
                grants_pb2.GetPeerCredentialsRequest(id=key), timeout=CREDENTIALS_DEADLINE_S
            )
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise PeerError(PEER_NOT_FOUND, f"no peer {key[:64]!r} to query") from None
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                # grants-service says why (e.g. the seal secret is missing) and what to do.
                remote = RemoteError.from_rpc_error(err)
                if remote.reason == PEER_PENDING:
                    raise PeerError(
                        PEER_INACTIVE, remote.message, remediation=remote.remediation
                    ) from None
                if remote.reason == PEER_HAS_NO_CREDENTIALS:
                    # No client key: an inbound peer, one that queries us. Removing it (the
                    # generic advice below) would delete every grant we gave it.
                    raise PeerError(
                        PEER_NOT_FOUND, f"{key[:64]!r} is a peer we serve, not one we query"
                    ) from None
                raise PeerError(
                    PEER_MISCONFIGURED,
                    f"this peer has no usable client credentials: {remote.message} "
                    f"({remote.reason})",
                    remediation=remote.remediation,
                ) from None
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                DEPENDENCY_UNAVAILABLE,
                "grants-service is not answering",
                remediation="start it (`mosaic up` starts every service)",
            ) from None
        peer = reply.peer
        if peer.direction != grants_pb2.PEER_DIRECTION_OUTBOUND:
            raise PeerError(PEER_NOT_FOUND, f"{key[:64]!r} is a peer we serve, not one we query")
        if peer.state != grants_pb2.PEER_STATE_ACTIVE:
            self._forget_answers(peer.id)
            state = enum_word(peer.state, grants_pb2.PeerState, "PEER_STATE_")
            raise PeerError(PEER_INACTIVE, f"peer {peer.name} is {state}")
        return peer, reply.client_key_pem

    def _build(self, peer: grants_pb2.Peer, client_key_pem: str) -> _PeerChannel:
        """A new mTLS channel to the peer; checks the stored material before using it."""
        try:
            leaf = x509.load_pem_x509_certificate(peer.cert_pem.encode())
            key = serialization.load_pem_private_key(client_key_pem.encode(), password=None)
            roots = x509.load_pem_x509_certificates(peer.ca_bundle_pem.encode())
        except ValueError:
            raise PeerError(
                PEER_MISCONFIGURED, "the stored certificate, key or CA bundle does not parse"
            ) from None
        if key.public_key() != leaf.public_key():
            raise PeerError(PEER_MISCONFIGURED, "the stored key does not match the certificate")
        not_after = leaf.not_valid_after_utc
        if _utcnow() >= not_after:
            raise _certificate_expired(peer.name, not_after)
        host, sep, _port = peer.endpoint.rpartition(":")
        if not sep or not host:
            raise PeerError(PEER_MISCONFIGURED, "the stored endpoint is not host:port")
        # Send intermediates from the bundle with the leaf so B can build the chain.
        chain = peer.cert_pem.encode()
        for cert in roots:
            if cert.issuer != cert.subject:
                pem = cert.public_bytes(serialization.Encoding.PEM)
                if pem not in chain:
                    chain += b"\n" + pem
        credentials = grpc.ssl_channel_credentials(
            root_certificates=peer.ca_bundle_pem.encode(),  # pinned: never the public roots
            private_key=client_key_pem.encode(),
            certificate_chain=chain,
        )
        channel = secure_channel(
            peer.endpoint,
            credentials,
            server_name=host.strip("[]"),  # CLIENT_OPTIONS bound the reconnect backoff
        )
        self.builds += 1
        log.info("peer channel built", extra={"peer_id": peer.id, "endpoint": peer.endpoint})
        return _PeerChannel(
            peer.id,
            peer.name,
            peer.cert_serial,
            leaf.not_valid_before_utc,
            not_after,
            channel,
            gateway_pb2_grpc.FederationStub(channel),
        )

    def flush(self, peer_id: str) -> None:
        """Close the peer's channel and forget its answers (revocation, suspension, removal,
        renewal); the next call rebuilds."""
        self._flushes += 1
        self._forget_answers(peer_id)
        found = self._channels.pop(peer_id, None)
        for alias in [a for a, p in self._aliases.items() if p == peer_id]:
            del self._aliases[alias]
        if found is not None:
            log.info("peer channel flushed", extra={"peer_id": peer_id})
            # Calls already on it run to their end (each has a deadline); then it closes.
            if found.in_flight:
                self._retired.add(found)
            else:
                self._close_later(found)

    @contextlib.contextmanager
    def _in_flight(self, peer: _PeerChannel) -> Iterator[None]:
        peer.in_flight += 1
        try:
            yield
        finally:
            peer.in_flight -= 1
            if not peer.in_flight and peer in self._retired:
                self._close_later(peer)

    def _close_later(self, peer: _PeerChannel) -> None:
        self._retired.discard(peer)
        task = asyncio.get_running_loop().create_task(peer.channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # ---- change events (GrantCacheListener) ---------------------------------------

    def on_change(self, change: grants_pb2.WatchChangesResponse) -> None:
        for peer_id in change.peer_ids:
            self.flush(peer_id)

    def clear(self) -> None:
        self._flushes += 1  # a build in progress has no channel to flush yet
        self._cache.clear()  # changes may have been missed: no peer's answers are kept
        for peer_id in list(self._channels):
            self.flush(peer_id)

    async def close(self) -> None:
        self._closed = True  # a build still fetching credentials stores nothing now
        channels, self._channels = list(self._channels.values()), {}
        self._aliases.clear()
        self._cache.clear()
        # Shutting down: flushed channels with calls still running close now too (their
        # calls end as NETWORK errors).
        retired, self._retired = list(self._retired), set()
        for found in channels + retired:
            with contextlib.suppress(Exception):
                await found.channel.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _result_of(error: PeerError) -> str:
    """The ``result`` label of a call to the peer that failed with ``error``."""
    if error.code == NETWORK:
        return "unavailable" if error.server_reason else "unreachable"
    if error.code == INVALID_RESPONSE:
        return "invalid_response"
    return "refused"  # B answered no: FORBIDDEN, NOT_FOUND, RATE_LIMITED, ...


def _certificate_expired(peer_name: str, not_after: dt.datetime) -> PeerError:
    """Our own certificate for the peer has expired: nothing is asked, nothing served."""
    return PeerError(
        UNAUTHENTICATED,
        f"our client certificate for peer {peer_name} expired at {not_after:%Y-%m-%dT%H:%M:%SZ}",
        remediation=_EXPIRED_REMEDIATION,
    )


def _not_reached_error(peer: _PeerChannel, error: PeerError) -> PeerError:
    """``error``; when B was not reached while our certificate's validity has not begun by
    our clock, still NETWORK (a stale answer is served as for any outage: an outage and a
    handshake B refused look alike, and only B's clock decides whether B accepts the
    certificate) but naming the clock as a cause: B's handshake refuses a certificate
    before its notBefore, which gRPC reports as UNAVAILABLE."""
    now = _utcnow()
    if error.code != NETWORK or error.server_reason or now >= peer.not_before:
        return error
    return PeerError(
        NETWORK,
        f"{error.message}; our client certificate for peer {peer.name} is not valid before "
        f"{peer.not_before:%Y-%m-%dT%H:%M:%SZ} by this machine's clock (it says "
        f"{now:%Y-%m-%dT%H:%M:%SZ}): if the peer's clock agrees, its TLS handshake refuses "
        "the certificate",
        remediation=_NOT_YET_VALID_REMEDIATION,
    )


def _verb_text(verb: str) -> str:
    """A query verb as the operator reads it in an error."""
    return f"the `{verb}` verb"


def _call_error(err: grpc.aio.AioRpcError | asyncio.CancelledError, what: str) -> PeerError:
    """A failed call (of ``what``, for the operator) as PeerError. A CancelledError that is
    not our own task's (the channel was closed under the call: gateway shutdown) is the
    peer being out of reach."""
    if isinstance(err, grpc.aio.AioRpcError):
        return _peer_error(err, what)
    task = asyncio.current_task()
    if task is None or task.cancelling():
        raise err
    return PeerError(NETWORK, "the channel to the peer was closed during the call")


def _peer_error(err: grpc.aio.AioRpcError, what: str) -> PeerError:
    """B's refusal with B's reason, message, remediation and retry delay; a status with no
    reason of B's (gRPC's own: connection refused, handshake failed, deadline) is B not
    reached. ``what`` names the call for the operator when B does not implement it."""
    remote = RemoteError.from_rpc_error(err)
    status = err.code()
    # A status this release does not expect from a peer (ALREADY_EXISTS, one added later)
    # is B answering something we cannot use; it says nothing about our access.
    code = _CODE_FOR_STATUS.get(status, INVALID_RESPONSE)
    server_reason = remote.reason if remote.reason != status.name else ""
    if not server_reason and (status in _ANSWERED_BY_THE_PEER or code == INVALID_RESPONSE):
        server_reason = status.name
    message = remote.message or status.name
    request_id = response_request_id(err.trailing_metadata())
    remediation = remote.remediation
    if status in _FAILED_TO_ANSWER:
        server_reason = status.name
        message = f"the peer failed to answer ({status.name})"
        if request_id:
            message += f"; its operator can find request id {request_id} in its log"
        remediation = _FAILED_REMEDIATION
    elif status == grpc.StatusCode.UNIMPLEMENTED:
        message = f"the peer's gateway does not implement {what}: it may run an older release"
        if remote.message:
            message += f" ({remote.message})"
        # Without even `capabilities`, there is nothing to compare versions with.
        advice = (
            _NOTHING_IMPLEMENTED_REMEDIATION
            if what == _verb_text("capabilities")
            else _UNIMPLEMENTED_REMEDIATION
        )
        remediation = remediation or advice
    elif status in _GAVE_UP:
        message = f"the peer gave up on the call ({status.name})"
        if remote.message:
            message += f": {remote.message}"
        remediation = remediation or _GAVE_UP_REMEDIATION
    elif code == INVALID_RESPONSE:
        message = f"the peer answered {what} with status {status.name}, unexpected here"
        if remote.message:
            message += f": {remote.message}"
        if request_id:
            message += f" (its request id {request_id})"
        remediation = remediation or _UNEXPECTED_REMEDIATION
    elif code == NETWORK:
        if server_reason:
            message = f"the peer is up but cannot answer now: {message}"
        else:
            message = f"the peer did not answer ({status.name})"
    return PeerError(
        code,
        message,
        server_reason=server_reason,
        request_id=request_id,
        retry_after_s=remote.retry_after_s,
        remediation=remediation,
        violations=remote.violations,
    )


def _check_answer(verb: str, request: object, answer: object, request_id: str) -> None:
    """Refuse answers that cannot be right (B returned rows we did not ask for), with B's
    request id so B's operator can find the request in its audit log."""
    items: list[object] = []
    resource = getattr(request, "resource", "")
    if verb in ("list", "search"):
        items = list(answer.items)  # type: ignore[attr-defined]
        cap = request.page_size if verb == "list" else request.limit  # type: ignore[attr-defined]
        if cap > 0 and len(items) > cap:
            raise PeerError(
                INVALID_RESPONSE,
                f"the peer returned more than {cap} rows",
                request_id=request_id,
            )
    elif verb == "get":
        item = answer.item  # type: ignore[attr-defined]
        if item.id != request.id:  # type: ignore[attr-defined]
            raise PeerError(
                INVALID_RESPONSE,
                "the peer returned another row than asked for",
                request_id=request_id,
            )
        items = [item]
    for item in items:
        if item.resource != resource:  # type: ignore[attr-defined]
            raise PeerError(
                INVALID_RESPONSE,
                "the peer returned rows of another resource",
                request_id=request_id,
            )
