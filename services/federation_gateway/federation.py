"""Federation: the peer-facing queries, over mTLS, under the grant the certificate carries,
and certificate renewal (flow 6) for that grant.

Every request, whatever its verb, goes through the same gate in this order (cheapest
first; each refusal has its own reason code):

1. identity — the verified client certificate's grant id and subject (parsed once per
   certificate); none → UNAUTHENTICATED ``CERT_NO_GRANT`` (why, and the serial, go to
   B's log at WARNING and the audit row's ``detail``, never to the peer);
2. revocations — the in-memory revoked-serial set must be loaded (else UNAVAILABLE
   ``REVOCATIONS_NOT_LOADED``, fail closed) and must not hold the serial (``CERT_REVOKED``);
3. grant and peer — grant active and unexpired, peer active, inbound and bound to the
   grant, the certificate its current one for the grant's subject (authz.py);
4. rate limit — per grant, GCRA; RESOURCE_EXHAUSTED ``RATE_LIMITED`` with RetryInfo;
5. scope — the resource granted and not excluded, then input checks, then resource-service
   with the Visibility the scope allows; rows coming back are checked against the scope
   again before they are sent, and steps 2 and 3 run again (a read may have waited for
   a resource-service slot while the grant was revoked).

One exception to step 3's *current certificate*: a renewal presented with a certificate
the grant's current one replaced is let through to be answered again (never re-issued)
when its CSR is for the current certificate's key (``_renewed_again``).

Each request writes one audit row, allowed or not, and its answer (or refusal) is sent
only after that row is committed (group commit: audit.py). A request whose caller goes
away is audited as CANCELLED, except a renewal the CA has issued for: that one runs to its
end, and its row says how it ended (``ANSWER_NOT_SENT`` when it completed).

Page size: 0 means ``min(50, max_rows_per_query)``; a larger page size than
``max_rows_per_query`` is clamped to it (Capabilities reports the cap); negative is
INVALID_ARGUMENT ``PAGE_SIZE_INVALID``. Search ``limit`` follows the same rule.
Get answers NOT_FOUND ``RESOURCE_NOT_FOUND`` alike for a missing row and a row outside
the scope.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from cryptography import x509

from federation_gateway.audit import AuditRecord, commit_or_refuse
from federation_gateway.authz import (
    CERT_NOT_CURRENT,
    CERT_NOT_CURRENT_MESSAGE,
    GrantView,
    Refusal,
    check_certificate,
    decide,
    refused,
)
from federation_gateway.context import GatewayContext
from federation_gateway.pagetoken import PageTokenInvalid, PageTokens
from federation_gateway.ratelimit import within_limit
from mosaic import __version__
from mosaic.config import CA, GRANTS
from mosaic.config import RESOURCES as RESOURCE_SERVICE
from mosaic.errors import (
    CA_BACKEND_REASON_PREFIX,
    DEPENDENCY_UNAVAILABLE,
    OUTCOME_UNKNOWN_CODES,
    RemoteError,
    ServiceError,
    internal_error,
    invalid_argument,
    not_found,
    unavailable,
)
from mosaic.federation.v1 import (
    ca_pb2,
    ca_pb2_grpc,
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    grants_pb2,
    grants_pb2_grpc,
    resources_pb2,
    resources_pb2_grpc,
)
from mosaic.ids import uuid_or_none
from mosaic.logs import request_id_var
from mosaic.pki import csr_public_key
from mosaic.repeats import served_certificate
from mosaic.rpc.interceptors import MalformedRequest, malformed_request_error
from mosaic.scope import RESOURCES
from mosaic.search import query_problem
from mosaic.x509ext import grant_identity, serial_hex

log = logging.getLogger("mosaic.gateway.federation")

VERBS = ("capabilities", "list", "get", "search")
DEFAULT_PAGE_SIZE = 50
# One resource-service read, its wait for a slot included. A read shared by several
# requests keeps this bound whatever time each of them has left; each request waits for
# it at most until its own deadline less ANSWER_MARGIN_S (the audit commit and the
# answer), and is then answered UNAVAILABLE DEPENDENCY_UNAVAILABLE. Below the querying
# gateway's 5 s less that margin, so a request with that much time needs no timer of its
# own: the shared call is over first.
SOURCE_DEADLINE_S = 4.0
ANSWER_MARGIN_S = 0.5
# How long a read of a busy key waits before it is sent, so that more identical requests
# can share it. A key is busy for BUSY_FOR_S after a read of it that two requests or more
# shared: a lone request, or one peer's requests one after another, never wait. Under
# load, about 9 requests share each read instead of 6, and the gateway serves 13-23%
# more List requests per second on the same CPUs (docs/CONTRIBUTING.md "Benchmarks").
COALESCE_S = 0.001
BUSY_FOR_S = 0.05
# Busy keys remembered at most; past it the expired ones go, then all (a miss only
# costs a read that is sent at once).
BUSY_KEYS_MAX = 1024
# Reads in flight to resource-service at once. More gains nothing: on SQLite every
# concurrent read there holds its own connection thread, and beyond a few they only
# contend for its GIL (measured: CPU per read grows several-fold at 16 in flight).
SOURCE_CONCURRENCY = 4
# A renewal's own steps (issue, rotate, and after a lost answer one read-back) stay well
# inside the 60 s the querying gateway gives it; revocations run after the answer.
RENEW_CA_DEADLINE_S = 20.0
RENEW_GRANTS_DEADLINE_S = 10.0
# How long after a renewal its answer can be fetched again with the replaced certificate.
RENEW_REPEAT_WINDOW = dt.timedelta(minutes=10)
_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# Reason codes answered here (authz.py has the grant and peer ones).
CERT_MISSING = "CERT_MISSING"
CERT_NO_GRANT = "CERT_NO_GRANT"
CERT_REVOKED = "CERT_REVOKED"
REVOCATIONS_NOT_LOADED = "REVOCATIONS_NOT_LOADED"
RESOURCE_UNKNOWN = "RESOURCE_UNKNOWN"
RESOURCE_NOT_GRANTED = "RESOURCE_NOT_GRANTED"
RESOURCE_EXCLUDED = "RESOURCE_EXCLUDED"
RESOURCE_NOT_FOUND = "RESOURCE_NOT_FOUND"
PAGE_SIZE_INVALID = "PAGE_SIZE_INVALID"
PAGE_TOKEN_INVALID = "PAGE_TOKEN_INVALID"  # noqa: S105 - a reason code, not a secret
ID_INVALID = "ID_INVALID"
QUERY_INVALID = "QUERY_INVALID"
LIMIT_INVALID = "LIMIT_INVALID"
# Audit reason of a renewal that completed after its caller went away: the peer never got
# the new certificate, and its old one is revoked.
ANSWER_NOT_SENT = "ANSWER_NOT_SENT"
# Audit reason of a renewal answered again (_renewed_again).
RENEWAL_REPEATED = "RENEWAL_REPEATED"

# One answer for a row that is missing and a row the grant does not show: the peer must
# not learn which it was (no existence oracle).
_NOT_FOUND_MESSAGE = "no such row"
_NOT_FOUND_REMEDIATION = (
    "check the id: a list or search of this resource shows the rows this grant lets you read"
)
_REVOKED_MESSAGE = "this certificate has been revoked"
# Verbs that read resource-service: admitted again before they are answered (_serve).
_READS = frozenset({"list", "get", "search"})
# How an answer is classified in the audit log; everything else is "error".
_DENIED = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
_ALLOWED = frozenset({grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND})

R = TypeVar("R")

# The loop time by which the current request's read must be over (None: no deadline).
_read_by: ContextVar[float | None] = ContextVar("mosaic_read_by", default=None)


class _CancelledWhileFinishing(asyncio.CancelledError):
    """The caller went away while work that runs to its end anyway (a renewal the CA has
    issued for) was still running: the request is audited by how ``finishing`` ends."""

    def __init__(self, finishing: asyncio.Future[Any]) -> None:
        super().__init__()
        self.finishing = finishing


@dataclass(frozen=True, slots=True)
class CertIdentity:
    """What a client certificate says: its serial and the grant it carries."""

    serial: str
    grant_id: str
    subject_user_id: str
    grant_uuid: uuid.UUID
    subject_uuid: uuid.UUID


@dataclass(frozen=True, slots=True)
class UnusableCertificate:
    """Why a client certificate (that TLS verified) carries no grant this gateway can read:
    for B's log and the audit row's detail, never for the peer (it gets CERT_NO_GRANT)."""

    # Lowercase hex, as `mosaic` prints serials; "" when the certificate did not parse.
    serial: str
    problem: str

    def detail(self) -> str:
        serial = self.serial or "(unreadable)"
        return f"certificate serial {serial}: {self.problem}"


# The longest problem text kept (an ASN.1 parser's message can quote tags at length).
_MAX_PROBLEM = 400
# Each unusable certificate is logged at most once per this many seconds (every refusal
# still has its audit row, with the detail); at most this many are remembered.
UNUSABLE_LOG_EVERY_S = 60.0
_UNUSABLE_REMEMBERED = 1024
_unusable_logged: dict[UnusableCertificate, float] = {}


def _first_in_a_while(unusable: UnusableCertificate) -> bool:
    now = time.monotonic()
    last = _unusable_logged.get(unusable)
    if last is not None and now - last < UNUSABLE_LOG_EVERY_S:
        return False
    if len(_unusable_logged) >= _UNUSABLE_REMEMBERED:
        _unusable_logged.clear()
    _unusable_logged[unusable] = now
    return True


@functools.lru_cache(maxsize=4096)
def certificate_identity(pem: bytes) -> CertIdentity | UnusableCertificate:
    """Parse once per distinct certificate; UnusableCertificate (saying why) when it carries
    no valid grant."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        return UnusableCertificate("", f"the certificate does not parse: {exc}"[:_MAX_PROBLEM])
    # serial_hex refuses a serial RFC 5280 does not allow; the log still wants it.
    serial = format(cert.serial_number, "x")
    try:
        identity = grant_identity(cert)
        serial = serial_hex(cert.serial_number)
    except ValueError as exc:  # InvalidGrantExtension (a ValueError), or a serial out of range
        return UnusableCertificate(serial[:64], str(exc)[:_MAX_PROBLEM])
    return CertIdentity(
        serial=serial,
        grant_id=identity.grant_id,
        subject_user_id=identity.subject_user_id,
        grant_uuid=uuid.UUID(identity.grant_id),
        subject_uuid=uuid.UUID(identity.subject_user_id),
    )


