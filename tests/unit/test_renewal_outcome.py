"""Renewal (serving side) when the rotate call at grants-service fails: the new certificate
is revoked only when it is known not to be current. A timeout may come after the commit;
revoking the new certificate then would leave the peer with none that works."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import federation_gateway.app as gateway_app
from federation_gateway.audit import AuditWriter
from federation_gateway.federation import FederationServicer
from federation_gateway.ratelimit import LocalGcra
from mosaic.db import Database
from mosaic.errors import ServiceError, failed_precondition
from mosaic.federation.v1 import ca_pb2, gateway_pb2, grants_pb2
from tests.support.federation_fakes import (
    GRANT_ID,
    PEER_ID,
    SUBJECT,
    federation_servicer,
    gated_servicer,
    grant_reply,
    grant_view,
    known_identity,
    rpc_error,
)

OLD, NEW = "01ab", "02cd"
OTHER_GRANT = "33333333-3333-4333-8333-333333333333"


class Backends:
    """ca-service and grants-service as the renewal sees them; ``rotate`` decides what the
    rotate call does, ``current`` what GetGrant then reports (None: GetGrant fails)."""

    def __init__(self, rotate: Any, current: str | None) -> None:
        self.rotate = rotate
        self.current = current
        self.revoked: list[str] = []

    def __call__(self, method: str, request: Any) -> Any:
        if method == "IssueCertificate":
            return ca_pb2.IssueCertificateResponse(
                certificate_pem="NEW CERT", serial=NEW, chain_pem=["INTERMEDIATE"]
            )
        if method == "RotatePeerCertificate":
            if isinstance(self.rotate, Exception):
                raise self.rotate
            return grants_pb2.RotatePeerCertificateResponse()
        if method == "GetGrant":
            if self.current is None:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE)
            return grants_pb2.GetGrantResponse(
                grant=grants_pb2.Grant(peer_id=PEER_ID, cert_serial=self.current)
            )
        if method == "RevokeCertificate":
            self.revoked.append(request.serial)
            return ca_pb2.RevokeCertificateResponse()
        if method == "GetTrustBundle":
            return ca_pb2.GetTrustBundleResponse()
        raise AssertionError(f"unexpected call {method}")


async def _renew(backends: Backends) -> gateway_pb2.RenewCertificateResponse:
    """One renewal; then the revocations it left to run after its answer, finished."""
    servicer = federation_servicer(backends)
    try:
        return await servicer._renew(
            grant_view(cert_serial=OLD), gateway_pb2.RenewCertificateRequest(csr_pem="CSR")
        )
    finally:
        await servicer._unfinished.finish(30)


@pytest.mark.parametrize(
    ("failure", "current", "revoked"),
    [
        # committed, then timed out: the renewal stands, the old certificate goes
        (grpc.StatusCode.DEADLINE_EXCEEDED, NEW, [OLD]),
        # never got there: the new certificate goes
        (grpc.StatusCode.UNAVAILABLE, OLD, [NEW]),
        # nobody can say: neither is revoked
        (grpc.StatusCode.DEADLINE_EXCEEDED, None, []),
    ],
    ids=["committed", "not-committed", "unknown"],
)
async def test_a_rotate_that_failed_uncertainly_is_settled_by_asking_grants_service(
    failure: grpc.StatusCode, current: str | None, revoked: list[str]
) -> None:
    backends = Backends(rotate=rpc_error(failure), current=current)
    if current == NEW:
        assert (await _renew(backends)).serial == NEW
    else:
        with pytest.raises(ServiceError) as caught:
            await _renew(backends)
        # The peer is told to retry, whichever of our services failed and how.
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert backends.revoked == revoked


async def test_a_refused_rotate_revokes_the_new_certificate_without_asking() -> None:
    """A refusal is certain: the rotate did not happen (a concurrent renewal won)."""
    refusal = failed_precondition("CERT_NOT_CURRENT", "not current").to_status()
    error = grpc.aio.AioRpcError(
        refusal.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*refusal.trailing_metadata),
        refusal.details,
    )
    backends = Backends(rotate=error, current=NEW)  # GetGrant would say NEW: not asked
    with pytest.raises(ServiceError) as caught:
        await _renew(backends)
    assert caught.value.reason == "CERT_NOT_CURRENT"
    assert backends.revoked == [NEW]


async def test_a_rotate_that_succeeds_revokes_the_old_certificate() -> None:
    backends = Backends(rotate=None, current=NEW)
    answer = await _renew(backends)
    assert (answer.serial, answer.certificate_pem) == (NEW, "NEW CERT")
    assert backends.revoked == [OLD]


async def test_renewals_beyond_the_grants_renewal_limit_are_refused_before_the_ca() -> None:
    """Each renewal revokes a certificate that every gateway then holds until it expires;
    a peer looping RenewCertificate must not grow that set at its query rate."""
    backends = Backends(rotate=None, current=NEW)
    issued: list[str] = []

    def counting(method: str, request: Any) -> Any:
        if method == "IssueCertificate":
            issued.append(request.grant_id)
        return backends(method, request)

    limiter = LocalGcra(per_second=1 / 60, burst=2)
    servicer = federation_servicer(counting, renew_limiter=limiter)
    request = gateway_pb2.RenewCertificateRequest(csr_pem="CSR")
    for _ in range(2):
        await servicer._renew(grant_view(cert_serial=OLD), request)
    with pytest.raises(ServiceError) as refused:
        await servicer._renew(grant_view(cert_serial=OLD), request)
    assert (refused.value.code, refused.value.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
    )
    assert 58 < (refused.value.retry_after_s or 0) <= 60
    assert len(issued) == 2
    # Another grant has a limit of its own.
    await servicer._renew(grant_view(cert_serial=OLD, grant_id=OTHER_GRANT), request)
    assert len(issued) == 3


def _ca_refusal(code: grpc.StatusCode, reason: str, message: str) -> grpc.aio.AioRpcError:
    status = ServiceError(
        code, reason, message, remediation="check https://10.0.0.5:9000"
    ).to_status()
    return grpc.aio.AioRpcError(
        status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata), message
    )


@pytest.mark.parametrize(
    ("code", "reason", "told"),
    [
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "CSR_WEAK_KEY",
            (grpc.StatusCode.INVALID_ARGUMENT, "CSR_WEAK_KEY"),
        ),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "CA_BACKEND_REJECTED",
            (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE"),
        ),
        (grpc.StatusCode.INTERNAL, "ISSUED_CERT_MISMATCH", (grpc.StatusCode.INTERNAL, "INTERNAL")),
    ],
    ids=["its-csr", "our-ca-backend", "our-internal-check"],
)
async def test_a_renewing_peer_learns_of_its_own_mistakes_only(
    code: grpc.StatusCode, reason: str, told: tuple[grpc.StatusCode, str]
) -> None:
    """Like enrollment: ca-service's own trouble names our CA's set-up (its URL, its
    provisioner, its files) and reaches the peer generically."""
    message = "step-ca at https://10.0.0.5:9000 refused provisioner mosaic-b"
    refusal = _ca_refusal(code, reason, message)

    def backend(method: str, request: Any) -> Any:
        if method == "GetTrustBundle":
            return ca_pb2.GetTrustBundleResponse()
        raise refusal

    servicer = federation_servicer(backend)
    with pytest.raises(ServiceError) as caught:
        await servicer._renew(
            grant_view(cert_serial=OLD), gateway_pb2.RenewCertificateRequest(csr_pem="CSR")
        )
    assert (caught.value.code, caught.value.reason) == told
    if reason != "CSR_WEAK_KEY":
        assert "10.0.0.5" not in caught.value.message
        assert "10.0.0.5" not in (caught.value.remediation or "")


async def test_a_renewal_without_the_ca_roots_issues_and_revokes_nothing() -> None:
    """With step-ca the peer needs step-ca's root to verify the new chain: a renewal that
    cannot fetch it must stop before the old certificate is replaced and revoked."""
    calls: list[str] = []

    def backend(method: str, request: Any) -> Any:
        calls.append(method)
        if method == "GetTrustBundle":
            raise rpc_error(grpc.StatusCode.UNAVAILABLE)
        raise AssertionError(f"{method} called after the trust bundle failed")

    with pytest.raises(ServiceError) as caught:
        await federation_servicer(backend)._renew(
            grant_view(cert_serial=OLD), gateway_pb2.RenewCertificateRequest(csr_pem="CSR")
        )
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert calls == ["GetTrustBundle"]


async def test_the_answer_does_not_wait_for_the_old_certificates_revocation() -> None:
    """A slow CA must not turn a renewal that is done into an answer A never gets."""
    ca_answers = asyncio.Event()

    class SlowCA(Backends):
        async def __call__(self, method: str, request: Any) -> Any:
            if method == "RevokeCertificate":
                await ca_answers.wait()
            return super().__call__(method, request)

    backends = SlowCA(rotate=None, current=NEW)
    servicer = federation_servicer(backends)
    answer = await asyncio.wait_for(
        servicer._renew(
            grant_view(cert_serial=OLD), gateway_pb2.RenewCertificateRequest(csr_pem="CSR")
        ),
        timeout=5,
    )
    assert answer.serial == NEW and backends.revoked == []
    ca_answers.set()
    await servicer._unfinished.finish(30)
    assert backends.revoked == [OLD]


# ---- the audit row of a renewal whose caller went away --------------------------------


class Context:
    """The caller's TLS identity (the certificate of serial OLD) and address."""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [b"pem-" + OLD.encode()]}

    def peer(self) -> str:
        return "ipv4:192.0.2.7:50000"


