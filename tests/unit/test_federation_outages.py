"""The serving gateway (B) when what it depends on fails: the audit log's database, or a
data source that hangs. The peer always gets a typed UNAVAILABLE it can retry on, within
its own deadline, and never an answer whose audit row was not committed.

Driven through the whole gate (FederationServicer) with fake grants-service and
resource-service (tests/support/federation_fakes.py): a hung data source or a database
failing at the moment of one commit cannot be provoked on demand in a real instance."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy import exc as sa_exc

from federation_gateway.audit import AUDIT_UNAVAILABLE, AuditUnavailable
from federation_gateway.federation import FederationServicer
from mosaic.errors import RemoteError, ServiceError
from mosaic.federation.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, resources_pb2
from mosaic.rpc.interceptors import ServerInterceptor
from tests.support.federation_fakes import (
    GRANT_ID,
    SUBJECT,
    HeldAudit,
    PeerContext,
    answered_only_after_commit,
    gated_servicer,
    grant_reply,
    known_identity,
)

SERIAL = "01ab"
PEM = b"pem-01ab"
ROWS = resources_pb2.ListResourcesResponse(
    items=[common_pb2.ResourceItem(id="t-1", resource="tasks", owner_user_id=SUBJECT)]
)


@pytest.fixture(autouse=True)
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    known_identity(monkeypatch, serial=SERIAL, grant_id=GRANT_ID, subject=SUBJECT)


def backend(source: Any) -> Any:
    """grants-service answers the grant; resource-service calls go to ``source``."""

    def answer(method: str, request: Any) -> Any:
        if method == "GetGrant":
            return grant_reply(cert_serial=SERIAL)
        return source(request)

    return answer


class Audit:
    """An AuditWriter whose commits fail with ``error`` (or succeed when it is None)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.rows: list[Any] = []
        self.committed: list[Any] = []

    async def record(self, row: Any) -> None:
        self.rows.append(row)
        if self.error is not None:
            raise self.error
        self.committed.append(row)

    def record_soon(self, row: Any) -> None:
        self.rows.append(row)


# ---- the audit log's database fails ----------------------------------------------------

AUDIT_FAILURES = {
    # The Postgres connection dropped under the commit (SQLSTATE 08003).
    "postgres-connection-lost": sa_exc.OperationalError(
        "INSERT INTO federation_audit_log ...",
        None,
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    ),
    # The writer could not take SQLite's write lock in time, or is stopping.
    "writer-unavailable": AuditUnavailable("audit log write lock held for over 30 s"),
}


@pytest.mark.parametrize("case", sorted(AUDIT_FAILURES))
@pytest.mark.parametrize("resource", ["tasks", "memory"])  # answered, and refused
async def test_no_answer_without_its_audit_row_and_the_peer_may_retry(
    case: str, resource: str
) -> None:
    audit = Audit(AUDIT_FAILURES[case])
    servicer = gated_servicer(backend(lambda _request: ROWS), audit=audit)
    with pytest.raises(ServiceError) as err:
        await servicer.List(gateway_pb2.ListRequest(resource=resource), PeerContext(PEM))
    assert (err.value.code, err.value.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        AUDIT_UNAVAILABLE,
    )
    assert err.value.retry_after_s and err.value.retry_after_s > 0
    assert "INSERT" not in err.value.message
    assert len(audit.rows) == 1 and not audit.committed


async def test_a_slow_audit_commit_holds_the_answer_until_it_is_done() -> None:
    """Nothing is answered before its audit row is committed (not merely queued): a peer
    whose request is pending while the commit waits gets its rows only once it is done."""
    audit = HeldAudit()
    servicer = gated_servicer(backend(lambda _request: ROWS), audit=audit)
    call = servicer.List(gateway_pb2.ListRequest(resource="tasks"), PeerContext(PEM))
    page = await answered_only_after_commit(call, audit)
    assert [item.id for item in page.items] == ["t-1"]
    assert audit.committed[0].outcome == "allowed"


async def test_a_bug_in_the_audit_write_stays_internal() -> None:
    """A row the database refuses (a constraint) is not an outage: INTERNAL, as before."""
    error = sa_exc.IntegrityError("INSERT ...", None, Exception("duplicate key"))
    servicer = gated_servicer(backend(lambda _request: ROWS), audit=Audit(error))
    with pytest.raises(sa_exc.IntegrityError):
        await servicer.List(gateway_pb2.ListRequest(resource="tasks"), PeerContext(PEM))


# ---- a data source that hangs ---------------------------------------------------------


class _WithCertificate:
    """The server's context, with the client certificate a TLS handshake would have
    given (the identity is patched in: this server is plaintext)."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [PEM]}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _Federation(gateway_pb2_grpc.FederationServicer):
    def __init__(self, servicer: FederationServicer) -> None:
        self._servicer = servicer

    async def List(
        self, request: gateway_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListResponse:
        return await self._servicer.List(request, _WithCertificate(context))


@contextlib.asynccontextmanager
async def _served(servicer: FederationServicer) -> AsyncIterator[gateway_pb2_grpc.FederationStub]:
    """``servicer`` behind the real server interceptor, on a loopback port."""
    server = grpc.aio.server(
        interceptors=[ServerInterceptor(authorize=None, trust_request_id=False)]
    )
    gateway_pb2_grpc.add_FederationServicer_to_server(_Federation(servicer), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield gateway_pb2_grpc.FederationStub(channel)
    finally:
        await channel.close()
        await server.stop(None)


async def test_a_hung_data_source_is_unavailable_within_the_peer_s_deadline() -> None:
    """resource-service accepts the read and never answers: the peer gets UNAVAILABLE
    DEPENDENCY_UNAVAILABLE (audited so) before its own deadline, not DEADLINE_EXCEEDED."""
    hang = asyncio.Event()
    audit = Audit()
    servicer = gated_servicer(backend(lambda _request: hang.wait()), audit=audit)
    async with _served(servicer) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.List(gateway_pb2.ListRequest(resource="tasks"), timeout=5)
    remote = RemoteError.from_rpc_error(err.value)
    assert err.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED
    assert (remote.code, remote.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    assert [(r.status, r.reason) for r in audit.committed] == [
        ("UNAVAILABLE", "DEPENDENCY_UNAVAILABLE")
    ]


async def test_a_shared_read_outlives_a_sharer_with_little_time_left() -> None:
    """Identical reads share one call: one whose caller has little time left gives up
    alone; the others still get the rows when the source answers."""
    answer = asyncio.Event()

    async def slow(_request: Any) -> resources_pb2.ListResourcesResponse:
        await answer.wait()
        return ROWS

    servicer = gated_servicer(backend(slow), audit=Audit())
    request = gateway_pb2.ListRequest(resource="tasks")
    hurried = asyncio.ensure_future(servicer.List(request, PeerContext(PEM, remaining=0.6)))
    patient = asyncio.ensure_future(servicer.List(request, PeerContext(PEM, remaining=10.0)))
    with pytest.raises(ServiceError) as err:
        await asyncio.wait_for(hurried, 5)  # bounded, so the code before the fix fails
    assert err.value.reason == "DEPENDENCY_UNAVAILABLE"
    answer.set()
    assert [i.id for i in (await patient).items] == ["t-1"]
