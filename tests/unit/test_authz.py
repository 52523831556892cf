"""The gate's decision on a grant and its peer (authz.decide) and the per-request checks
on the presented certificate (authz.check_certificate), one rule at a time.

Each case starts from a servable grant and breaks exactly one thing, so a rule that
stopped being checked fails its own case.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from federation_gateway.authz import GrantView, Refusal, check_certificate, decide
from mosaic.federation.v1 import grants_pb2

GRANT = "0e8f9f7a-54a4-4bd4-9d34-3c1c2f6f4b11"
PEER = "5a0c8f1e-2b7d-4c39-8f0e-9d2a6b1c3e44"
OTHER_PEER = "7b1d9e2f-3c8e-4d4a-9f1f-ae3b7c2d4f55"
SUBJECT = "11111111-1111-4111-8111-111111111111"
OTHER_SUBJECT = "22222222-2222-4222-8222-222222222222"
SERIAL = "4f2a"
NOW = 1_800_000_000.0

Breakage = Callable[[grants_pb2.GetGrantResponse], None]


def servable() -> grants_pb2.GetGrantResponse:
    reply = grants_pb2.GetGrantResponse()
    grant = reply.grant
    grant.id = GRANT
    grant.peer_id = PEER
    grant.subject_user_id = SUBJECT
    grant.status = grants_pb2.GRANT_STATUS_ACTIVE
    grant.cert_serial = SERIAL
    grant.scope_json = json.dumps({"resources": ["tasks"]})
    grant.expires_at.FromSeconds(int(NOW) + 3600)
    peer = reply.peer
    peer.id = PEER
    peer.direction = grants_pb2.PEER_DIRECTION_INBOUND
    peer.state = grants_pb2.PEER_STATE_ACTIVE
    return reply


def view() -> GrantView:
    decided = decide(servable())
    assert isinstance(decided, GrantView), decided
    return decided


def test_a_servable_grant_is_served() -> None:
    decided = view()
    assert (decided.grant_id, decided.peer_id, decided.cert_serial) == (GRANT, PEER, SERIAL)
    assert list(decided.access) == ["tasks"]
    assert decided.access["tasks"].visibility.owner_user_id == SUBJECT
    assert check_certificate(decided, serial=SERIAL, subject_user_id=SUBJECT, now=NOW) is None


def _set(field: str, value: object, on: str = "grant") -> Breakage:
    def breakage(reply: grants_pb2.GetGrantResponse) -> None:
        setattr(getattr(reply, on), field, value)

    return breakage


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (_set("status", grants_pb2.GRANT_STATUS_PENDING), "GRANT_NOT_ACTIVE"),
        (_set("status", grants_pb2.GRANT_STATUS_REVOKED), "GRANT_REVOKED"),
        (_set("status", grants_pb2.GRANT_STATUS_EXPIRED), "GRANT_EXPIRED"),
        (_set("status", grants_pb2.GRANT_STATUS_UNSPECIFIED), "GRANT_NOT_ACTIVE"),
        # Cross-wired: the grant names one peer, the peer row is another.
        (_set("peer_id", OTHER_PEER), "PEER_GRANT_MISMATCH"),
        (_set("id", OTHER_PEER, on="peer"), "PEER_GRANT_MISMATCH"),
        (_set("id", "", on="peer"), "PEER_GRANT_MISMATCH"),
        # A gateway we query (outbound) is never served under a grant.
        (_set("direction", grants_pb2.PEER_DIRECTION_OUTBOUND, on="peer"), "PEER_GRANT_MISMATCH"),
        (_set("state", grants_pb2.PEER_STATE_PENDING, on="peer"), "PEER_NOT_ACTIVE"),
        (_set("state", grants_pb2.PEER_STATE_SUSPENDED, on="peer"), "PEER_SUSPENDED"),
        (_set("state", grants_pb2.PEER_STATE_REVOKED, on="peer"), "PEER_REVOKED"),
        (_set("state", grants_pb2.PEER_STATE_UNSPECIFIED, on="peer"), "PEER_NOT_ACTIVE"),
        (_set("scope_json", "{not json"), "GRANT_SCOPE_INVALID"),
        (_set("scope_json", json.dumps({"resources": ["secrets"]})), "GRANT_SCOPE_INVALID"),
    ],
)
def test_one_broken_rule_refuses_the_grant(breakage: Breakage, reason: str) -> None:
    reply = servable()
    breakage(reply)
    decided = decide(reply)
    assert isinstance(decided, Refusal), decided
    assert decided.reason == reason
    assert decided.error().code.name == "PERMISSION_DENIED"


def test_a_refusal_names_the_peer_so_a_change_to_it_drops_the_cached_refusal() -> None:
    reply = servable()
    reply.peer.state = grants_pb2.PEER_STATE_SUSPENDED
    decided = decide(reply)
    assert isinstance(decided, Refusal) and decided.peer_id == PEER


@pytest.mark.parametrize(
    ("serial", "subject", "now", "reason"),
    [
        # A certificate the CA issued for this grant, but not the one enrollment or the
        # last renewal made current (an older one, or one minted outside the flows).
        ("9999", SUBJECT, NOW, "CERT_NOT_CURRENT"),
        # A certificate naming this grant for another user.
        (SERIAL, OTHER_SUBJECT, NOW, "PEER_GRANT_MISMATCH"),
        # The grant's end passed since it was cached: checked on every request.
        (SERIAL, SUBJECT, NOW + 3600, "GRANT_EXPIRED"),
        (SERIAL, SUBJECT, NOW + 7200, "GRANT_EXPIRED"),
    ],
)
def test_the_presented_certificate_must_be_the_grants_current_one(
    serial: str, subject: str, now: float, reason: str
) -> None:
    refusal = check_certificate(view(), serial=serial, subject_user_id=subject, now=now)
    assert refusal is not None and refusal.reason == reason


def test_a_grant_without_an_end_does_not_expire() -> None:
    reply = servable()
    reply.grant.ClearField("expires_at")
    decided = decide(reply)
    assert isinstance(decided, GrantView) and decided.expires_at is None
    assert check_certificate(decided, serial=SERIAL, subject_user_id=SUBJECT, now=NOW * 2) is None
