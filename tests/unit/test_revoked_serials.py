"""The gateway's revoked-serial set: fail closed until a whole snapshot has arrived, however
many messages it spans."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from federation_gateway.revocations import RevokedSerials
from mosaic.errors import ServiceError
from mosaic.federation.v1 import ca_pb2, gateway_pb2, resources_pb2
from tests.support.federation_fakes import (
    GRANT_ID,
    SUBJECT,
    PeerContext,
    RecordingAudit,
    gated_servicer,
    grant_reply,
    known_identity,
)


def _message(*serials: str, snapshot: bool, more: bool = False) -> ca_pb2.WatchRevocationsResponse:
    return ca_pb2.WatchRevocationsResponse(
        snapshot=snapshot,
        more=more,
        revocations=[ca_pb2.Revocation(serial=s) for s in serials],
    )


def test_a_snapshot_in_parts_loads_only_with_its_last_part() -> None:
    revoked = RevokedSerials()
    revoked.apply(_message("a1", "a2", snapshot=True, more=True))
    assert not revoked.loaded
    revoked.apply(_message("b1", snapshot=False, more=True))
    assert not revoked.loaded
    revoked.apply(_message("c1", snapshot=False))
    assert revoked.loaded
    assert set(revoked.serials) == {"a1", "a2", "b1", "c1"}
    revoked.apply(_message("d1", snapshot=False))  # a revocation made afterwards
    assert set(revoked.serials) == {"a1", "a2", "b1", "c1", "d1"}


def test_a_new_snapshot_replaces_the_set_only_once_complete() -> None:
    revoked = RevokedSerials()
    revoked.apply(_message("old", snapshot=True))
    revoked.lost()
    revoked.apply(_message("n1", snapshot=True, more=True))
    assert not revoked.loaded
    revoked.apply(_message("n2", snapshot=False))
    assert revoked.loaded
    assert set(revoked.serials) == {"n1", "n2"}


def test_a_stream_broken_mid_snapshot_starts_over() -> None:
    revoked = RevokedSerials()
    revoked.apply(_message("x1", snapshot=True, more=True))
    revoked.lost()
    revoked.apply(_message("y1", snapshot=True))
    assert revoked.loaded
    # The part of the broken snapshot is not carried into the next one.
    assert set(revoked.serials) == {"y1"}


async def test_health_and_the_doctor_say_so_while_the_set_is_not_loaded() -> None:
    """Every federation request is refused until a snapshot has arrived: readiness names
    it (health NOT_SERVING) and the doctor's ``revocations`` row fails, until it loads."""
    revoked = RevokedSerials()
    assert await revoked.problem() == "revocations: not loaded"
    row = await revoked.check()
    assert (row.name, row.ok) == ("revocations", False)
    assert "REVOCATIONS_NOT_LOADED" in row.detail and "ca-service" in row.remediation
    revoked.apply(_message("a1", snapshot=True))
    assert await revoked.problem() is None
    row = await revoked.check()
    assert (row.ok, row.detail) == (True, "loaded, 1 revoked")
    revoked.lost()
    assert await revoked.problem() is not None and not (await revoked.check()).ok


def _never_loaded() -> RevokedSerials:
    return RevokedSerials()


def _lost_after_loading() -> RevokedSerials:
    revoked = RevokedSerials()
    revoked.apply(_message("a1", snapshot=True))
    revoked.lost()  # the watch broke: a revocation may be missed from here on
    return revoked


@pytest.mark.parametrize("serials", [_never_loaded, _lost_after_loading], ids=["never", "lost"])
async def test_no_request_passes_the_gate_while_the_set_is_not_loaded(
    monkeypatch: pytest.MonkeyPatch, serials: Any
) -> None:
    """A certificate revoked while the gateway was not listening must not be honoured:
    until a whole snapshot has arrived, every request is refused UNAVAILABLE
    REVOCATIONS_NOT_LOADED (the peer may retry) and audited, before grants-service or
    resource-service is asked anything."""
    known_identity(monkeypatch, serial="01ab", grant_id=GRANT_ID, subject=SUBJECT)
    asked: list[str] = []

    def backend(method: str, _request: Any) -> Any:
        asked.append(method)
        return grant_reply() if method == "GetGrant" else resources_pb2.ListResourcesResponse()

    audit = RecordingAudit()
    servicer = gated_servicer(backend, audit=audit, serials=serials())
    calls = {
        "list": servicer.List(gateway_pb2.ListRequest(resource="tasks"), PeerContext()),
        "capabilities": servicer.Capabilities(gateway_pb2.CapabilitiesRequest(), PeerContext()),
    }
    for verb, call in calls.items():
        with pytest.raises(ServiceError) as refused:
            await call
        assert (refused.value.code, refused.value.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "REVOCATIONS_NOT_LOADED",
        ), verb
        assert refused.value.retry_after_s
    assert asked == []  # neither GetGrant nor ListResources
    assert [(row.verb, row.status, row.reason) for row in audit.rows] == [
        ("list", "UNAVAILABLE", "REVOCATIONS_NOT_LOADED"),
        ("capabilities", "UNAVAILABLE", "REVOCATIONS_NOT_LOADED"),
    ]
