"""Page tokens: opaque, bound to grant + resource, tamper-evident, expiring."""

from __future__ import annotations

import base64
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation_gateway.pagetoken import MAX_TOKEN_CHARS, PageTokenInvalid, PageTokens

KEY = bytes(range(32))
GRANT = str(uuid.uuid4())
OTHER_GRANT = str(uuid.uuid4())
NOW = 1_900_000_000.0


@pytest.fixture
def tokens() -> PageTokens:
    return PageTokens(KEY, ttl_s=60)


def test_round_trip(tokens: PageTokens) -> None:
    token = tokens.make(grant_id=GRANT, resource="tasks", after_id="t-u-p-09", now=NOW)
    assert tokens.after_id(token, grant_id=GRANT, resource="tasks", now=NOW + 1) == "t-u-p-09"
    assert "t-u-p-09" not in token  # opaque enough not to invite editing
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_the_token_tells_the_peer_nothing(tokens: PageTokens) -> None:
    """The cursor names the last row resource-service returned, which may be a row the
    gateway dropped as outside the scope: the token is encrypted, not only MACed."""
    cursor = "another-users-row-0042"
    token = tokens.make(grant_id=GRANT, resource="tasks", after_id=cursor, now=NOW)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for secret in (cursor.encode(), b"another", b"tasks", uuid.UUID(GRANT).bytes):
        assert secret not in raw
    again = tokens.make(grant_id=GRANT, resource="tasks", after_id=cursor, now=NOW)
    assert again != token  # a fresh nonce each time: equal cursors do not show either


def test_other_grant_or_resource_is_refused(tokens: PageTokens) -> None:
    token = tokens.make(grant_id=GRANT, resource="tasks", after_id="x", now=NOW)
    with pytest.raises(PageTokenInvalid):
        tokens.after_id(token, grant_id=OTHER_GRANT, resource="tasks", now=NOW)
    with pytest.raises(PageTokenInvalid):
        tokens.after_id(token, grant_id=GRANT, resource="notes", now=NOW)


def test_expired_token_is_refused(tokens: PageTokens) -> None:
    token = tokens.make(grant_id=GRANT, resource="tasks", after_id="x", now=NOW)
    with pytest.raises(PageTokenInvalid, match="expired"):
        tokens.after_id(token, grant_id=GRANT, resource="tasks", now=NOW + 61)


def test_another_key_is_refused(tokens: PageTokens) -> None:
    token = PageTokens(b"k" * 32).make(grant_id=GRANT, resource="tasks", after_id="x", now=NOW)
    with pytest.raises(PageTokenInvalid):
        tokens.after_id(token, grant_id=GRANT, resource="tasks", now=NOW)


def test_every_single_byte_change_is_refused(tokens: PageTokens) -> None:
    token = tokens.make(grant_id=GRANT, resource="tasks", after_id="t-1", now=NOW)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for index in range(len(raw)):
        for bit in (0x01, 0x80):
            changed = bytearray(raw)
            changed[index] ^= bit
            forged = base64.urlsafe_b64encode(bytes(changed)).rstrip(b"=").decode()
            with pytest.raises(PageTokenInvalid):
                tokens.after_id(forged, grant_id=GRANT, resource="tasks", now=NOW)


@pytest.mark.parametrize(
    "bad", ["", "x", "====", "not base64 at all!", "A" * (MAX_TOKEN_CHARS + 1), "\x00\x01"]
)
def test_garbage_is_refused(tokens: PageTokens, bad: str) -> None:
    with pytest.raises(PageTokenInvalid):
        tokens.after_id(bad, grant_id=GRANT, resource="tasks", now=NOW)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=MAX_TOKEN_CHARS + 10))
def test_arbitrary_text_never_decodes(bad: str) -> None:
    with pytest.raises(PageTokenInvalid):
        PageTokens(KEY).after_id(bad, grant_id=GRANT, resource="tasks", now=NOW)


def test_short_key_is_rejected() -> None:
    with pytest.raises(ValueError):
        PageTokens(b"short")
