"""Opaque, tamper-evident page tokens for Federation.List.

A token is ``base64url(version || nonce || AES-256-GCM(key, nonce, payload))`` without
padding, the version byte authenticated as associated data. The payload binds the grant,
the resource, the keyset cursor (the last id of the page) and an expiry, so a token
cannot be edited, replayed under another grant or resource, or kept forever; and it is
encrypted, so it tells the peer nothing, not even the cursor (which names a row that
resource-service returned, possibly one the gateway then dropped as outside the scope).
The key comes from the instance seal secret (``Sealer.derive_key("page-token")``): every
replica of one instance accepts the others' tokens, and rotating the secret invalidates
outstanding ones.

Payload layout::

    expires_at (8 bytes, big-endian unix seconds) | grant id (16 bytes)
    | len(resource) (1 byte) | resource (ASCII) | after_id (UTF-8, the rest)
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
import time
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["DEFAULT_TTL_S", "MAX_TOKEN_CHARS", "PageTokenInvalid", "PageTokens"]

DEFAULT_TTL_S = 3600
MAX_TOKEN_CHARS = 512  # a real token is ~120 characters; refuse huge input before decoding
_VERSION = b"\x02"  # 1 was the HMAC-only layout, no longer accepted
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER = struct.Struct(">Q16sB")


class PageTokenInvalid(ValueError):
    """The token was not made by this instance for this grant and resource, or it expired."""


class PageTokens:
    """Makes and checks page tokens with one key."""

    def __init__(self, key: bytes, *, ttl_s: int = DEFAULT_TTL_S) -> None:
        if len(key) < 32:
            raise ValueError("page-token key must be at least 32 bytes")
        self._aead = AESGCM(key[:32])
        self._ttl_s = ttl_s

    def make(self, *, grant_id: str, resource: str, after_id: str, now: float | None = None) -> str:
        """A token that resumes ``resource`` after ``after_id`` under ``grant_id`` only."""
        expires = int(now if now is not None else time.time()) + self._ttl_s
        name = resource.encode("utf-8")
        payload = (
            _HEADER.pack(expires, uuid.UUID(grant_id).bytes, len(name))
            + name
            + after_id.encode("utf-8")
        )
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, payload, _VERSION)
        return base64.urlsafe_b64encode(_VERSION + nonce + sealed).rstrip(b"=").decode("ascii")

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
        if len(raw) < 1 + _NONCE_BYTES + _HEADER.size + _TAG_BYTES:
            raise PageTokenInvalid("page token is too short")
        if raw[:1] != _VERSION:
            raise PageTokenInvalid("page token version is not supported")
        nonce, sealed = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
        try:
            payload = self._aead.decrypt(nonce, sealed, _VERSION)
        except InvalidTag:
            raise PageTokenInvalid(
                "page token was not made by this gateway or was altered"
            ) from None
        expires, grant_bytes, name_len = _HEADER.unpack_from(payload)
        name = payload[_HEADER.size : _HEADER.size + name_len]
        if grant_bytes != uuid.UUID(grant_id).bytes or name != resource.encode("utf-8"):
            raise PageTokenInvalid("page token belongs to another grant or resource")
        if expires < (now if now is not None else time.time()):
            raise PageTokenInvalid("page token has expired")
        try:
            return payload[_HEADER.size + name_len :].decode("utf-8")
        except UnicodeDecodeError:
            raise PageTokenInvalid("page token cursor is not UTF-8") from None
