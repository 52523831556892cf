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

from federation_gateway.audit import AuditRecord
from federation_gateway.peer_enrollment import PeerEnrollmentServicer
from mosaic.errors import ServiceError
from mosaic.federation.v1 import gateway_pb2
from tests.support.federation_fakes import Backend, FakeChannel

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


def _servicer(tmp_path: Path, backend: Backend) -> tuple[PeerEnrollmentServicer, Audit]:
    (tmp_path / "root.crt").write_text("ROOT")
    audit = Audit()
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
        redeem_limiter=SimpleNamespace(acquire=acquire),
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
    refusal = ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION, "CA_BACKEND_REJECTED", CA_DETAIL
    ).to_status()
    error = grpc.aio.AioRpcError(
        refusal.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*refusal.trailing_metadata),
        refusal.details,
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
