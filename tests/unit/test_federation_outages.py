"""The serving gateway (B) when what it depends on fails: the audit log's database, or a
data source that hangs. The peer always gets a typed UNAVAILABLE it can retry on, within
its own deadline, and never an answer whose audit row was not committed.

Driven through the whole gate (FederationServicer) with fake grants-service and
resource-service (tests/support/federation_fakes.py): a hung data source or a database
failing at the moment of one commit cannot be provoked on demand in a real instance."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy import exc as sa_exc

from federation_gateway import federation
from federation_gateway.audit import AuditUnavailable
from federation_gateway.federation import CertIdentity
from mosaic.errors import ServiceError
from mosaic.federation.v1 import common_pb2, gateway_pb2, resources_pb2
from tests.support.federation_fakes import GRANT_ID, SUBJECT, gated_servicer, grant_reply

SERIAL = "01ab"
PEM = b"pem-01ab"
ROWS = resources_pb2.ListResourcesResponse(
    items=[common_pb2.ResourceItem(id="t-1", resource="tasks", owner_user_id=SUBJECT)]
)


@pytest.fixture(autouse=True)
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    known = CertIdentity(
        serial=SERIAL,
        grant_id=GRANT_ID,
        subject_user_id=SUBJECT,
        grant_uuid=uuid.UUID(GRANT_ID),
        subject_uuid=uuid.UUID(SUBJECT),
    )
    monkeypatch.setattr(federation, "certificate_identity", lambda pem: known)


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


class Context:
    def __init__(self, remaining: float | None = None) -> None:
        self.remaining = remaining

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [PEM]}

    def peer(self) -> str:
        return "ipv4:192.0.2.7:50000"

    def time_remaining(self) -> float | None:
        return self.remaining


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
        await servicer.List(gateway_pb2.ListRequest(resource=resource), Context())
    assert (err.value.code, err.value.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        federation.AUDIT_UNAVAILABLE,
    )
    assert err.value.retry_after_s and err.value.retry_after_s > 0
    assert "INSERT" not in err.value.message
    assert len(audit.rows) == 1 and not audit.committed


async def test_a_bug_in_the_audit_write_stays_internal() -> None:
    """A row the database refuses (a constraint) is not an outage: INTERNAL, as before."""
    error = sa_exc.IntegrityError("INSERT ...", None, Exception("duplicate key"))
    servicer = gated_servicer(backend(lambda _request: ROWS), audit=Audit(error))
    with pytest.raises(sa_exc.IntegrityError):
        await servicer.List(gateway_pb2.ListRequest(resource="tasks"), Context())
