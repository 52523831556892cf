"""A FederationServicer wired to fake dependencies: every outbound call (resource-service,
grants-service, ca-service) goes to one function of the test, by method name. For the
parts of the serving path that a real resource-service or grants-service never provokes:
a source that breaks its contract, a call that fails after taking effect."""

from __future__ import annotations

import asyncio
import inspect
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from federation_gateway import federation
from federation_gateway.authz import GrantCache, GrantView, decide
from federation_gateway.federation import CertIdentity, FederationServicer
from federation_gateway.ratelimit import LocalGcra, RateLimiter
from federation_gateway.revocations import RevokedSerials
from federation_gateway.unfinished import UnfinishedWork
from mosaic.errors import ServiceError
from mosaic.federation.v1 import ca_pb2, grants_pb2, grants_pb2_grpc

GRANT_ID = str(uuid.uuid4())
PEER_ID = str(uuid.uuid4())
SUBJECT = str(uuid.uuid4())

# (method name, request) -> response, or an awaitable of one; raise an AioRpcError
# (rpc_error) to fail the call.
Backend = Callable[[str, Any], Any]


def grant_reply(
    *,
    cert_serial: str = "01ab",
    grant_id: str = GRANT_ID,
    peer_id: str = PEER_ID,
    subject: str = SUBJECT,
    status: grants_pb2.GrantStatus.ValueType = grants_pb2.GRANT_STATUS_ACTIVE,
    peer_state: grants_pb2.PeerState.ValueType = grants_pb2.PEER_STATE_ACTIVE,
    max_rows: int = 100,
    peer_cert_serial: str | None = None,
    peer_cert_pem: str = "",
    cert_pem: str = "",
    filters: dict[str, Any] | None = None,
) -> grants_pb2.GetGrantResponse:
    """grants-service's GetGrant: a grant on tasks for ``subject``, served with
    ``cert_serial``, bound to the inbound peer ``peer_id`` (whose row holds
    ``peer_cert_serial``, by default the same, and ``peer_cert_pem``); ``cert_pem`` is the
    grant's certificate,
    as grants-service returns it when asked (``with_certificate``); ``filters`` the scope's
    row filters (DESIGN.md "Scope"), by default none (personal rows only)."""
    scope: dict[str, Any] = {"resources": ["tasks"], "max_rows_per_query": max_rows}
    if filters is not None:
        scope["filters"] = filters
    return grants_pb2.GetGrantResponse(
        grant=grants_pb2.Grant(
            id=grant_id,
            peer_id=peer_id,
            subject_user_id=subject,
            status=status,
            scope_json=json.dumps(scope),
            cert_serial=cert_serial,
        ),
        peer=grants_pb2.Peer(
            id=peer_id,
            direction=grants_pb2.PEER_DIRECTION_INBOUND,
            state=peer_state,
            cert_serial=cert_serial if peer_cert_serial is None else peer_cert_serial,
            cert_pem=peer_cert_pem,
        ),
        certificate=grants_pb2.GrantCertificate(pem=cert_pem) if cert_pem else None,
    )


def grant_view(
    max_rows: int = 100, cert_serial: str = "01ab", grant_id: str = GRANT_ID
) -> GrantView:
    """An active grant on tasks for SUBJECT, bound to the active inbound peer PEER_ID."""
    view = decide(grant_reply(max_rows=max_rows, cert_serial=cert_serial, grant_id=grant_id))
    assert isinstance(view, GrantView)
    return view


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def service_rpc_error(error: ServiceError) -> grpc.aio.AioRpcError:
    """``error`` as its caller receives it from a real server: the rich status
    (ErrorInfo, RetryInfo, ...) in the trailing metadata."""
    status = error.to_status()
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        status.details,
    )


class _Method:
    def __init__(self, name: str, backend: Backend) -> None:
        self._name = name
        self._backend = backend

    async def __call__(self, request: Any, timeout: float | None = None, **_: Any) -> Any:
        """The backend's answer, or DEADLINE_EXCEEDED when ``timeout`` passes first, as a
        real call's deadline would end it."""
        answer = self._backend(self._name, request)
        if not inspect.isawaitable(answer):
            return answer
        try:
            return await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None


