"""Enrollment token rules: making tokens, their lifetime, and why a redeem is refused.

Pure: no gRPC, no SQL.

Tokens are 256 random bits (``secrets.token_urlsafe(32)``, 43 characters). Only their
SHA-256 is stored. A keyed hash (HMAC under a key derived from the seal secret) would
add nothing here: the input is a uniformly random 256-bit value, so the stored digest
cannot be reversed or brute-forced whether or not it is keyed, and a plain digest keeps
outstanding tokens valid across a seal-secret rotation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Final

from mosaic.enrollment_url import is_well_formed_token

__all__ = [
    "CLAIM_DURATION",
    "DEFAULT_TTL_S",
    "MAX_TTL_S",
    "REPEAT_WINDOW",
    "TOKEN_HINT_LENGTH",
    "InvalidTTL",
    "NewToken",
    "RedeemRefused",
    "TokenView",
    "hash_token",
    "is_well_formed_token",
    "new_token",
    "refusal_for_unclaimable",
    "token_ttl",
]

DEFAULT_TTL_S: Final = 900
MAX_TTL_S: Final = 900
TOKEN_HINT_LENGTH: Final = 8
# How long one redeem may hold a token before another attempt may take it over. Longer
# than every deadline inside a redeem (CA issuance and the grants transaction).
CLAIM_DURATION: Final = dt.timedelta(seconds=60)
# How long after its expiry a spent token still answers a redeem repeated with the same
# key (the peer lost the first answer): the same certificate again, nothing issued.
REPEAT_WINDOW: Final = dt.timedelta(minutes=10)

# Reason codes (ErrorInfo.reason) of refused redeems. Each tells the holder of *this*
# token what happened to it, and nothing about any other token.
TOKEN_UNKNOWN: Final = "TOKEN_UNKNOWN"  # noqa: S105 - reason codes, not secrets
TOKEN_EXPIRED: Final = "TOKEN_EXPIRED"  # noqa: S105
TOKEN_ALREADY_USED: Final = "TOKEN_ALREADY_USED"  # noqa: S105
TOKEN_IN_USE: Final = "TOKEN_IN_USE"  # noqa: S105
TOKEN_BINDING_MISMATCH: Final = "TOKEN_BINDING_MISMATCH"  # noqa: S105
GRANT_NOT_PENDING: Final = "GRANT_NOT_PENDING"
TOKEN_TTL_INVALID: Final = "TOKEN_TTL_INVALID"  # noqa: S105

REFUSED_MESSAGE: Final = "enrollment token is not valid"


class InvalidTTL(ValueError):
    """A requested token lifetime outside 0..MAX_TTL_S."""


class RedeemRefused(Exception):
    """A redeem that must not go ahead; ``reason`` is one of the TOKEN_*/GRANT_* codes."""

    def __init__(self, reason: str, message: str = REFUSED_MESSAGE) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class NewToken:
    """A freshly made token: the clear value (returned once) and what is stored."""

    token: str
    token_hash: str
    token_hint: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class TokenView:
    """What the refusal decision needs to know about a stored token."""

    state: str
    expires_at: dt.datetime
    claimed_until: dt.datetime | None


def token_ttl(requested_s: int) -> dt.timedelta:
    """0 means the default (900 s); negative or above 900 s is refused."""
    if requested_s == 0:
        return dt.timedelta(seconds=DEFAULT_TTL_S)
    if requested_s < 0 or requested_s > MAX_TTL_S:
        raise InvalidTTL(
            f"ttl_seconds must be between 1 and {MAX_TTL_S} (0 for the default "
            f"{DEFAULT_TTL_S} s); got {requested_s}"
        )
    return dt.timedelta(seconds=requested_s)


def hash_token(token: str) -> str:
    """Lowercase hex SHA-256 of the token: what the table stores and looks up by."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def new_token(now: dt.datetime, ttl: dt.timedelta) -> NewToken:
    token = secrets.token_urlsafe(32)
    if not is_well_formed_token(token):  # pragma: no cover - token_urlsafe(32) is 43 chars
        raise RuntimeError("secrets.token_urlsafe(32) did not give 43 URL-safe characters")
    return NewToken(
        token=token,
        token_hash=hash_token(token),
        token_hint=token[:TOKEN_HINT_LENGTH],
        expires_at=now + ttl,
    )


def refusal_for_unclaimable(view: TokenView | None, now: dt.datetime) -> RedeemRefused:
    """Why a token could not be claimed, read back after the conditional claim failed.

    A used token is reported as used even once it has expired, so a replay is
    recognisable as one.
    """
    if view is None:
        return RedeemRefused(TOKEN_UNKNOWN)
    if view.state == "used":
        return RedeemRefused(TOKEN_ALREADY_USED)
    if view.expires_at <= now:
        # Only the holder of this very token gets here: its expiry tells it nothing new.
        expired = view.expires_at.astimezone(dt.UTC).isoformat(timespec="seconds")
        return RedeemRefused(
            TOKEN_EXPIRED, f"{REFUSED_MESSAGE}: it expired at {expired.replace('+00:00', 'Z')}"
        )
    # Redeeming: another attempt holds it right now (or released it a moment ago).
    return RedeemRefused(TOKEN_IN_USE)