def query_hash(verb: str, request: Any) -> str:
    """SHA-256 of the verb and the canonical (deterministic) encoding of the request."""
    return hashlib.sha256(
        verb.encode() + b"\x00" + request.SerializeToString(deterministic=True)
    ).hexdigest()


def outcome_of(code: grpc.StatusCode) -> str:
    if code in _ALLOWED:
        return "allowed"
    if code in _DENIED:
        return "denied"
    return "error"


def _resource(request: Any) -> str:
    """The request's resource field; "" for a request that did not parse."""
    return "" if type(request) is MalformedRequest else str(request.resource)


def _page_size(requested: int, cap: int, field: str, reason: str) -> int:
    if requested < 0:
        raise invalid_argument(
            reason, f"{field} must not be negative", violations=[(field, "negative")]
        )
    if requested == 0:
        return min(DEFAULT_PAGE_SIZE, cap)
    return min(requested, cap)


class FederationServicer(gateway_pb2_grpc.FederationServicer):
    """Capabilities, List, Get and Search for the peer whose certificate carries a grant, and
    RenewCertificate (flow 6) for the same grant."""

    def __init__(self, gateway: GatewayContext) -> None:
        runtime = gateway.runtime
        self._revoked = gateway.revoked
        self._grants = gateway.grant_cache
        self._ca = ca_pb2_grpc.CertificateAuthorityStub(runtime.channels.get(CA))
        self._grant_store = grants_pb2_grpc.GrantsStub(runtime.channels.get(GRANTS))
        self._resources = resources_pb2_grpc.ResourceSourceStub(
            runtime.channels.get(RESOURCE_SERVICE)
        )
        self._limiter = gateway.grant_limiter
        self._renew_limiter = gateway.renew_limiter
        self._audit = gateway.audit
        self._tokens = PageTokens(runtime.sealer.derive_key("page-token"))
        self._rate_limit = runtime.config.rate_limit
        # Renewals finish even if their caller goes away, and revoke the replaced certificate
        # after answering: both get a grace at shutdown.
        self._unfinished = gateway.unfinished
        self._source_slots = asyncio.Semaphore(SOURCE_CONCURRENCY)
        # Identical resource-service reads in flight right now (see _read).
        self._inflight: dict[tuple[Any, bytes], _SharedRead] = {}
        # Keys whose last read was shared, and the loop time until which they are busy.
        self._busy: dict[tuple[Any, bytes], float] = {}
        # The page last built from a shared read, as (read reply, grant view, page): the
        # other requests of the same grant that shared that read get the same page without
        # checking and copying its rows again (see _list).
        self._last_page: tuple[Any, GrantView, gateway_pb2.ListResponse] | None = None

    # ---- the verbs -----------------------------------------------------------------

    async def Capabilities(
        self, request: gateway_pb2.CapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CapabilitiesResponse:
        return await self._serve("capabilities", "", request, context, self._capabilities)

    async def List(
        self, request: gateway_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListResponse:
        return await self._serve("list", _resource(request), request, context, self._list)

    async def Get(
        self, request: gateway_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.GetResponse:
        return await self._serve("get", _resource(request), request, context, self._get)

    async def Search(
        self, request: gateway_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.SearchResponse:
        return await self._serve("search", _resource(request), request, context, self._search)

    async def RenewCertificate(
        self, request: gateway_pb2.RenewCertificateRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.RenewCertificateResponse:
        return await self._serve("renew", "", request, context, self._renew, superseded_ok=True)

    # ---- the gate and the audit row ------------------------------------------------

    async def _serve(
        self,
        verb: str,
        resource: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        handler: Callable[[GrantView, Any], Awaitable[R]],
        *,
        superseded_ok: bool = False,
    ) -> R:
        started = time.perf_counter()
        record = AuditRecord(
            request_id=request_id_var.get(),
            verb=verb,
            status="OK",
            outcome="allowed",
            # Only allowlisted names reach the table (the column is short; input is hostile).
            resource=resource if resource in RESOURCES else ("(invalid)" if resource else None),
            query_hash=query_hash(verb, request),
            source_address=(context.peer() or "")[:128] or None,
        )
        if verb in _READS:
            remaining = context.time_remaining()
            _read_by.set(
                None
                if remaining is None
                else asyncio.get_running_loop().time() + remaining - ANSWER_MARGIN_S
            )
        try:
            view, identity = await self._authorize(
                context, record, request if superseded_ok else None
            )
            if type(request) is MalformedRequest:  # audited and rate-limited, then refused
                raise malformed_request_error()
            response: Any
            if identity.serial != view.cert_serial:  # only with superseded_ok (renewal)
                response = await self._renewed_again(view, identity, request)
                record.reason = RENEWAL_REPEATED
            else:
                response = await handler(view, request)
            if verb in _READS:
                # A read may have waited for a resource-service slot, behind other peers'
                # reads: a revoke or suspension meanwhile holds for this answer too.
                await self._admit(identity, record)
        except ServiceError as exc:
            self._finish(record, exc.code, started, reason=exc.reason)
            await self._commit(record)
            raise
        except asyncio.CancelledError as exc:
            # The caller went away (or its deadline passed): still one row per request,
            # written in the background since this task is being cancelled. Work that goes
            # on without the caller is audited by how it ends, not as cancelled.
            self._finish(record, grpc.StatusCode.CANCELLED, started, reason="CANCELLED")
            if isinstance(exc, _CancelledWhileFinishing):
                self._audit.record_when_done(
                    record,
                    exc.finishing,
                    functools.partial(self._finish_unanswered, started=started),
                )
            else:
                self._audit.record_soon(record)
            raise
        except Exception:
            log.exception("federation %s failed", verb)
            self._finish(record, grpc.StatusCode.INTERNAL, started, reason="INTERNAL")
            await self._commit(record)
            raise internal_error(record.request_id) from None
        record.bytes_out = response.ByteSize()
        record.latency_ms = (time.perf_counter() - started) * 1000
        await self._commit(record)
        return response

    async def _commit(self, record: AuditRecord) -> None:
        await commit_or_refuse(self._audit, record)

    @staticmethod
    def _finish(record: AuditRecord, code: grpc.StatusCode, started: float, *, reason: str) -> None:
        record.status = code.name
        record.outcome = outcome_of(code)
        record.reason = reason
        record.latency_ms = (time.perf_counter() - started) * 1000

    @classmethod
    def _finish_unanswered(
        cls, record: AuditRecord, work: asyncio.Future[Any], *, started: float
    ) -> None:
        """``record`` as ``work``, which went on after its caller went away, ended: completed
        (OK, nothing sent), refused or failed as it would have been answered, or cancelled."""
        if work.cancelled():
            return  # stays CANCELLED
        error = work.exception()
        if error is None:
            cls._finish(record, grpc.StatusCode.OK, started, reason=ANSWER_NOT_SENT)
        elif isinstance(error, ServiceError):
            cls._finish(record, error.code, started, reason=error.reason)
        else:
            log.error("federation %s failed", record.verb, exc_info=error)
            cls._finish(record, grpc.StatusCode.INTERNAL, started, reason="INTERNAL")

    async def _authorize(
        self,
        context: grpc.aio.ServicerContext,
        record: AuditRecord,
        renewal: gateway_pb2.RenewCertificateRequest | MalformedRequest | None,
    ) -> tuple[GrantView, CertIdentity]:
        """Identity, the gate's state checks and the grant's rate limit. ``renewal`` (for
        RenewCertificate only) lets a replaced certificate through to be answered again
        (_superseded), without the grant's limit."""
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED, CERT_MISSING, "a client certificate is required"
            )
        identity = certificate_identity(pems[0])
        if isinstance(identity, UnusableCertificate):
            # The peer learns no more than before; the operator learns which certificate
            # and why (a template change, an extension cryptography cannot parse).
            record.detail = identity.detail()
            if _first_in_a_while(identity):  # a peer retrying in a loop: not every time
                log.warning(
                    "client certificate carries no usable grant",
                    extra={
                        "reason": CERT_NO_GRANT,
                        "serial": identity.serial,
                        "problem": identity.problem,
                        "source_address": record.source_address or "",
                    },
                )
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                CERT_NO_GRANT,
                "the client certificate carries no valid grant",
                remediation="use the certificate this gateway issued at enrollment",
            )
        record.grant_id = identity.grant_uuid
        record.subject_user_id = identity.subject_uuid
        try:
            view = await self._admit(identity, record)
        except ServiceError as exc:
            if renewal is None or exc.reason not in (CERT_REVOKED, CERT_NOT_CURRENT):
                raise
            return await self._superseded(identity, exc, renewal), identity
        await within_limit(self._limiter, identity.grant_id, "rate limit exceeded for this grant")
        return view, identity

    async def _superseded(
        self,
        identity: CertIdentity,
        refusal: ServiceError,
        request: gateway_pb2.RenewCertificateRequest | MalformedRequest,
    ) -> GrantView:
        """For a renewal presented with a certificate the grant's current one replaced: the
        grant's view if the request may be a repeat (a CSR proving possession of a key, at
        most a few per presented certificate, the grant servable and this an earlier
        certificate of it, for its subject); the renewal handler then answers only a CSR for
        the current certificate's key (_renewed_again). Anything else gets ``refusal``, the
        gate's own answer: a replaced certificate neither spends the grant's limits nor
        learns anything of its state. A current certificate that is revoked stays refused."""
        if isinstance(request, MalformedRequest) or csr_public_key(request.csr_pem) is None:
            raise refusal
        try:
            await within_limit(self._renew_limiter, f"repeat:{identity.serial}", "")
        except ServiceError:
            raise refusal from None
        result = await self._grants.get(identity.grant_id)
        if isinstance(result, Refusal) or result.cert_serial == identity.serial:
            raise refusal
        now = time.time()
        if check_certificate(
            result, serial=result.cert_serial, subject_user_id=identity.subject_user_id, now=now
        ):
            raise refusal
        return result

    async def _admit(self, identity: CertIdentity, record: AuditRecord) -> GrantView:
        """The gate's state checks (all in memory while the grant's entry is cached): the
        revocation list loaded and without this serial, the grant servable, this its
        current certificate for its subject."""
        # The row names the peer even when this is refused before grants-service answers.
        record.peer_id = self._grants.peer_of(identity.grant_id)
        revoked = self._revoked
        if not revoked.loaded:
            raise unavailable(
                REVOCATIONS_NOT_LOADED,
                "the gateway has not loaded the revocation list yet",
                remediation="retry shortly",
                retry_after_s=1.0,
            )
        revoked_peer = revoked.serials.get(identity.serial)
        if revoked_peer is not None:
            record.peer_id = uuid_or_none(revoked_peer)
            raise refused(CERT_REVOKED, _REVOKED_MESSAGE)
        result = await self._grants.get(identity.grant_id)
        if isinstance(result, Refusal):
            if result.peer_id:
                record.peer_id = uuid.UUID(result.peer_id)
            raise result.error()
        record.peer_id = result.peer_uuid
        refusal = check_certificate(
            result,
            serial=identity.serial,
            subject_user_id=identity.subject_user_id,
            now=time.time(),
        )
        if refusal is not None:
            raise refusal.error()
        return result

    @staticmethod
    def _access(view: GrantView, resource: str) -> Any:
        access = view.access.get(resource)
        if access is not None:
            return access
        if resource in view.scope.excluded_resources:
            raise refused(RESOURCE_EXCLUDED, f"{resource} is excluded by this grant")
        if resource in RESOURCES:
            raise refused(RESOURCE_NOT_GRANTED, f"{resource} is not granted")
        raise invalid_argument(
            RESOURCE_UNKNOWN,
            "unknown resource; expected one of " + ", ".join(RESOURCES),
            violations=[("resource", "not a known resource")],
        )

    # ---- handlers ------------------------------------------------------------------

    async def _capabilities(
        self, view: GrantView, request: gateway_pb2.CapabilitiesRequest
    ) -> gateway_pb2.CapabilitiesResponse:
        return gateway_pb2.CapabilitiesResponse(
            resources=list(view.access),
            verbs=list(VERBS),
            max_rows_per_query=view.scope.max_rows_per_query,
            rate_limit_per_second=self._rate_limit.per_second,
            rate_limit_burst=self._rate_limit.burst,
            server_version=__version__,
            grant_id=view.grant_id,
            subject_user_id=view.subject_user_id,
        )

    async def _list(
        self, view: GrantView, request: gateway_pb2.ListRequest
    ) -> gateway_pb2.ListResponse:
        access = self._access(view, request.resource)
        limit = _page_size(
            request.page_size, view.scope.max_rows_per_query, "page_size", PAGE_SIZE_INVALID
        )
        after_id = ""
        if request.page_token:
            try:
                after_id = self._tokens.after_id(
                    request.page_token, grant_id=view.grant_id, resource=request.resource
                )
            except PageTokenInvalid as exc:
                raise invalid_argument(
                    PAGE_TOKEN_INVALID, str(exc), violations=[("page_token", "invalid")]
                ) from None
        reply = await self._read(
            self._resources.ListResources,
            resources_pb2.ListResourcesRequest(
                resource=request.resource,
                visibility=access.visibility,
                limit=limit,
                after_id=after_id,
            ),
        )
        # Requests sharing one read (the same reply object: same resource, visibility,
        # cursor and size) under the same grant view get one page: the same rows, checked
        # against the same scope, and the same cursor bound to the same grant. Another
        # grant, or this grant after a cache refresh (a new view object), builds its own.
        last = self._last_page
        if last and last[0] is reply and last[1] is view:
            return last[2]
        items: Any = reply.items
        after = reply.next_after_id
        if len(items) > limit:  # a source that ignores the limit: the cap still holds
            log.error(
                "resource-service returned more rows than asked for; truncated",
                extra={"grant_id": view.grant_id, "resource": request.resource},
            )
            items = items[:limit]
            after = items[-1].id
        if not _all_visible(view, access, request.resource, items):
            items = [i for i in items if _visible(view, access, request.resource, i)]
        next_token = (
            self._tokens.make(grant_id=view.grant_id, resource=request.resource, after_id=after)
            if after
            else ""
        )
        page = gateway_pb2.ListResponse(items=items, next_page_token=next_token)
        self._last_page = (reply, view, page)
        return page

    async def _get(
        self, view: GrantView, request: gateway_pb2.GetRequest
    ) -> gateway_pb2.GetResponse:
        access = self._access(view, request.resource)
        if _ID.fullmatch(request.id) is None:
            raise invalid_argument(
                ID_INVALID,
                "invalid id: 1 to 64 characters of A-Z a-z 0-9 . _ : -",
                violations=[("id", "not a valid id")],
            )
        reply = await self._read(
            self._resources.GetResource,
            resources_pb2.GetResourceRequest(
                resource=request.resource, id=request.id, visibility=access.visibility
            ),
        )
        if not _visible(view, access, request.resource, reply.item) or reply.item.id != request.id:
            raise _row_not_found()
        return gateway_pb2.GetResponse(item=reply.item)

    async def _search(
        self, view: GrantView, request: gateway_pb2.SearchRequest
    ) -> gateway_pb2.SearchResponse:
        access = self._access(view, request.resource)
        text = request.query
        problem = query_problem(text)
        if problem is not None:
            raise invalid_argument(QUERY_INVALID, problem, violations=[("query", problem)])
        limit = _page_size(request.limit, view.scope.max_rows_per_query, "limit", LIMIT_INVALID)
        reply = await self._read(
            self._resources.SearchResources,
            resources_pb2.SearchResourcesRequest(
                resource=request.resource,
                query=text,
                visibility=access.visibility,
                limit=limit,
            ),
        )
        items = reply.items
        if not _all_visible(view, access, request.resource, items):
            items = [i for i in items if _visible(view, access, request.resource, i)]
        # The source's own word that rows were left out to fit one message, passed on: the
        # peer cannot tell such a reply from one that holds every match.
        return gateway_pb2.SearchResponse(items=items[:limit], truncated=reply.truncated)

    async def _renew(
        self, view: GrantView, request: gateway_pb2.RenewCertificateRequest
    ) -> gateway_pb2.RenewCertificateResponse:
        """Flow 6 (serving side): re-issue for the same grant, subject and peer; the new
        certificate replaces the presented one (which the gate found current) at grants-service
        only if it is still current, then the old serial is revoked.

        Once the CA has issued, the rest runs to the end even if the caller goes away, so
        nothing is left half-done: either the grant's certificate is the new one and the old
        one is revoked, or the new one is revoked and the old one stays current. When the
        rotate call fails in a way that may have come after its commit (a timeout, an
        outage), grants-service is asked which is current; if it cannot say, neither is
        revoked (the gate serves only the current one) and the caller gets the error.

        Renewals have a limit of their own per grant, far below the query rate: each one
        revokes a certificate, and every gateway keeps every revocation in memory until
        the revoked certificate expires.
        """
        await within_limit(
            self._renew_limiter, view.grant_id, "too many certificate renewals for this grant"
        )
        # Before anything is issued: without it (step-ca) the peer could not verify the
        # new chain, after the old certificate is revoked.
        root = await self._client_root()
        try:
            issued: ca_pb2.IssueCertificateResponse = await self._ca.IssueCertificate(
                ca_pb2.IssueCertificateRequest(
                    csr_pem=request.csr_pem,
                    grant_id=view.grant_id,
                    subject_user_id=view.subject_user_id,
                    peer_id=view.peer_id,
                ),
                timeout=RENEW_CA_DEADLINE_S,
            )
        except grpc.aio.AioRpcError as err:
            raise _for_renewing_peer(RemoteError.from_rpc_error(err)) from None
        task = self._unfinished.start(self._record_renewal(view, issued, root))
        task.add_done_callback(_renewal_done)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The caller went away; the renewal goes on, and _serve audits how it ends.
            raise _CancelledWhileFinishing(task) from None

    async def _record_renewal(
        self, view: GrantView, issued: ca_pb2.IssueCertificateResponse, root: str
    ) -> gateway_pb2.RenewCertificateResponse:
        old_serial = view.cert_serial
        ids = {"grant_id": view.grant_id, "peer_id": view.peer_id, "serial": issued.serial}
        try:
            await self._grant_store.RotatePeerCertificate(
                grants_pb2.RotatePeerCertificateRequest(
                    peer_id=view.peer_id,
                    grant_id=view.grant_id,
                    expected_serial=old_serial,
                    cert_serial=issued.serial,
                    cert_pem=issued.certificate_pem,
                    cert_not_after=issued.not_after,
                ),
                timeout=RENEW_GRANTS_DEADLINE_S,
            )
        except grpc.aio.AioRpcError as err:
            remote = RemoteError.from_rpc_error(err)
            # A timeout or an outage says nothing about whether grants-service committed:
            # ask which certificate is current before revoking either.
            current = (
                await self._current_serial(view)
                if err.code() in OUTCOME_UNKNOWN_CODES
                else old_serial
            )
            if current is None:
                # Unknown: leave the new certificate be. If it is not current the gate
                # refuses it anyway; if it is, revoking it would lock the peer out.
                log.warning("renewal outcome unknown; new certificate not revoked", extra=ids)
                raise _for_renewing_peer(remote) from None
            if current != issued.serial:
                log.warning("renewal not recorded; revoking the new certificate", extra=ids)
                self._revoke_later(issued.serial, "renewal not recorded", view)
                raise _for_renewing_peer(remote) from None
            log.info("renewal recorded although the rotate call failed", extra=ids)
        self._grants.invalidate(grant_ids=[view.grant_id])
        # The answer does not wait for the CA: the gate serves only the grant's current
        # certificate already, and a slow CA must not turn a renewal that is done into a
        # lost answer (A would have to enroll again).
        self._revoke_later(old_serial, "superseded by renewal", view)
        log.info("peer certificate renewed", extra=ids | {"old_serial": old_serial})
        chain = list(issued.chain_pem)
        if root:
            chain.append(root)
        return gateway_pb2.RenewCertificateResponse(
            certificate_pem=issued.certificate_pem,
            chain_pem=chain,
            serial=issued.serial,
            not_after=issued.not_after,
        )

    async def _current_serial(self, view: GrantView) -> str | None:
        """The serial grants-service holds as the grant's current certificate; None when it
        cannot say."""
        try:
            reply: grants_pb2.GetGrantResponse = await self._grant_store.GetGrant(
                grants_pb2.GetGrantRequest(id=view.grant_id), timeout=RENEW_GRANTS_DEADLINE_S
            )
        except grpc.aio.AioRpcError as err:
            log.warning("current certificate unknown", extra={"code": err.code().name})
            return None
        if reply.grant.peer_id != view.peer_id:
            return None
        return reply.grant.cert_serial

    def _revoke_later(self, serial: str, reason: str, view: GrantView) -> None:
        self._unfinished.start(self._revoke_serial(serial, reason, view))

    async def _revoke_serial(self, serial: str, reason: str, view: GrantView) -> None:
        """Best effort: the grants-service record already decides which serial is current."""
        try:
            await self._ca.RevokeCertificate(
                ca_pb2.RevokeCertificateRequest(serial=serial, reason=reason),
                timeout=RENEW_CA_DEADLINE_S,
            )
        except grpc.aio.AioRpcError as err:
            log.warning(
                "certificate not revoked at the CA",
                extra={
                    "serial": serial,
                    "grant_id": view.grant_id,
                    "peer_id": view.peer_id,
                    "revocation_reason": reason,
                    "code": err.code().name,
                },
            )

    async def _renewed_again(
        self, view: GrantView, identity: CertIdentity, request: gateway_pb2.RenewCertificateRequest
    ) -> gateway_pb2.RenewCertificateResponse:
        """A renewal repeated with the certificate it replaced (its answer was lost): the
        grant's current certificate again, if the grant and peer are still servable (read
        afresh), the CSR proves its sender holds that certificate's key, and the
        certificate started less than RENEW_REPEAT_WINDOW ago. Nothing is issued or
        changed. Anything else gets the refusal the gate would have given.

        The certificate is the grant's own (grants-service keeps one per grant), so a peer
        holding several grants may renew another in between."""
        refusal: ServiceError = (
            refused(CERT_REVOKED, _REVOKED_MESSAGE)
            if identity.serial in self._revoked.serials
            else refused(CERT_NOT_CURRENT, CERT_NOT_CURRENT_MESSAGE)
        )
        key = csr_public_key(request.csr_pem)
        if key is None:
            raise refusal
        try:
            reply: grants_pb2.GetGrantResponse = await self._grant_store.GetGrant(
                grants_pb2.GetGrantRequest(id=view.grant_id, with_certificate=True),
                timeout=RENEW_GRANTS_DEADLINE_S,
            )
        except grpc.aio.AioRpcError as err:
            raise _for_renewing_peer(RemoteError.from_rpc_error(err)) from None
        fresh = decide(reply)  # revoked or suspended since the gate's cached view?
        if isinstance(fresh, Refusal) or fresh.cert_serial != view.cert_serial:
            raise refusal  # no longer servable, or renewed again meanwhile
        # The grant's own certificate, whatever the peer's other grants did since.
        served = served_certificate(reply, key)
        if served is None:
            raise refusal
        issued_ago = dt.datetime.now(dt.UTC) - served.certificate.not_valid_before_utc
        if issued_ago > RENEW_REPEAT_WINDOW:
            raise refusal
        trust = await self._trust_bundle()
        log.info(
            "renewal answered again",
            extra={
                "grant_id": view.grant_id,
                "peer_id": view.peer_id,
                "serial": view.cert_serial,
                "presented_serial": identity.serial,
            },
        )
        return gateway_pb2.RenewCertificateResponse(
            certificate_pem=served.pem,
            chain_pem=[*trust.intermediates_pem, *_unpinned_root(trust)],
            serial=view.cert_serial,
            not_after=served.not_after,
            repeated=True,
        )

    async def _client_root(self) -> str:
        """With the step-ca backend, the root client certificates chain to (sent along, as
        enrollment does, so the peer can verify the whole chain); "" with the local CA."""
        return "".join(_unpinned_root(await self._trust_bundle()))

    async def _trust_bundle(self) -> ca_pb2.GetTrustBundleResponse:
        try:
            trust: ca_pb2.GetTrustBundleResponse = await self._ca.GetTrustBundle(
                ca_pb2.GetTrustBundleRequest(), timeout=RENEW_CA_DEADLINE_S
            )
        except grpc.aio.AioRpcError as err:
            log.warning("trust bundle unavailable", extra={"code": err.code().name})
            raise unavailable(
                DEPENDENCY_UNAVAILABLE,
                "the serving gateway cannot renew certificates right now",
                remediation="retry shortly; your certificate is unchanged",
                retry_after_s=5.0,
            ) from None
        return trust

    async def _read(self, method: Callable[..., Awaitable[R]], request: Any) -> R:
        """Call resource-service: at most SOURCE_CONCURRENCY calls at once, and identical
        concurrent reads share one call.

        Identical means the same method and byte-identical request (resource, visibility,
        cursor, limit), so every sharer is entitled to exactly the same rows; each request
        is still authorized, rate-limited and audited on its own. A read of a busy key
        (its last read was shared) is sent COALESCE_S late, for more requests to join it.
        """
        key = (method, request.SerializeToString(deterministic=True))
        read = self._inflight.get(key)
        if read is None:
            now = asyncio.get_running_loop().time()
            wait = COALESCE_S if self._busy.get(key, 0.0) > now else 0.0
            over_by = now + SOURCE_DEADLINE_S
            shared = asyncio.ensure_future(self._call_source(method, request, over_by, wait))
            self._inflight[key] = read = _SharedRead(shared, over_by)
            shared.add_done_callback(functools.partial(self._read_done, key))
        else:
            read.sharers += 1
        return await self._source(read.call, read.over_by)

    async def _call_source(
        self, method: Callable[..., Awaitable[R]], request: Any, deadline: float, wait: float
    ) -> R:
        """The shared call: after ``wait`` for more sharers, a slot and the answer by
        ``deadline`` (loop time) in all."""
        loop = asyncio.get_running_loop()
        if wait:
            await asyncio.sleep(wait)
        slots = self._source_slots
        if slots.locked():  # a timer only when the wait may be long
            async with asyncio.timeout_at(deadline):
                await slots.acquire()
        else:
            await slots.acquire()
        try:
            return await method(request, timeout=max(deadline - loop.time(), 0.001))
        finally:
            slots.release()

    def _read_done(self, key: tuple[Any, bytes], shared: asyncio.Future[Any]) -> None:
        read = self._inflight.pop(key, None)
        if read is not None and read.sharers > 1:
            busy = self._busy
            now = asyncio.get_running_loop().time()
            if len(busy) >= BUSY_KEYS_MAX and key not in busy:
                for stale in [k for k, until in busy.items() if until <= now]:
                    del busy[stale]
                if len(busy) >= BUSY_KEYS_MAX:
                    busy.clear()
            busy[key] = now + BUSY_FOR_S
        if not shared.cancelled():
            shared.exception()  # retrieved: every sharer may have gone away

    async def _source(self, shared: asyncio.Future[R], over_by: float) -> R:
        """Await the shared resource-service call (over by ``over_by``) until this
        request's own deadline (less ANSWER_MARGIN_S) at most; its refusals become ours,
        its outages and a call that outlasts this request's time UNAVAILABLE."""
        read_by = _read_by.get()
        try:
            if read_by is None or read_by >= over_by:  # the shared call's bound comes first
                return await asyncio.shield(shared)
            async with asyncio.timeout_at(read_by):  # one timer; the shared call goes on
                return await asyncio.shield(shared)
        except TimeoutError:  # no slot in time, or this request's own time ran out
            raise _source_not_answering() from None
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code == grpc.StatusCode.NOT_FOUND:
                raise _row_not_found() from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                remote = RemoteError.from_rpc_error(err)
                raise invalid_argument(
                    remote.reason, remote.message, violations=remote.violations
                ) from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise _source_not_answering() from None
            log.error("resource-service failed", extra={"code": code.name})
            raise


class _SharedRead:
    """One resource-service call in flight, the loop time by which it is over, and how
    many requests wait for it."""

    __slots__ = ("call", "over_by", "sharers")

    def __init__(self, call: asyncio.Future[Any], over_by: float) -> None:
        self.call = call
        self.over_by = over_by
        self.sharers = 1


def _source_not_answering() -> ServiceError:
    return unavailable(
        DEPENDENCY_UNAVAILABLE,
        "the data source is not answering",
        remediation="retry shortly",
        retry_after_s=1.0,
    )


def _unpinned_root(trust: ca_pb2.GetTrustBundleResponse) -> list[str]:
    """The root client certificates chain to, when it is not the one peers pinned (the
    step-ca backend): sent along so the peer can verify the whole chain."""
    if trust.root_pem and trust.root_sha256 != trust.server_root_sha256:
        return [trust.root_pem]
    return []


def _for_renewing_peer(remote: RemoteError) -> ServiceError:
    """What a renewing peer learns of ca-service's or grants-service's refusal: refusals of
    its CSR or its grant's state as they are; our own trouble (a CA backend naming our
    set-up, an internal check) generically, as enrollment does."""
    if remote.code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    ) and not remote.reason.startswith(CA_BACKEND_REASON_PREFIX):
        return remote.to_service_error(metadata={})  # not our services' request ids
    if remote.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or (
        remote.reason.startswith(CA_BACKEND_REASON_PREFIX)
    ):
        return unavailable(
            DEPENDENCY_UNAVAILABLE,
            "the serving gateway cannot renew certificates right now",
            remediation="retry shortly",
            retry_after_s=remote.retry_after_s or 5.0,
        )
    log.error("renewal failed", extra={"code": remote.code.name, "reason": remote.reason})
    return internal_error(request_id_var.get() or "")


def _renewal_done(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: the caller may have gone away meanwhile


def _visible(view: GrantView, access: Any, resource: str, item: common_pb2.ResourceItem) -> bool:
    """Defence in depth: the row is the subject's, of this resource, and inside the filter."""
    if item.owner_user_id != view.subject_user_id or item.resource != resource:
        return False
    team = item.team_id
    return access.include_personal if not team else team in access.teams


def _all_visible(view: GrantView, access: Any, resource: str, items: Any) -> bool:
    for item in items:
        if not _visible(view, access, resource, item):
            log.error(
                "resource-service returned a row outside the scope; dropped",
                extra={"grant_id": view.grant_id, "resource": resource},
            )
            return False
    return True


def _row_not_found() -> ServiceError:
    """The one NOT_FOUND a Get answers, whether the row is missing or outside the scope."""
    return not_found(RESOURCE_NOT_FOUND, _NOT_FOUND_MESSAGE, remediation=_NOT_FOUND_REMEDIATION)
