"""The gateway's enrollment listener (PeerEnrollmentServicer) in front of a fake
enrollment-service: what the enrolling peer learns, and the audit row every attempt
leaves, for the failures a healthy instance does not produce on demand."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from federation_gateway.audit import AUDIT_UNAVAILABLE, AuditRecord, AuditUnavailable
from federation_gateway.peer_enrollment import PeerEnrollmentServicer, limit_key, source_host
from federation_gateway.ratelimit import LocalGcra
from mosaic.errors import TOKEN_CHECK_KEY, TOKEN_VALID, ServiceError
from mosaic.federation.v1 import enrollment_pb2, gateway_pb2
from mosaic.rpc.interceptors import MalformedRequest
from tests.support.federation_fakes import (
    GRANT_ID,
    PEER_ID,
    Backend,
    FakeChannel,
    HeldAudit,
    answered_only_after_commit,
    service_rpc_error,
)

CA_DETAIL = "step-ca refused provisioner 'mosaic-b' at ca.internal:9000; check ca.json"


class Audit:
    def __init__(self) -> None:
        self.rows: list[AuditRecord] = []
        self.written = asyncio.Event()

    async def record(self, record: AuditRecord) -> None:
        self.rows.append(record)
        self.written.set()

    def record_soon(self, record: AuditRecord) -> None:
        self.later = asyncio.ensure_future(self.record(record))


def _servicer(
    tmp_path: Path, backend: Backend, limiter: Any = None, audit: Any = None
) -> tuple[PeerEnrollmentServicer, Any]:
    (tmp_path / "root.crt").write_text("ROOT")
    audit = audit or Audit()
    allowed = SimpleNamespace(allowed=True, retry_after_s=0.0)

    async def acquire(_key: str) -> Any:
        return allowed

    gateway = SimpleNamespace(
        runtime=SimpleNamespace(
            config=SimpleNamespace(
                federation_endpoint="b.example:7443", federation_pki_dir=tmp_path
            ),
            channels=SimpleNamespace(get=lambda _name: FakeChannel(backend)),
        ),
        redeem_limiter=limiter or SimpleNamespace(acquire=acquire),
        audit=audit,
    )
    return PeerEnrollmentServicer(gateway), audit  # type: ignore[arg-type]


class Context:
    def peer(self) -> str:
        return "ipv4:192.0.2.7:50000"


def _request() -> gateway_pb2.PeerRedeemRequest:
    return gateway_pb2.PeerRedeemRequest(token="t" * 43, csr_pem="CSR")


async def test_the_serving_sides_ca_trouble_is_not_told_to_the_peer(tmp_path: Path) -> None:
    """ca-service's backend refusal names B's CA set-up: the peer gets a generic
    UNAVAILABLE, and the row says error (B's fault), not denied (the peer's)."""
    error = service_rpc_error(
        ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "CA_BACKEND_REJECTED", CA_DETAIL)
    )

    def backend(_method: str, _request: Any) -> Any:
        raise error

    servicer, audit = _servicer(tmp_path, backend)
    with pytest.raises(ServiceError) as caught:
        await servicer.Redeem(_request(), Context())
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "provisioner" not in caught.value.message and "ca.json" not in caught.value.message
    [row] = audit.rows
    assert (row.outcome, row.reason) == ("error", "CA_BACKEND_REJECTED")


def _failing(code: grpc.StatusCode, reason: str, message: str, **kw: Any) -> Backend:
    error = service_rpc_error(ServiceError(code, reason, message, **kw))

    def backend(_method: str, _request: Any) -> Any:
        raise error

    return backend


@pytest.mark.parametrize(
    ("code", "reason", "message", "told", "outcome"),
    [
        # our internal access list: an unauthenticated caller must not read it
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "CALLER_NOT_ALLOWED",
            "spiffe://b/enrollment-service may not call /CertificateAuthority/IssueCertificate",
            (grpc.StatusCode.INTERNAL, "INTERNAL"),
            "error",
        ),
        # the grant was removed meanwhile: not its id, not our CLI's advice
        (
            grpc.StatusCode.NOT_FOUND,
            "GRANT_NOT_FOUND",
            "no grant 0b6f4c1e-1111-4a5b-8c7d-000000000001",
            (grpc.StatusCode.FAILED_PRECONDITION, "GRANT_NOT_PENDING"),
            "denied",
        ),
        # the operator suspended the peer mid-redeem: not the state of our peers
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "PEER_SUSPENDED",
            "peer a is suspended",
            (grpc.StatusCode.FAILED_PRECONDITION, "GRANT_NOT_PENDING"),
            "denied",
        ),
    ],
    ids=["internal-acl", "grant-removed", "peer-suspended"],
)
async def test_the_serving_sides_own_state_is_not_told_to_the_enrolling_peer(
    tmp_path: Path,
    code: grpc.StatusCode,
    reason: str,
    message: str,
    told: tuple[grpc.StatusCode, str],
    outcome: str,
) -> None:
    backend = _failing(code, reason, message, remediation="list grants with `mosaic ...`")
    servicer, audit = _servicer(tmp_path, backend)
    with pytest.raises(ServiceError) as caught:
        await servicer.Redeem(_request(), Context())
    assert (caught.value.code, caught.value.reason) == told
    assert message not in caught.value.message
    assert "mosaic" not in (caught.value.remediation or "")
    [row] = audit.rows
    assert (row.outcome, row.reason) == (outcome, reason)  # the real reason, for B's admin


async def test_the_peers_own_refusals_reach_it_as_they_are(tmp_path: Path) -> None:
    backend = _failing(
        grpc.StatusCode.INVALID_ARGUMENT,
        "CSR_WEAK_KEY",
        "the CSR's key is RSA 1024; use P-256",
        violations=[("csr_pem", "weak key")],
    )
    servicer, audit = _servicer(tmp_path, backend)
    with pytest.raises(ServiceError) as caught:
        await servicer.Redeem(_request(), Context())
    assert (caught.value.code, caught.value.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CSR_WEAK_KEY",
    )
    assert caught.value.message == "the CSR's key is RSA 1024; use P-256"
    assert list(caught.value.violations) == [("csr_pem", "weak key")]
    assert audit.rows[0].outcome == "denied"


async def test_a_peer_that_goes_away_mid_redeem_still_leaves_a_row(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def slow(_method: str, _request: Any) -> Any:
        started.set()
        await asyncio.Event().wait()  # never answers

    servicer, audit = _servicer(tmp_path, slow)
    redeem = asyncio.create_task(servicer.Redeem(_request(), Context()))
    await started.wait()
    redeem.cancel()
    with pytest.raises(asyncio.CancelledError):
        await redeem
    await asyncio.wait_for(audit.written.wait(), timeout=5)
    [row] = audit.rows
    assert (row.outcome, row.status, row.reason) == ("error", "CANCELLED", "CANCELLED")
    assert row.source_address == "192.0.2.7"
    assert row.detail == "token tttttttt…"  # the hint only, never the token


async def test_a_limiter_that_cannot_answer_refuses_and_audits_the_attempt(
    tmp_path: Path,
) -> None:
    """Valkey down or slow: the attempt is refused as UNAVAILABLE with a retry delay (never
    redeemed unlimited), and it still leaves its audit row."""
    import redis.exceptions

    async def valkey_down(_key: str) -> Any:
        raise redis.exceptions.ConnectionError("Connection refused")

    def backend(_method: str, _request: Any) -> Any:
        raise AssertionError("enrollment-service must not be asked")

    servicer, audit = _servicer(tmp_path, backend, SimpleNamespace(acquire=valkey_down))
    with pytest.raises(ServiceError) as refused:
        await servicer.Redeem(_request(), Context())
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert refused.value.reason == "RATE_LIMITER_UNAVAILABLE"
    assert refused.value.retry_after_s
    [row] = audit.rows
    assert (row.outcome, row.status, row.reason) == (
        "error",
        "UNAVAILABLE",
        "RATE_LIMITER_UNAVAILABLE",
    )
    assert row.source_address == "192.0.2.7"


def test_redeems_are_counted_per_ipv4_address_and_per_ipv6_64() -> None:
    """From context.peer() as grpc.aio gives it: IPv6 brackets come percent-encoded."""

    def key(peer: str) -> str:
        return limit_key(source_host(peer))

    assert source_host("ipv6:%5B2001:db8:1:2::1%5D:50000") == "2001:db8:1:2::1"
    assert source_host("ipv4:192.0.2.7:50000") == "192.0.2.7"
    assert key("ipv4:192.0.2.7:50000") == "192.0.2.7"
    assert key("ipv6:%5B2001:db8:1:2:aaaa::1%5D:1") == key("ipv6:%5B2001:db8:1:2:bbbb::9%5D:2")
    assert key("ipv6:%5B2001:db8:1:2::1%5D:3") == "2001:db8:1:2::/64"
    assert key("ipv6:%5B2001:db8:1:3::1%5D:4") != key("ipv6:%5B2001:db8:1:2::1%5D:5")
    assert key("unix:/tmp/socket") == "unix:/tmp/socket"


async def test_a_redeem_that_does_not_parse_is_counted_audited_and_refused(
    tmp_path: Path,
) -> None:
    taken: list[str] = []

    async def acquire(key: str) -> Any:
        taken.append(key)
        return SimpleNamespace(allowed=True, retry_after_s=0.0)

    def backend(_method: str, _request: Any) -> Any:
        raise AssertionError("enrollment-service must not be asked")

    servicer, audit = _servicer(tmp_path, backend, SimpleNamespace(acquire=acquire))
    with pytest.raises(ServiceError) as refused:
        await servicer.Redeem(MalformedRequest(b"\x0a\x02\xff\xfe"), Context())  # type: ignore[arg-type]
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.reason == "REQUEST_MALFORMED"
    assert taken == ["192.0.2.7"]  # it counts against the address's allowance
    [row] = audit.rows
    assert (row.outcome, row.status, row.reason, row.detail) == (
        "denied",
        "INVALID_ARGUMENT",
        "REQUEST_MALFORMED",
        None,
    )


async def test_a_failure_nobody_placed_before_or_after_the_token_check_is_charged(
    tmp_path: Path,
) -> None:
    """UNAVAILABLE from enrollment-service without its word on the token (a failure it
    did not place, or enrollment-service not reached at all): the gateway cannot tell
    that the token was not refused, so the attempt stays charged."""
    limiter = LocalGcra(per_second=0.1, burst=2)
    backend = _failing(grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE", "db down")
    servicer, _ = _servicer(tmp_path, backend, limiter)
    reasons = []
    for _ in range(3):
        with pytest.raises(ServiceError) as refused:
            await servicer.Redeem(_request(), Context())
        reasons.append(refused.value.reason)
    assert reasons == ["UNAVAILABLE", "UNAVAILABLE", "RATE_LIMITED"]


async def test_the_word_on_the_token_is_not_passed_on_to_the_peer(tmp_path: Path) -> None:
    backend = _failing(
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_UNKNOWN",
        "unknown token",
        metadata={TOKEN_CHECK_KEY: TOKEN_VALID},
    )
    servicer, _ = _servicer(tmp_path, backend)
    with pytest.raises(ServiceError) as refused:
        await servicer.Redeem(_request(), Context())
    assert refused.value.reason == "TOKEN_UNKNOWN"
    assert TOKEN_CHECK_KEY not in refused.value.metadata


def _redeemed(_method: str, _request: Any) -> enrollment_pb2.RedeemResponse:
    return enrollment_pb2.RedeemResponse(
        certificate_pem="CERT", serial="01ab", grant_id=GRANT_ID, peer_id=PEER_ID
    )


async def test_a_redeem_is_answered_only_once_its_audit_row_is_committed(
    tmp_path: Path,
) -> None:
    """The certificate goes out only after the row saying who got it is committed: while
    the commit waits the peer has no answer; once it is done, it has."""
    servicer, audit = _servicer(tmp_path, _redeemed, audit=HeldAudit())
    reply = await answered_only_after_commit(servicer.Redeem(_request(), Context()), audit)
    assert (reply.certificate_pem, reply.federation_endpoint) == ("CERT", "b.example:7443")
    [row] = audit.committed
    assert (row.outcome, row.status, str(row.grant_id)) == ("allowed", "OK", GRANT_ID)


class _AuditDown(Audit):
    async def record(self, record: AuditRecord) -> None:
        self.rows.append(record)
        raise AuditUnavailable("audit log write lock held for over 30 s")


async def test_a_redeem_whose_audit_row_cannot_be_committed_is_not_answered(
    tmp_path: Path,
) -> None:
    """No certificate without its row; the peer is told to retry (its repeat is answered
    again within the repeat window), as a federation request is, not an internal error."""
    servicer, audit = _servicer(tmp_path, _redeemed, audit=_AuditDown())
    with pytest.raises(ServiceError) as err:
        await servicer.Redeem(_request(), Context())
    assert (err.value.code, err.value.reason) == (grpc.StatusCode.UNAVAILABLE, AUDIT_UNAVAILABLE)
    assert err.value.retry_after_s and err.value.retry_after_s > 0
    assert [row.outcome for row in audit.rows] == ["allowed"]
