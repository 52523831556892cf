"""The gateway's revoked-serial set: fail closed until a whole snapshot has arrived, however
many messages it spans."""

from __future__ import annotations

from federation_gateway.revocations import RevokedSerials
from mosaic.federation.v1 import ca_pb2


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
    assert revoked.problem() == "revocations: not loaded"
    row = await revoked.check()
    assert (row.name, row.ok) == ("revocations", False)
    assert "REVOCATIONS_NOT_LOADED" in row.detail and "ca-service" in row.remediation
    revoked.apply(_message("a1", snapshot=True))
    assert revoked.problem() is None
    row = await revoked.check()
    assert (row.ok, row.detail) == (True, "loaded, 1 revoked")
    revoked.lost()
    assert revoked.problem() is not None and not (await revoked.check()).ok