class HeldRotate(Backends):
    """The rotate call waits until ``release`` is set (having set ``rotating``): the moment
    after the CA has issued at which a caller may go away."""

    def __init__(self, rotate: Any) -> None:
        super().__init__(rotate=rotate, current=NEW)
        self.rotating = asyncio.Event()
        self.release = asyncio.Event()
        self.rotated = asyncio.Event()

    async def __call__(self, method: str, request: Any) -> Any:
        if method == "GetGrant":  # the gate's: the grant, with OLD its current certificate
            return grant_reply(cert_serial=OLD)
        if method == "RotatePeerCertificate":
            self.rotating.set()
            await self.release.wait()
            try:
                return super().__call__(method, request)
            finally:
                self.rotated.set()
        return super().__call__(method, request)


@pytest.fixture
async def audit_writer(tmp_path: Path) -> AsyncIterator[AuditWriter]:
    db = Database(
        f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        schema="gateway",
        migrations_dir=gateway_app.MIGRATIONS,
    )
    await db.migrate()
    writer = AuditWriter(db)
    yield writer
    await writer.close()
    await db.dispose()


def _gated_servicer(backends: HeldRotate, writer: AuditWriter) -> FederationServicer:
    """The whole gate (real GrantCache, RevokedSerials, LocalGcra) and a real AuditWriter;
    ca-service and grants-service are fakes, since the moment between the CA's issue and the
    rotate cannot be held open with the real services."""
    return gated_servicer(backends, audit=writer)


