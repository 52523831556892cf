"""Sealing of values stored at rest: AES-256-GCM under a key derived from the instance seal secret.

A sealed blob is ``version (1) | key id (8) | nonce (12) | ciphertext and GCM tag``. The
associated data is ``version | key id | context``, where the context names the place the
value lives (see :func:`seal_context`), so a blob copied to another row, column or table,
or re-labelled with another version or key id, fails to open.

Rotation: a :class:`Sealer` holds the current secret and optionally the previous one. It
seals under the current key only, opens under whichever key the blob names, and
:meth:`Sealer.reseal` moves a blob from the previous key to the current one.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "CONTEXT_SEPARATOR",
    "MIN_SECRET_BITS",
    "MIN_SECRET_BYTES",
    "SEAL_MALFORMED",
    "SEAL_TAMPERED",
    "SEAL_UNKNOWN_KEY",
    "SEAL_UNSUPPORTED_VERSION",
    "SealError",
    "Sealer",
    "WeakSecretError",
    "check_secret_strength",
    "generate_secret",
    "parse_secret",
    "seal_context",
]

# Reason codes carried by SealError.reason (stable; they end up in ErrorInfo.reason).
SEAL_MALFORMED = "SEAL_MALFORMED"
SEAL_UNSUPPORTED_VERSION = "SEAL_UNSUPPORTED_VERSION"
SEAL_UNKNOWN_KEY = "SEAL_UNKNOWN_KEY"
SEAL_TAMPERED = "SEAL_TAMPERED"

MIN_SECRET_BYTES = 32
MIN_SECRET_BITS = 256
CONTEXT_SEPARATOR = "/"

_VERSION = 0x01
_VERSION_BYTE = bytes([_VERSION])
_KEY_ID_LEN = 8
_NONCE_LEN = 12
_TAG_LEN = 16
_HEADER_LEN = 1 + _KEY_ID_LEN
_MIN_BLOB_LEN = _HEADER_LEN + _NONCE_LEN + _TAG_LEN

# Distinct HKDF labels make the key id an independent output: publishing it (in blobs,
# in logs) reveals nothing about the encryption key.
_KEY_INFO = b"mosaic-seal-v1 key"
_KEY_ID_INFO = b"mosaic-seal-v1 key id"

_DEFAULT_LOCATION = "the instance seal secret file (MOSAIC_SEAL_SECRET_FILE)"

# A pattern that a uniformly random secret shows with probability below about 2^-35 is
# taken as evidence that the secret was not drawn at random (see check_secret_strength).
_PATTERN_BITS = 48

_DIGITS = "0123456789"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_UPPER = _LOWER.upper()
# Deliberately coarse: with finer classes (e.g. letters only, 52) a random base64 token
# that happens to contain no digit would be credited too little and refused.
_ALPHABETS: tuple[tuple[int, frozenset[str]], ...] = tuple(
    sorted(
        (
            (10, frozenset(_DIGITS)),
            (16, frozenset(_DIGITS + "abcdef")),
            (16, frozenset(_DIGITS + "ABCDEF")),
            (36, frozenset(_DIGITS + _LOWER)),
            (36, frozenset(_DIGITS + _UPPER)),
            (64, frozenset(_DIGITS + _LOWER + _UPPER + "-_")),
            (64, frozenset(_DIGITS + _LOWER + _UPPER + "+/")),
            (95, frozenset(chr(c) for c in range(0x20, 0x7F))),
        ),
        key=lambda entry: entry[0],
    )
)
_ANY_BYTE_ALPHABET = 256

_HEX_TEXT = re.compile(r"(?:[0-9a-fA-F]{2})+")
_BASE64URL_TEXT = re.compile(r"[A-Za-z0-9_-]+")
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]+")


class SealError(Exception):
    """A sealed value could not be opened; ``reason`` says why, the message never shows the blob.

    Reasons: ``SEAL_MALFORMED`` (too short or not a blob), ``SEAL_UNSUPPORTED_VERSION``,
    ``SEAL_UNKNOWN_KEY`` (sealed under a secret this instance no longer has), and
    ``SEAL_TAMPERED`` (authentication failed: the blob was modified, or it is being opened
    under a different context than it was sealed with, i.e. it was moved).
    """

    message = "sealed value cannot be opened"

    def __init__(self, reason: str, *, key_id: str | None = None) -> None:
        super().__init__(f"{self.message} ({reason})")
        self.reason = reason
        # For SEAL_UNKNOWN_KEY: the hex id of the key the blob names, so an operator can
        # tell which secret it needs (key ids are safe to show: see _KEY_ID_INFO).
        self.key_id = key_id

    def __repr__(self) -> str:
        return f"SealError(reason={self.reason!r})"


class WeakSecretError(ValueError):
    """A seal secret was refused as too weak; ``remediation`` says how to make a good one.

    Neither the message nor the remediation contains the secret or anything derived from it.
    """

    def __init__(self, message: str, *, remediation: str) -> None:
        super().__init__(message)
        self.message = message
        self.remediation = remediation

    def __repr__(self) -> str:
        return f"WeakSecretError({self.message!r})"


def generate_secret() -> str:
    """Return a new seal secret: 48 random bytes as base64url text, always accepted."""
    while True:
        text = secrets.token_urlsafe(48)
        # The pattern checks refuse a random secret with probability about 2^-35; drawing
        # again keeps the promise that what we generate is always accepted.
        try:
            parse_secret(text)
        except WeakSecretError:
            continue
        return text


def parse_secret(text: str, *, location: str = _DEFAULT_LOCATION) -> bytes:
    """Return the raw seal secret that ``text`` encodes, refusing it if it is weak.

    Surrounding whitespace is ignored. The text is read, in this order, as hex (even
    length, either case), as base64url or standard base64 (padding optional, alphabets not
    mixed), and otherwise as the UTF-8 bytes of the text itself. The order is part of the
    contract: changing it would change the keys of existing installations.

    Both the text as written and the bytes it decodes to must pass
    :func:`check_secret_strength`, so a human passphrase that happens to be valid base64 is
    judged as the passphrase it is, not as the random-looking bytes it decodes to.
    ``location`` names where the secret came from, for the remediation line.
    """
    if not isinstance(text, str):
        raise TypeError("the seal secret must be given as text")
    stripped = text.strip()
    raw = _decode_secret_text(stripped)
    # Padding carries no entropy, so it is not counted.
    check_secret_strength(stripped.rstrip("="), location=location)
    check_secret_strength(raw, location=location)
    return raw


def _decode_secret_text(text: str) -> bytes:
    if _HEX_TEXT.fullmatch(text):
        return bytes.fromhex(text)
    unpadded = text.rstrip("=")
    # One leftover base64 character cannot encode a byte; such text is not base64.
    if unpadded and len(unpadded) % 4 != 1 and len(text) - len(unpadded) <= 2:
        padded = unpadded + "=" * (-len(unpadded) % 4)
        try:
            if _BASE64URL_TEXT.fullmatch(unpadded):
                return base64.b64decode(padded, altchars=b"-_", validate=True)
            if _BASE64_TEXT.fullmatch(unpadded):
                return base64.b64decode(padded, validate=True)
        except binascii.Error:
            pass
    return text.encode("utf-8")


def check_secret_strength(secret: bytes | str, *, location: str = _DEFAULT_LOCATION) -> None:
    """Raise :class:`WeakSecretError` unless ``secret`` plausibly carries 256 bits of entropy.

    The rule, applied to the symbols of the secret (bytes, or characters for text):

    1. Bytes must be at least 32 long.
    2. Credit: ``n * log2(k)`` bits must be at least 256, where ``n`` is the number of
       symbols and ``k`` the size of the smallest alphabet that contains every symbol
       used: digits (10), hex (16), single-case alphanumerics (36), base64 or base64url
       (64), printable ASCII (95), anything else (256; a non-ASCII character is credited
       as one byte). So 64 hex digits, 43 base64url characters or 32 random bytes pass,
       and no 32-character ASCII password can.
    3. The credit only holds for a secret that looks drawn at random, so it is refused if
       it shows a pattern that a uniformly random string over the same alphabet would show
       with probability below about 2^-35:

       - it uses fewer than half the distinct symbols such a string is expected to use
         (catches ``"a" * 64``, ``"abcd" * 16``, ``"password" * 8``);
       - a run of ``ceil(48 / log2(k))`` symbols occurs twice (repeated patterns);
       - ``2 + ceil(48 / log2(k))`` consecutive symbols are evenly spaced
         (``"abcdefghij…"``, ``"13579…"``).

    This is a heuristic: it cannot recognise a long human phrase or a secret copied from
    elsewhere. Generate secrets with :func:`generate_secret`.
    """
    if isinstance(secret, bytes | bytearray | memoryview):
        # latin-1 maps each byte to the character with the same code, one to one.
        symbols = bytes(secret).decode("latin-1")
        if len(symbols) < MIN_SECRET_BYTES:
            _refuse(f"the seal secret is shorter than {MIN_SECRET_BYTES} bytes", location)
    elif isinstance(secret, str):
        symbols = secret
    else:
        raise TypeError("a seal secret is bytes or text")
    if not symbols:
        _refuse("the seal secret is empty", location)

    alphabet = _alphabet_size(symbols)
    bits_per_symbol = math.log2(alphabet)
    if len(symbols) * bits_per_symbol < MIN_SECRET_BITS:
        _refuse(
            f"the seal secret carries less than {MIN_SECRET_BITS} bits of entropy"
            " (too short for the characters it uses)",
            location,
        )
    expected_distinct = alphabet * (1 - (1 - 1 / alphabet) ** len(symbols))
    if len(set(symbols)) < expected_distinct / 2:
        _refuse("the seal secret uses too few distinct characters to be random", location)
    pattern_len = math.ceil(_PATTERN_BITS / bits_per_symbol)
    if _has_repeated_run(symbols, pattern_len):
        _refuse("the seal secret contains a repeated sequence", location)
    if _has_evenly_spaced_run(symbols, 2 + pattern_len):
        _refuse("the seal secret contains a sequence such as abcdef or 13579", location)


def _refuse(message: str, location: str) -> None:
    raise WeakSecretError(
        message,
        remediation=(
            "generate a new secret with `mosaic init` (new instances) or"
            " `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            f" and write it to {location}"
        ),
    )


def _alphabet_size(symbols: str) -> int:
    used = frozenset(symbols)
    for size, alphabet in _ALPHABETS:
        if used <= alphabet:
            return size
    return _ANY_BYTE_ALPHABET


def _has_repeated_run(symbols: str, length: int) -> bool:
    seen: set[str] = set()
    for start in range(len(symbols) - length + 1):
        window = symbols[start : start + length]
        if window in seen:
            return True
        seen.add(window)
    return False


def _has_evenly_spaced_run(symbols: str, length: int) -> bool:
    run = 1
    for index in range(1, len(symbols)):
        step = ord(symbols[index]) - ord(symbols[index - 1])
        if index >= 2 and step == ord(symbols[index - 1]) - ord(symbols[index - 2]):
            run += 1
        else:
            run = 2
        if run >= length:
            return True
    return False


def seal_context(table: str, column: str, row_id: str) -> str:
    """Return the canonical context ``"table/column/row_id"`` binding a sealed value to its place.

    Components must be non-empty and must not contain ``/``, so two different places can
    never produce the same context.
    """
    for name, component in (("table", table), ("column", column), ("row_id", row_id)):
        if not isinstance(component, str):
            raise TypeError(f"seal context {name} must be a string")
        if not component:
            raise ValueError(f"seal context {name} must not be empty")
        if CONTEXT_SEPARATOR in component:
            raise ValueError(f"seal context {name} must not contain {CONTEXT_SEPARATOR!r}")
    return CONTEXT_SEPARATOR.join((table, column, row_id))


class _Key:
    """One derived key: the AEAD and the id that names it in blobs."""

    __slots__ = ("aead", "key_id", "purpose_root")

    def __init__(self, secret: bytes) -> None:
        self.aead = AESGCM(_hkdf(secret, 32, _KEY_INFO))
        self.key_id = _hkdf(secret, _KEY_ID_LEN, _KEY_ID_INFO)
        self.purpose_root = _hkdf(secret, 32, b"mosaic-seal-v1 purposes")

    def __repr__(self) -> str:
        return f"_Key(key_id={self.key_id.hex()!r})"


def _hkdf(secret: bytes, length: int, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


class Sealer:
    """Seals under the current secret; opens what was sealed under the current or previous one.

    Both secrets are raw bytes (see :func:`parse_secret`) and must pass
    :func:`check_secret_strength`. The secrets themselves are not kept, only derived keys.
    """

    __slots__ = ("_current", "_previous")

    def __init__(self, current: bytes, previous: bytes | None = None) -> None:
        for secret in (current, previous):
            # Text would be judged by a different rule than the bytes keyed with it.
            if secret is not None and not isinstance(secret, bytes | bytearray):
                raise TypeError("seal secrets are bytes; read text with parse_secret()")
        check_secret_strength(current)
        self._current = _Key(bytes(current))
        self._previous: _Key | None = None
        if previous is not None:
            check_secret_strength(previous)
            candidate = _Key(bytes(previous))
            # The same secret configured twice is harmless: nothing is sealed under a
            # "previous" key that is also the current one, so there is nothing to rotate.
            if candidate.key_id != self._current.key_id:
                self._previous = candidate

    def __repr__(self) -> str:
        previous = self._previous.key_id.hex() if self._previous else None
        return f"Sealer(key_id={self.key_id!r}, previous_key_id={previous!r})"

    @property
    def key_id(self) -> str:
        """Hex id of the current key; derived separately from the key, so safe to log."""
        return self._current.key_id.hex()

    @property
    def previous_key_id(self) -> str | None:
        """Hex id of the previous key, when one is configured."""
        return self._previous.key_id.hex() if self._previous else None

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte key for one named purpose (e.g. page-token MACs), from the current secret.

        Keys for different purposes are independent of each other and of the sealing key;
        they change when the seal secret is rotated.
        """
        if not purpose:
            raise ValueError("purpose must not be empty")
        return _hkdf(self._current.purpose_root, 32, b"mosaic purpose: " + purpose.encode())

    def seal(self, plaintext: bytes | bytearray | memoryview, context: str) -> bytes:
        """Return a new blob of ``plaintext`` under the current key, bound to ``context``.

        Every call draws a fresh random nonce, so sealing the same value twice gives two
        different blobs.
        """
        if not isinstance(plaintext, bytes | bytearray | memoryview):
            raise TypeError("plaintext must be bytes")
        header = _VERSION_BYTE + self._current.key_id
        nonce = os.urandom(_NONCE_LEN)
        sealed = self._current.aead.encrypt(
            nonce, bytes(plaintext), header + _context_bytes(context)
        )
        return header + nonce + sealed

    def open(self, blob: bytes | bytearray | memoryview, context: str) -> bytes:
        """Return the plaintext of ``blob``, which must have been sealed with this ``context``.

        Raises :class:`SealError` for anything that is not an intact blob sealed under the
        current or previous key with exactly this context.
        """
        aad = _context_bytes(context)
        data = _blob_bytes(blob)
        key = self._key_for(data)
        nonce = data[_HEADER_LEN : _HEADER_LEN + _NONCE_LEN]
        try:
            return key.aead.decrypt(
                nonce, data[_HEADER_LEN + _NONCE_LEN :], data[:_HEADER_LEN] + aad
            )
        except InvalidTag:
            raise SealError(SEAL_TAMPERED) from None

    def needs_reseal(self, blob: bytes | bytearray | memoryview) -> bool:
        """Return whether ``blob`` names the previous key (read from its header, not authenticated).

        Raises :class:`SealError` when the blob is malformed or names a key this sealer
        does not have, since re-sealing cannot help those.
        """
        key = self._key_for(_blob_bytes(blob))
        return key is not self._current

    def reseal(self, blob: bytes | bytearray | memoryview, context: str) -> bytes:
        """Open ``blob`` under ``context`` and return it sealed anew under the current key."""
        return self.seal(self.open(blob, context), context)

    def _key_for(self, data: bytes) -> _Key:
        if len(data) < _MIN_BLOB_LEN:
            raise SealError(SEAL_MALFORMED)
        if data[0] != _VERSION:
            raise SealError(SEAL_UNSUPPORTED_VERSION)
        key_id = data[1:_HEADER_LEN]
        if secrets.compare_digest(key_id, self._current.key_id):
            return self._current
        if self._previous is not None and secrets.compare_digest(key_id, self._previous.key_id):
            return self._previous
        raise SealError(SEAL_UNKNOWN_KEY, key_id=key_id.hex())


def _blob_bytes(blob: bytes | bytearray | memoryview) -> bytes:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise TypeError("a sealed blob is bytes")
    return bytes(blob)


def _context_bytes(context: str) -> bytes:
    if not isinstance(context, str):
        raise TypeError("seal context must be a string")
    # An empty context would bind the blob to nowhere, defeating the point of binding it.
    if not context:
        raise ValueError("seal context must not be empty")
    try:
        return context.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("seal context must be encodable as UTF-8") from None
