"""grants-service rules (services/grants_service/domain.py), without a network or a database."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from grants_service import domain

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
USER = "3f2a1c9e-8b10-4f7c-9d55-0d5e7b0e5c2a"
GOOD_SCOPE = json.dumps({"resources": ["tasks", "notes"]})


def new_grant(**overrides: object) -> domain.NewGrant:
    values: dict[str, object] = {
        "subject_user_id": USER,
        "peer_name": "gateway-a.example",
        "scope_json": GOOD_SCOPE,
        "allow_sensitive": False,
        "expires_at": None,
        "now": NOW,
    }
    values.update(overrides)
    return domain.validate_new_grant(**values)  # type: ignore[arg-type]


def refusal(**overrides: object) -> domain.InvalidGrantRequest:
    with pytest.raises(domain.InvalidGrantRequest) as caught:
        new_grant(**overrides)
    return caught.value


# ---- new grants ---------------------------------------------------------------------------


def test_a_valid_grant_is_normalised() -> None:
    grant = new_grant(expires_at=NOW + dt.timedelta(days=1))
    assert grant.subject_user_id == uuid.UUID(USER)
    assert grant.scope.resources == ("notes", "tasks")
    assert grant.sensitive is False
    assert grant.expires_at == NOW + dt.timedelta(days=1)


def test_every_scope_problem_is_reported_under_scope() -> None:
    exc = refusal(
        scope_json=json.dumps(
            {"resources": ["tasks", "bogus"], "max_rows_per_query": 0, "odd key": 1}
        )
    )
    assert exc.reason == domain.SCOPE_INVALID
    fields = [field for field, _ in exc.violations]
    assert fields == ['scope["odd key"]', "scope.resources[1]", "scope.max_rows_per_query"]
    assert all(problem for _, problem in exc.violations)


def test_invalid_json_is_a_scope_problem_at_the_root() -> None:
    exc = refusal(scope_json="{nope")
    assert exc.reason == domain.SCOPE_INVALID
    assert exc.violations[0][0] == "scope"
    assert "invalid JSON" in exc.violations[0][1]


def test_other_fields_are_reported_together_with_scope_problems() -> None:
    exc = refusal(
        subject_user_id="not-a-uuid",
        peer_name="-bad name",
        expires_at=NOW,
        scope_json=json.dumps({"resources": []}),
    )
    assert exc.reason == domain.SCOPE_INVALID
    assert {f for f, _ in exc.violations} == {
        "subject_user_id",
        "peer_name",
        "expires_at",
        "scope.resources",
    }


def test_without_scope_problems_the_reason_is_the_request() -> None:
    exc = refusal(subject_user_id="3F2A1C9E8B104F7C9D550D5E7B0E5C2A")  # not 8-4-4-4-12
    assert exc.reason == domain.GRANT_REQUEST_INVALID
    assert exc.violations == (("subject_user_id", "must be a UUID (8-4-4-4-12 hex digits)"),)


@pytest.mark.parametrize(
    ("overrides", "says", "not_says"),
    [
        ({"peer_name": "-bad name"}, "--peer-name of 1-128", "scope"),
        ({"expires_at": NOW}, "--expires-at in the future", "scope"),
        ({"subject_user_id": "nope"}, "--user", "scope"),
        ({"scope_json": '{"resources": [], "x": 1}'}, 'docs/ADMIN-CLI.md, "Scope"', "--"),
        ({"scope_json": "[1]"}, 'docs/ADMIN-CLI.md, "Scope"', "--"),
    ],
)
def test_the_remediation_is_about_the_fields_at_fault(
    overrides: dict[str, object], says: str, not_says: str
) -> None:
    """A bad --peer-name is not sent to read about scopes, and no remediation points to a
    document that is not in the repository (DESIGN.md)."""
    exc = refusal(**overrides)
    assert says in exc.remediation
    assert not_says not in exc.remediation
    assert "DESIGN" not in exc.remediation


def test_every_field_at_fault_gets_its_remediation_in_request_order() -> None:
    exc = refusal(peer_name="-bad", expires_at=NOW, scope_json='{"resources": []}')
    parts = exc.remediation.split("; ")
    assert [p.split()[2] for p in parts[:2]] == ["--peer-name", "--expires-at"]
    assert parts[2].startswith("fix the scope fields")


@pytest.mark.parametrize("sensitive", [["credentials"], ["api_keys"], ["credentials", "api_keys"]])
def test_sensitive_resources_need_allow_sensitive(sensitive: list[str]) -> None:
    scope = json.dumps({"resources": ["tasks", *sensitive]})
    exc = refusal(scope_json=scope)
    assert exc.reason == domain.SENSITIVE_NOT_ALLOWED
    assert "--allow-sensitive" in exc.remediation
    for name in sensitive:
        assert any(name in problem for _, problem in exc.violations)
    grant = new_grant(scope_json=scope, allow_sensitive=True)
    assert grant.sensitive is True


def test_excluding_a_sensitive_resource_is_not_granting_it() -> None:
    grant = new_grant(
        scope_json=json.dumps({"resources": ["tasks"], "excluded_resources": ["credentials"]})
    )
    assert grant.sensitive is False


# ---- transitions ----------------------------------------------------------------------------


def test_grant_transition_sources() -> None:
    assert domain.grant_sources("activate") == {"pending"}
    assert domain.grant_sources("revoke") == {"pending", "active"}
    assert domain.grant_sources("expire") == {"pending", "active"}
    for action in ("activate", "revoke", "expire"):
        # revoked and expired are terminal: no action starts from them.
        assert not domain.grant_sources(action) & {"revoked", "expired"}


@pytest.mark.parametrize(
    ("action", "current", "reason"),
    [
        ("revoke", "revoked", "GRANT_ALREADY_REVOKED"),
        ("revoke", "expired", "GRANT_EXPIRED"),
        ("activate", "active", "GRANT_ALREADY_ACTIVE"),
        ("activate", "revoked", "GRANT_REVOKED"),
        ("activate", "expired", "GRANT_EXPIRED"),
    ],
)
def test_grant_refusals_name_the_current_state(action: str, current: str, reason: str) -> None:
    exc = domain.grant_refusal(action, current)  # type: ignore[arg-type]
    assert exc.reason == reason
    assert exc.current == current
    assert current in exc.message


def test_peer_transition_sources() -> None:
    assert domain.peer_sources("suspended") == {"active"}
    assert domain.peer_sources("active") == {"suspended"}
    assert domain.peer_sources("revoked") == {"pending", "active", "suspended"}
    with pytest.raises(ValueError, match="pending"):
        domain.peer_sources("pending")


@pytest.mark.parametrize(
    ("target", "current", "reason"),
    [
        ("suspended", "suspended", "PEER_ALREADY_SUSPENDED"),
        ("suspended", "pending", "PEER_PENDING"),
        ("active", "active", "PEER_ALREADY_ACTIVE"),
        ("active", "revoked", "PEER_REVOKED"),
        ("revoked", "revoked", "PEER_ALREADY_REVOKED"),
    ],
)
def test_peer_refusals_name_the_current_state(target: str, current: str, reason: str) -> None:
    exc = domain.peer_refusal(target, current)
    assert (exc.reason, exc.current) == (reason, current)


def test_new_grant_reuses_pending_or_active_inbound_peers_only() -> None:
    for state in ("pending", "active"):
        domain.peer_for_new_grant("inbound", state, "a")
    for state, reason in (("suspended", "PEER_SUSPENDED"), ("revoked", "PEER_REVOKED")):
        with pytest.raises(domain.PeerRefused) as caught:
            domain.peer_for_new_grant("inbound", state, "a")
        assert caught.value.reason == reason
    with pytest.raises(domain.PeerRefused) as caught:
        domain.peer_for_new_grant("outbound", "active", "a")
    assert caught.value.reason == domain.PEER_NAME_TAKEN


def test_activation_refusal_explains_what_stopped_it() -> None:
    peer = str(uuid.uuid4())
    other = str(uuid.uuid4())

    def reason(**kw: object) -> str:
        values: dict[str, object] = {
            "grant_status": "pending",
            "grant_peer_id": peer,
            "peer_id": peer,
            "peer_state": "pending",
        }
        values.update(kw)
        return domain.activation_refusal(**values).reason  # type: ignore[arg-type]

    assert reason(grant_peer_id=other) == domain.GRANT_PEER_MISMATCH
    assert reason(grant_status="revoked") == "GRANT_REVOKED"
    assert reason(grant_status="active") == "GRANT_ALREADY_ACTIVE"
    assert reason(peer_state="suspended") == "PEER_SUSPENDED"
    assert reason(peer_state="revoked") == "PEER_REVOKED"
    # Pending grant, activatable peer, and still refused: the grant's expiry passed.
    assert reason() == "GRANT_EXPIRED"


def test_due_to_expire() -> None:
    past, future = NOW - dt.timedelta(seconds=1), NOW + dt.timedelta(seconds=1)
    assert domain.is_due_to_expire("active", past, NOW)
    assert domain.is_due_to_expire("pending", NOW, NOW)
    assert not domain.is_due_to_expire("active", future, NOW)
    assert not domain.is_due_to_expire("active", None, NOW)
    assert not domain.is_due_to_expire("revoked", past, NOW)
    assert not domain.is_due_to_expire("expired", past, NOW)


# ---- outbound peers -----------------------------------------------------------------------


def test_outbound_peer_fields_are_all_checked() -> None:
    with pytest.raises(domain.InvalidGrantRequest) as caught:
        domain.validate_outbound_peer(
            name="",
            endpoint="",
            cert_pem="not a certificate",
            ca_bundle_pem="",
            client_key_pem="not a key",
            remote_grant_id="x",
            remote_subject_user_id="",
        )
    assert {f for f, _ in caught.value.violations} == {
        "name",
        "endpoint",
        "cert_pem",
        "client_key_pem",
        "remote_grant_id",
    }


def test_reasons_are_trimmed_and_bounded() -> None:
    assert domain.clean_reason("  why  ") == "why"
    assert len(domain.clean_reason("x" * 5000)) == domain.MAX_REASON_LEN
