"""Grant and peer rules: what a new grant must satisfy and which transitions are allowed.

Pure: no gRPC, no SQL. The store applies a transition as a conditional update whose
``WHERE`` names the states :func:`grant_sources` / :func:`peer_sources` return; when that
update matches nothing, :func:`grant_refusal` / :func:`peer_refusal` say why, naming the
state the row is actually in.

Lifecycles (DESIGN.md "Flows"):

- grant: ``pending → active`` (enrollment only), ``pending|active → revoked`` (terminal),
  ``pending|active → expired`` once ``expires_at`` has passed (terminal). A pending grant
  whose expiry passed can no longer be enrolled, so it expires too rather than lingering.
- peer: ``pending → active`` (enrollment only; a peer with several grants may already be
  active when a later grant is enrolled), ``active ↔ suspended``, ``any → revoked``
  (terminal; revoking a peer revokes its pending and active grants).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from cryptography import x509

from mosaic.scope import Scope, ScopeError, parse_scope
from mosaic.text import control_character_problem
from mosaic.x509ext import serial_hex

__all__ = [
    "GRANT_STATUSES",
    "OUTBOUND_RESERVATION_TTL",
    "PEER_ACTIVATION_SOURCES",
    "PEER_STATES",
    "GrantNotFound",
    "GrantRefused",
    "InvalidGrantRequest",
    "NewGrant",
    "NewOutboundPeer",
    "PeerNameTaken",
    "PeerNotFound",
    "PeerRefused",
    "PeerReservationLost",
    "TransitionRefused",
    "activation_refusal",
    "clean_reason",
    "grant_refusal",
    "grant_sources",
    "grant_target",
    "is_due_to_expire",
    "peer_for_new_grant",
    "peer_refusal",
    "peer_sources",
    "reservation_end",
    "rotation_refusal",
    "validate_new_certificate",
    "validate_new_grant",
    "validate_outbound_peer",
    "validate_peer_name",
]

GrantStatus = Literal["pending", "active", "revoked", "expired"]
PeerState = Literal["pending", "active", "suspended", "revoked"]
GrantAction = Literal["activate", "revoke", "expire"]

GRANT_STATUSES: Final[tuple[GrantStatus, ...]] = ("pending", "active", "revoked", "expired")
PEER_STATES: Final[tuple[PeerState, ...]] = ("pending", "active", "suspended", "revoked")

# The states a grant may leave for each action. Revoked and expired are terminal.
_GRANT_SOURCES: Final[dict[GrantAction, frozenset[str]]] = {
    "activate": frozenset({"pending"}),
    "revoke": frozenset({"pending", "active"}),
    "expire": frozenset({"pending", "active"}),
}
_GRANT_TARGET: Final[dict[GrantAction, GrantStatus]] = {
    "activate": "active",
    "revoke": "revoked",
    "expire": "expired",
}
# The states SetPeerState may move a peer out of, per target state. ``pending → active``
# is not here: only enrollment activates a pending peer (see activation_sources).
_PEER_SOURCES: Final[dict[str, frozenset[str]]] = {
    "active": frozenset({"suspended"}),
    "suspended": frozenset({"active"}),
    "revoked": frozenset({"pending", "active", "suspended"}),
}
# Enrollment of a grant activates its peer, or finds it already active through another grant.
PEER_ACTIVATION_SOURCES: Final[frozenset[str]] = frozenset({"pending", "active"})

PEER_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# How long a name reserved for an enrollment (ReserveOutboundPeer) stays reserved against
# other enrollments: longer than `peer add` can take once it holds the name (the probe's
# 10 s, the redeem's 75 s of repeats, 30 s to store and read back, a shutdown grace), so
# a running enrollment never loses its name; short enough that a name left reserved by
# one that never finished (its gateway crashed) comes free without an operator.
OUTBOUND_RESERVATION_TTL: Final = dt.timedelta(minutes=5)
MAX_REASON_LEN: Final = 1000

# Reason codes (ErrorInfo.reason) of refusals that are not transitions.
SCOPE_INVALID: Final = "SCOPE_INVALID"
GRANT_REQUEST_INVALID: Final = "GRANT_REQUEST_INVALID"
REASON_INVALID: Final = "REASON_INVALID"
SENSITIVE_NOT_ALLOWED: Final = "SENSITIVE_NOT_ALLOWED"
PEER_NAME_TAKEN: Final = "PEER_NAME_TAKEN"
PEER_RESERVATION_LOST: Final = "PEER_RESERVATION_LOST"
# An outbound peer that is only a name reserved by a running enrollment (no credentials).
PEER_PENDING: Final = "PEER_PENDING"
GRANT_PEER_MISMATCH: Final = "GRANT_PEER_MISMATCH"
CERT_NOT_CURRENT: Final = "CERT_NOT_CURRENT"
PEER_DIRECTION_MISMATCH: Final = "PEER_DIRECTION_MISMATCH"


class InvalidGrantRequest(ValueError):
    """A CreateGrant request was refused; ``violations`` lists every (field, problem)."""

    def __init__(
        self,
        reason: str,
        message: str,
        violations: tuple[tuple[str, str], ...] = (),
        *,
        remediation: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.violations = violations
        self.remediation = remediation


class TransitionRefused(Exception):
    """A transition is not allowed from the state the row is in; ``reason`` names that state."""

    def __init__(self, reason: str, message: str, current: str, *, remediation: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.current = current
        self.remediation = remediation


class GrantNotFound(LookupError):
    """No grant has this id."""


class PeerNotFound(LookupError):
    """No peer has this id or name."""


class PeerNameTaken(Exception):
    """Another peer already has this name (names are unique across both directions).

    ``reserved_until`` is set when that peer is only a reservation of a running enrollment
    (a pending outbound peer): the name comes free then if the enrollment never finishes.
    """

    def __init__(self, name: str, *, reserved_until: dt.datetime | None = None) -> None:
        super().__init__(name)
        self.name = name
        self.reserved_until = reserved_until


class PeerReservationLost(Exception):
    """The pending outbound peer reserved for an enrollment is gone: its reservation lapsed
    and another enrollment took the name over, or an operator removed it."""


class GrantRefused(TransitionRefused):
    """A grant transition was refused."""


class PeerRefused(TransitionRefused):
    """A peer transition (or a use of the peer) was refused."""


@dataclass(frozen=True)
class NewGrant:
    """A validated CreateGrant request."""

    subject_user_id: uuid.UUID
    peer_name: str
    scope: Scope
    expires_at: dt.datetime | None

    @property
    def sensitive(self) -> bool:
        return bool(self.scope.sensitive_resources)


def validate_peer_name(name: str) -> str | None:
    """Return what is wrong with a peer name, or None when it is acceptable."""
    if not PEER_NAME_RE.fullmatch(name):
        return (
            "must be 1-128 letters, digits, dots, dashes or underscores,"
            " starting with a letter or digit"
        )
    return None


def validate_new_grant(
    *,
    subject_user_id: str,
    peer_name: str,
    scope_json: str,
    allow_sensitive: bool,
    expires_at: dt.datetime | None,
    now: dt.datetime,
) -> NewGrant:
    """Check every field of a new grant at once; raise InvalidGrantRequest listing all problems.

    The reason is SCOPE_INVALID when the scope has problems (each reported under
    ``scope.<path>``), else GRANT_REQUEST_INVALID; a valid scope granting credentials or
    api_keys without ``allow_sensitive`` is SENSITIVE_NOT_ALLOWED.
    """
    violations: list[tuple[str, str]] = []
    subject: uuid.UUID | None = None
    try:
        subject = uuid.UUID(subject_user_id)
        if str(subject) != subject_user_id.lower():
            raise ValueError
    except ValueError:
        violations.append(("subject_user_id", "must be a UUID (8-4-4-4-12 hex digits)"))
    name_problem = validate_peer_name(peer_name)
    if name_problem:
        violations.append(("peer_name", name_problem))
    if expires_at is not None and expires_at <= now:
        violations.append(("expires_at", "must be in the future"))
    scope: Scope | None = None
    scope_problems = 0
    try:
        scope = parse_scope(scope_json)
    except ScopeError as exc:
        scope_problems = len(exc.problems)
        violations.extend((_scope_field(path), message) for path, message in exc.violations)
    if violations:
        reason = SCOPE_INVALID if scope_problems else GRANT_REQUEST_INVALID
        listed = "; ".join(f"{field}: {problem}" for field, problem in violations)
        raise InvalidGrantRequest(
            reason,
            f"invalid grant: {listed}",
            tuple(violations),
            remediation=_remediation_for(field for field, _ in violations),
        )
    assert scope is not None and subject is not None
    sensitive = sorted(scope.sensitive_resources)
    if sensitive and not allow_sensitive:
        raise InvalidGrantRequest(
            SENSITIVE_NOT_ALLOWED,
            f"the scope grants sensitive resources ({', '.join(sensitive)})",
            tuple(
                ("scope.resources", f"{name} is sensitive and needs --allow-sensitive")
                for name in sensitive
            ),
            remediation="pass --allow-sensitive if the peer really must read them",
        )
    return NewGrant(
        subject_user_id=subject, peer_name=peer_name, scope=scope, expires_at=expires_at
    )


# What to do about each field of CreateGrant, named as the admin CLI spells its option.
_FIELD_REMEDIATIONS: Final = (
    ("subject_user_id", "give --user the local user's id as a UUID"),
    (
        "peer_name",
        "choose a --peer-name of 1-128 letters, digits, dots, dashes or underscores, starting "
        "with a letter or digit",
    ),
    ("expires_at", "give an --expires-at in the future, or none for a grant that does not end"),
    (
        "scope",
        'fix the scope fields named here (docs/ADMIN-CLI.md, "Scope", describes the scope '
        "document)",
    ),
)


def _remediation_for(fields: Iterable[str]) -> str:
    """One remediation per kind of field at fault, in the order the request has them."""
    named = {re.split(r"[.\[]", field, maxsplit=1)[0] for field in fields}
    return "; ".join(text for field, text in _FIELD_REMEDIATIONS if field in named)


@dataclass(frozen=True)
class NewOutboundPeer:
    """A validated RegisterOutboundPeer request (the key is still clear text here)."""

    name: str
    endpoint: str
    cert_pem: str
    cert_serial: str
    cert_not_after: dt.datetime
    ca_bundle_pem: str
    client_key_pem: str
    remote_grant_id: uuid.UUID | None
    remote_subject_user_id: uuid.UUID | None


def validate_outbound_peer(
    *,
    name: str,
    endpoint: str,
    cert_pem: str,
    ca_bundle_pem: str,
    client_key_pem: str,
    remote_grant_id: str,
    remote_subject_user_id: str,
) -> NewOutboundPeer:
    """Check a peer we query, as enrollment hands it over; raise InvalidGrantRequest if wrong."""
    violations: list[tuple[str, str]] = []
    name_problem = validate_peer_name(name)
    if name_problem:
        violations.append(("name", name_problem))
    if not endpoint or len(endpoint) > 512:
        violations.append(("endpoint", "must be host:port"))
    serial = ""
    not_after = dt.datetime.min.replace(tzinfo=dt.UTC)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        serial = serial_hex(cert.serial_number)
        not_after = cert.not_valid_after_utc
    except ValueError:
        violations.append(("cert_pem", "must be one PEM certificate"))
    if "PRIVATE KEY" not in client_key_pem:
        violations.append(("client_key_pem", "must be a PEM private key"))
    ids: dict[str, uuid.UUID | None] = {}
    for field, value in (
        ("remote_grant_id", remote_grant_id),
        ("remote_subject_user_id", remote_subject_user_id),
    ):
        ids[field] = None
        if value:
            try:
                ids[field] = uuid.UUID(value)
            except ValueError:
                violations.append((field, "must be a UUID"))
    if violations:
        listed = "; ".join(f"{field}: {problem}" for field, problem in violations)
        raise InvalidGrantRequest(
            "PEER_REQUEST_INVALID", f"invalid peer: {listed}", tuple(violations)
        )
    return NewOutboundPeer(
        name=name,
        endpoint=endpoint,
        cert_pem=cert_pem,
        cert_serial=serial,
        cert_not_after=not_after,
        ca_bundle_pem=ca_bundle_pem,
        client_key_pem=client_key_pem,
        remote_grant_id=ids["remote_grant_id"],
        remote_subject_user_id=ids["remote_subject_user_id"],
    )


def reservation_end(direction: str, state: str, reserved_at: dt.datetime) -> dt.datetime | None:
    """When the reservation a peer row stands for lapses; None if the row is a real peer
    (only a pending outbound peer is a reservation, made at ``reserved_at``)."""
    if direction == "outbound" and state == "pending":
        return reserved_at + OUTBOUND_RESERVATION_TTL
    return None


def _scope_field(path: str) -> str:
    if not path:
        return "scope"
    return f"scope{path}" if path.startswith("[") else f"scope.{path}"


def peer_for_new_grant(direction: str, state: str, name: str) -> None:
    """Refuse to attach a new grant to an existing peer that cannot take one.

    A pending or active inbound peer is reused (one peer may hold several grants).
    """
    if direction != "inbound":
        raise PeerRefused(
            PEER_NAME_TAKEN,
            f"peer name {name!r} belongs to a gateway we query, not one we serve",
            state,
            remediation="choose another --peer-name",
        )
    if state in ("pending", "active"):
        return
    raise PeerRefused(
        _state_reason("PEER", state, already=False),
        f"peer {name!r} is {state}",
        state,
        remediation=(
            "resume it first with `mosaic federation peer resume ID`"
            if state == "suspended"
            else "a revoked peer is terminal; remove it or choose another --peer-name"
        ),
    )


# ---- transitions ---------------------------------------------------------------------


def grant_sources(action: GrantAction) -> frozenset[str]:
    """The grant states ``action`` may start from (the conditional update's WHERE)."""
    return _GRANT_SOURCES[action]


def grant_target(action: GrantAction) -> GrantStatus:
    return _GRANT_TARGET[action]


def grant_refusal(action: GrantAction, current: str) -> GrantRefused:
    """Why ``action`` did not apply to a grant found in state ``current``."""
    target = _GRANT_TARGET[action]
    already = current == target
    verb = {"activate": "activated", "revoke": "revoked", "expire": "expired"}[action]
    remediation = ""
    if current in ("revoked", "expired"):
        remediation = f"a {current} grant is final; create a new grant"
    elif already:
        remediation = f"nothing to do: the grant is already {current}"
    elif current == "pending":
        remediation = "a pending grant becomes active only when its peer enrolls"
    return GrantRefused(
        _state_reason("GRANT", current, already=already),
        f"grant is {current}" + ("" if already else f" and cannot be {verb}"),
        current,
        remediation=remediation,
    )


def peer_sources(target: str) -> frozenset[str]:
    """The peer states SetPeerState may move out of to reach ``target``.

    Raises ValueError for a target SetPeerState cannot set (pending).
    """
    try:
        return _PEER_SOURCES[target]
    except KeyError:
        raise ValueError(f"a peer cannot be set to {target}") from None


def peer_refusal(target: str, current: str) -> PeerRefused:
    """Why a peer in state ``current`` cannot be moved to ``target``."""
    already = current == target
    remediation = ""
    if current == "revoked":
        remediation = "a revoked peer is final; remove it and enroll again"
    elif current == "pending":
        remediation = "a pending peer becomes active only by enrolling"
    elif already:
        remediation = f"nothing to do: the peer is already {current}"
    return PeerRefused(
        _state_reason("PEER", current, already=already),
        f"peer is {current}" + ("" if already else f" and cannot become {target}"),
        current,
        remediation=remediation,
    )


def activation_refusal(
    *, grant_status: str | None, grant_peer_id: str | None, peer_id: str, peer_state: str | None
) -> TransitionRefused:
    """Why ActivateGrantAndPeer did not apply, from what the grant and peer look like now."""
    if grant_peer_id is not None and grant_peer_id != peer_id:
        return GrantRefused(
            GRANT_PEER_MISMATCH,
            "the grant belongs to another peer",
            grant_status or "",
        )
    if grant_status is not None and grant_status != "pending":
        return grant_refusal("activate", grant_status)
    if peer_state is not None and peer_state not in PEER_ACTIVATION_SOURCES:
        return PeerRefused(
            _state_reason("PEER", peer_state, already=False),
            f"peer is {peer_state} and cannot be activated",
            peer_state,
        )
    # The grant was pending and the peer activatable, so the grant's expiry had passed.
    return grant_refusal("activate", "expired")


@dataclass(frozen=True)
class NewCertificate:
    """A validated replacement certificate (renewal): serial and expiry read from it."""

    cert_pem: str
    cert_serial: str
    cert_not_after: dt.datetime


def validate_new_certificate(cert_pem: str, client_key_pem: str | None = None) -> NewCertificate:
    """Check a renewed certificate (and, for a peer we query, its new key) before storing.

    ``cert_pem`` may carry intermediates after the leaf; the first certificate is the leaf.
    """
    violations: list[tuple[str, str]] = []
    serial = ""
    not_after = dt.datetime.min.replace(tzinfo=dt.UTC)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        serial = serial_hex(cert.serial_number)
        not_after = cert.not_valid_after_utc
    except ValueError:
        violations.append(("cert_pem", "must be a PEM certificate"))
    if client_key_pem is not None and "PRIVATE KEY" not in client_key_pem:
        violations.append(("client_key_pem", "must be a PEM private key"))
    if violations:
        listed = "; ".join(f"{field}: {problem}" for field, problem in violations)
        raise InvalidGrantRequest(
            "CERTIFICATE_INVALID", f"invalid certificate: {listed}", tuple(violations)
        )
    return NewCertificate(cert_pem=cert_pem, cert_serial=serial, cert_not_after=not_after)


def rotation_refusal(
    *,
    direction: str,
    state: str,
    expected_direction: str,
    grant_status: str | None,
    serial_matches: bool,
) -> TransitionRefused:
    """Why a certificate rotation (renewal) did not apply, from what the peer and the grant
    (None: not this peer's) look like now."""
    if direction != expected_direction:
        return PeerRefused(
            PEER_DIRECTION_MISMATCH,
            f"peer is {direction}; only {expected_direction} peers are renewed here",
            state,
        )
    if state != "active":
        return PeerRefused(
            _state_reason("PEER", state, already=False),
            f"peer is {state} and its certificate cannot be renewed",
            state,
        )
    if grant_status is None:
        return GrantRefused(GRANT_PEER_MISMATCH, "the grant belongs to another peer", "")
    if grant_status != "active":
        return GrantRefused(
            _state_reason("GRANT", grant_status, already=False),
            f"grant is {grant_status} and its certificate cannot be renewed",
            grant_status,
        )
    if not serial_matches:
        return PeerRefused(
            CERT_NOT_CURRENT,
            "the certificate being renewed is no longer the grant's current one",
            state,
            remediation="another renewal won; use the grant's current certificate",
        )
    return PeerRefused(_state_reason("PEER", state, already=False), "peer changed", state)


def is_due_to_expire(status: str, expires_at: dt.datetime | None, now: dt.datetime) -> bool:
    """Whether a grant in ``status`` must be moved to expired now."""
    return status in _GRANT_SOURCES["expire"] and expires_at is not None and expires_at <= now


def _state_reason(kind: str, state: str, *, already: bool) -> str:
    return f"{kind}_{'ALREADY_' if already else ''}{state.upper()}"


def clean_reason(reason: str) -> str:
    """An operator's free-text reason, trimmed and bounded; InvalidGrantRequest if it holds
    a control character (a NUL fails on Postgres and is kept on SQLite; an escape sequence
    would reach whoever reads it later). Tab and line feed are allowed."""
    problem = control_character_problem(reason)
    if problem is not None:
        raise InvalidGrantRequest(REASON_INVALID, f"reason {problem}", (("reason", problem),))
    return reason.strip()[:MAX_REASON_LEN]