async def _renewal_whose_caller_goes_away(
    backends: HeldRotate, writer: AuditWriter
) -> FederationServicer:
    """A RenewCertificate through the gate, its caller gone once the CA has issued."""
    servicer = _gated_servicer(backends, writer)
    call = asyncio.ensure_future(
        servicer.RenewCertificate(gateway_pb2.RenewCertificateRequest(csr_pem="CSR"), Context())
    )
    await backends.rotating.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    return servicer


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    known_identity(monkeypatch, serial=OLD, grant_id=GRANT_ID, subject=SUBJECT)


@pytest.mark.usefixtures("identity")
@pytest.mark.parametrize(
    ("rotate", "row"),
    [
        # The renewal completed: the grant's certificate is the new one, the old one is
        # revoked, and the peer never got the answer.
        (None, ("OK", "allowed", "ANSWER_NOT_SENT")),
        # Another renewal won meanwhile: refused, as the caller would have been told.
        (
            grpc.aio.AioRpcError(
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(
                    *failed_precondition("CERT_NOT_CURRENT", "not current")
                    .to_status()
                    .trailing_metadata
                ),
                "not current",
            ),
            ("FAILED_PRECONDITION", "error", "CERT_NOT_CURRENT"),
        ),
    ],
    ids=["completed", "refused"],
)
async def test_a_renewal_whose_caller_went_away_is_audited_as_it_ended(
    audit_writer: AuditWriter, rotate: Any, row: tuple[str, str, str]
) -> None:
    """Once the CA has issued, a renewal runs to its end even if its caller goes away (A's
    deadline, A's gateway stopping). Its one audit row used to say CANCELLED whatever
    happened, so B's operator could not tell from the log that a peer's certificate had
    been replaced and the old one revoked."""
    backends = HeldRotate(rotate)
    servicer = await _renewal_whose_caller_goes_away(backends, audit_writer)
    backends.release.set()
    await backends.rotated.wait()
    await servicer._unfinished.finish(30)
    await audit_writer.close()  # every row queued is committed
    rows = await audit_writer.list()
    assert [(r["verb"], r["status"], r["outcome"], r["reason"]) for r in rows] == [("renew", *row)]
    assert rows[0]["bytes_out"] == 0  # nothing reached the peer
    assert backends.revoked == ([OLD] if rotate is None else [NEW])


@pytest.mark.usefixtures("identity")
async def test_a_renewal_still_running_at_shutdown_still_gets_its_one_row(
    audit_writer: AuditWriter,
) -> None:
    """The gateway stops while a renewal whose caller went away is still waiting for
    grants-service: its row is written as it stands (CANCELLED), once, not lost."""
    backends = HeldRotate(None)
    servicer = await _renewal_whose_caller_goes_away(backends, audit_writer)
    await audit_writer.close(drain_s=0.2)
    backends.release.set()
    await servicer._unfinished.finish(30)
    rows = await audit_writer.list()
    assert [(r["verb"], r["status"], r["outcome"], r["reason"]) for r in rows] == [
        ("renew", "CANCELLED", "error", "CANCELLED")
    ]
