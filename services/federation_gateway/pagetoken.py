"""Opaque, tamper-evident page tokens for Federation.List.

A token is ``base64url(payload || HMAC-SHA256(key, payload))`` without padding. The
payload binds the grant, the resource, the keyset cursor (the last id of the page) and
an expiry, so a token cannot be edited, replayed under another grant or resource, or
kept forever. The key comes from the instance seal secret
(``Sealer.derive_key("page-token")``): every replica of one instance accepts the
others' tokens, and rotating the secret invalidates outstanding ones.

Payload layout (version 1)::

    0x01 | expires_at (8 bytes, big-endian unix seconds) | grant id (16 bytes)
         | len(resource) (1 byte) | resource (ASCII) | after_id (UTF-8, the rest)
"""

from __future__ import annotations

import base64
import binascii
import hmac
import struct
import time
import uuid

__all__ = ["DEFAULT_TTL_S", "MAX_TOKEN_CHARS", "PageTokenInvalid", "PageTokens"]

DEFAULT_TTL_S = 3600
MAX_TOKEN_CHARS = 512  # a real token is ~120 characters; refuse huge input before decoding
_VERSION = 1
_HEADER = struct.Struct(">BQ16sB")
_MAC_BYTES = 32


class PageTokenInvalid(ValueError):
    """The token was not made by this instance for this grant and resource, or it expired."""


class PageTokens:
    """Makes and checks page tokens with one MAC key."""

    def __init__(self, key: bytes, *, ttl_s: int = DEFAULT_TTL_S) -> None:
        if len(key) < 32:
            raise ValueError("page-token key must be at least 32 bytes")
        self._key = key
        self._ttl_s = ttl_s

    def make(self, *, grant_id: str, resource: str, after_id: str, now: float | None = None) -> str:
        """A token that resumes ``resource`` after ``after_id`` under ``grant_id`` only."""
        expires = int(now if now is not None else time.time()) + self._ttl_s
        name = resource.encode("utf-8")
        payload = (
            _HEADER.pack(_VERSION, expires, uuid.UUID(grant_id).bytes, len(name))
            + name
            + after_id.encode("utf-8")
        )
        mac = hmac.digest(self._key, payload, "sha256")
        return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode("ascii")

    def after_id(
        self, token: str, *, grant_id: str, resource: str, now: float | None = None
    ) -> str:
        """The cursor ``token`` carries; raise PageTokenInvalid unless it is intact, unexpired,
        and was made for this grant and resource."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise PageTokenInvalid("page token is empty or too long")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise PageTokenInvalid("page token is not base64url") from None
        if len(raw) < _HEADER.size + _MAC_BYTES:
            raise PageTokenInvalid("page token is too short")
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        expected = hmac.digest(self._key, payload, "sha256")
        if not hmac.compare_digest(mac, expected):
            raise PageTokenInvalid("page token was not made by this gateway or was altered")
        version, expires, grant_bytes, name_len = _HEADER.unpack_from(payload)
        if version != _VERSION:
            raise PageTokenInvalid("page token version is not supported")
        name = payload[_HEADER.size : _HEADER.size + name_len]
        if grant_bytes != uuid.UUID(grant_id).bytes or name != resource.encode("utf-8"):
            raise PageTokenInvalid("page token belongs to another grant or resource")
        if expires < (now if now is not None else time.time()):
            raise PageTokenInvalid("page token has expired")
        try:
            return payload[_HEADER.size + name_len :].decode("utf-8")
        except UnicodeDecodeError:
            raise PageTokenInvalid("page token cursor is not UTF-8") from None