class FakeChannel:
    """Stands in for a grpc.aio.Channel under generated stubs: calls go to ``backend``."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _Method:
        return _Method(method.rsplit("/", 1)[1], self._backend)

    unary_stream = stream_unary = stream_stream = unary_unary


def federation_servicer(
    backend: Backend, *, renew_limiter: RateLimiter | None = None
) -> FederationServicer:
    channel = FakeChannel(backend)
    runtime = SimpleNamespace(
        channels=SimpleNamespace(get=lambda _name: channel),
        sealer=SimpleNamespace(derive_key=lambda _purpose: b"k" * 32),
        config=SimpleNamespace(rate_limit=SimpleNamespace(per_second=10.0, burst=20)),
    )
    gateway = SimpleNamespace(
        runtime=runtime,
        revoked=None,
        grant_cache=SimpleNamespace(invalidate=lambda **_: None),
        grant_limiter=None,
        renew_limiter=renew_limiter or LocalGcra(per_second=1000.0, burst=1000),
        audit=None,
        unfinished=UnfinishedWork(),
    )
    return FederationServicer(gateway)  # type: ignore[arg-type]


def gated_servicer(
    backend: Backend,
    *,
    audit: Any,
    revoked: Sequence[str] = (),
    grants: Any = None,
    query_limit: tuple[float, int] = (100.0, 100),
    renew_limit: tuple[float, int] = (100.0, 100),
    serials: RevokedSerials | None = None,
) -> FederationServicer:
    """A FederationServicer behind the whole gate: a real GrantCache (over ``grants``, by
    default grants-service's stub on ``backend``), RevokedSerials loaded with ``revoked``
    (peer PEER_ID) unless ``serials`` is given as it stands (e.g. not loaded), LocalGcra
    limits, and ``audit`` as the AuditWriter."""
    channel = FakeChannel(backend)
    if serials is None:
        serials = RevokedSerials()
        serials.apply(
            ca_pb2.WatchRevocationsResponse(
                snapshot=True,
                revocations=[ca_pb2.Revocation(serial=s, peer_id=PEER_ID) for s in revoked],
            )
        )
    gateway = SimpleNamespace(
        runtime=SimpleNamespace(
            channels=SimpleNamespace(get=lambda _name: channel),
            sealer=SimpleNamespace(derive_key=lambda _purpose: b"k" * 32),
            config=SimpleNamespace(rate_limit=SimpleNamespace(per_second=100.0, burst=100)),
        ),
        revoked=serials,
        grant_cache=GrantCache(grants or grants_pb2_grpc.GrantsStub(channel)),
        grant_limiter=LocalGcra(*query_limit),
        renew_limiter=LocalGcra(*renew_limit),
        audit=audit,
        unfinished=UnfinishedWork(),
    )
    return FederationServicer(gateway)  # type: ignore[arg-type]


class RecordingAudit:
    """Stands in for the AuditWriter behind the gate: keeps every row it is given."""

    def __init__(self) -> None:
        self.rows: list[Any] = []

    async def record(self, row: Any) -> None:
        self.rows.append(row)

    def record_soon(self, row: Any) -> None:
        self.rows.append(row)


class HeldAudit:
    """An AuditWriter whose commits wait for ``release`` (a slow or locked audit database):
    ``record`` returns only once it is set; ``record_soon`` commits in a task of its own,
    as AuditWriter's does. ``rows`` holds the rows given, ``committed`` those committed."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.rows: list[Any] = []
        self.committed: list[Any] = []
        self._later: set[asyncio.Task[None]] = set()

    async def record(self, row: Any) -> None:
        self.rows.append(row)
        await self.release.wait()
        self.committed.append(row)

    def record_soon(self, row: Any) -> None:
        task = asyncio.ensure_future(self.record(row))
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def waiting(self) -> None:
        """Until a row waits for its commit."""
        while not self.rows:
            await asyncio.sleep(0.001)


async def answered_only_after_commit(call: Awaitable[Any], audit: HeldAudit) -> Any:
    """``call``'s answer, checking it is not given while its audit row waits for its
    commit (the request stays pending however long that takes) and is given once it is."""
    pending = asyncio.ensure_future(call)
    await audit.waiting()
    for _ in range(20):
        await asyncio.sleep(0.005)
        assert not pending.done(), "answered before its audit row was committed"
    assert audit.committed == []
    audit.release.set()
    answer = await asyncio.wait_for(pending, timeout=5)
    assert audit.committed == audit.rows and len(audit.rows) == 1
    return answer


class PeerContext:
    """A servicer context for a request from a peer whose certificate is ``pem``, with
    ``remaining`` seconds left before its deadline (None: no deadline)."""

    def __init__(self, pem: bytes = b"pem", *, remaining: float | None = None) -> None:
        self._pem = pem
        self._remaining = remaining

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]}

    def peer(self) -> str:
        return "ipv4:192.0.2.7:50000"

    def time_remaining(self) -> float | None:
        return self._remaining


def known_identity(
    monkeypatch: pytest.MonkeyPatch, *, serial: str, grant_id: str, subject: str
) -> None:
    """Every certificate parses as one carrying ``grant_id`` and ``subject``, ``serial``."""
    known = CertIdentity(
        serial=serial,
        grant_id=grant_id,
        subject_user_id=subject,
        grant_uuid=uuid.UUID(grant_id),
        subject_uuid=uuid.UUID(subject),
    )
    monkeypatch.setattr(federation, "certificate_identity", lambda pem: known)


class StoringGrants:
    """A's grants-service as its admin servicer sees it: no peer stored yet; any name can be
    reserved; records what gets stored (the name of each peer registered, the id of each
    peer whose credentials are updated) and the reservations let go (``released``)."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.released: list[str] = []

    def __call__(self, method: str, request: Any) -> Any:
        if method == "GetPeer":
            raise rpc_error(grpc.StatusCode.NOT_FOUND)
        if method == "ReserveOutboundPeer":
            return grants_pb2.ReserveOutboundPeerResponse(
                peer=grants_pb2.Peer(id=f"reserved-{request.name}", name=request.name)
            )
        if method == "ReleaseOutboundPeer":
            self.released.append(request.reservation_id)
            return grants_pb2.ReleaseOutboundPeerResponse(released=True)
        if method == "RegisterOutboundPeer":
            self.stored.append(request.name)
            return grants_pb2.RegisterOutboundPeerResponse(peer=grants_pb2.Peer(name=request.name))
        if method == "UpdateOutboundPeerCredentials":
            self.stored.append(request.peer_id)
            return grants_pb2.UpdateOutboundPeerCredentialsResponse(
                peer=grants_pb2.Peer(id=request.peer_id)
            )
        raise AssertionError(f"unexpected call {method}")


def admin_gateway(backend: Backend, federation_client: Any = None) -> Any:
    """The GatewayContext a FederationAdmin mixin needs on the querying side (A): internal
    services on ``backend``, the outbound client, and the unfinished-work registry."""
    channel = FakeChannel(backend)
    runtime = SimpleNamespace(
        config=SimpleNamespace(name="a"),
        channels=SimpleNamespace(get=lambda _name: channel),
    )
    return SimpleNamespace(
        runtime=runtime, federation_client=federation_client, unfinished=UnfinishedWork()
    )
