"""Sealing at rest: every rule of DESIGN.md "Sealing secrets at rest", attacked through the API."""

from __future__ import annotations

import base64
import os
import random
import secrets
import traceback

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mosaic.sealing import (
    SEAL_MALFORMED,
    SEAL_TAMPERED,
    SEAL_UNKNOWN_KEY,
    SEAL_UNSUPPORTED_VERSION,
    Sealer,
    SealError,
    WeakSecretError,
    check_secret_strength,
    generate_secret,
    parse_secret,
    seal_context,
)

CONTEXT = seal_context("peer_credentials", "client_key", "7b0e5c2a-0d5e-4f7c-9d55-3f2a1c9e8b10")
PLAINTEXT = b"-----BEGIN PRIVATE KEY----- not really"
VERSION_LEN, KEY_ID_LEN, NONCE_LEN, TAG_LEN = 1, 8, 12, 16


def new_secret() -> bytes:
    return parse_secret(generate_secret())


# Hypothesis forbids function-scoped fixtures in @given tests, so those share one secret.
FIXED_SECRET = new_secret()


@pytest.fixture
def secret() -> bytes:
    return new_secret()


@pytest.fixture
def sealer(secret: bytes) -> Sealer:
    return Sealer(secret)


# --- round trip and blob layout ------------------------------------------------------------


def test_round_trip(sealer: Sealer) -> None:
    assert sealer.open(sealer.seal(PLAINTEXT, CONTEXT), CONTEXT) == PLAINTEXT


def test_empty_plaintext_round_trips(sealer: Sealer) -> None:
    assert sealer.open(sealer.seal(b"", CONTEXT), CONTEXT) == b""


def test_blob_layout_is_version_key_id_nonce_ciphertext_tag(sealer: Sealer) -> None:
    blob = sealer.seal(PLAINTEXT, CONTEXT)
    assert blob[0] == 0x01
    assert blob[1 : 1 + KEY_ID_LEN].hex() == sealer.key_id
    assert len(blob) == VERSION_LEN + KEY_ID_LEN + NONCE_LEN + len(PLAINTEXT) + TAG_LEN
    assert PLAINTEXT not in blob


def test_key_id_is_not_the_key_or_the_secret(secret: bytes, sealer: Sealer) -> None:
    key_id = bytes.fromhex(sealer.key_id)
    assert len(key_id) == KEY_ID_LEN
    assert key_id not in secret


def test_key_id_is_stable_for_a_secret(secret: bytes) -> None:
    assert Sealer(secret).key_id == Sealer(secret).key_id
    assert Sealer(secret).key_id != Sealer(new_secret()).key_id


def test_fresh_nonce_every_time(sealer: Sealer) -> None:
    blobs = [sealer.seal(PLAINTEXT, CONTEXT) for _ in range(50)]
    nonces = {
        blob[VERSION_LEN + KEY_ID_LEN : VERSION_LEN + KEY_ID_LEN + NONCE_LEN] for blob in blobs
    }
    assert len(set(blobs)) == len(blobs)
    assert len(nonces) == len(blobs)


def test_accepts_bytes_like_blobs_from_drivers(sealer: Sealer) -> None:
    blob = sealer.seal(PLAINTEXT, CONTEXT)
    assert sealer.open(memoryview(blob), CONTEXT) == PLAINTEXT
    assert sealer.open(bytearray(blob), CONTEXT) == PLAINTEXT


# --- tampering -----------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipping_any_byte_fails(sealer: Sealer, mask: int) -> None:
    blob = sealer.seal(b"tiny", CONTEXT)
    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= mask
        with pytest.raises(SealError) as caught:
            sealer.open(bytes(tampered), CONTEXT)
        if position == 0:
            assert caught.value.reason == SEAL_UNSUPPORTED_VERSION
        elif position <= KEY_ID_LEN:
            assert caught.value.reason == SEAL_UNKNOWN_KEY
        else:
            assert caught.value.reason == SEAL_TAMPERED


def test_key_id_is_authenticated_even_when_it_names_the_other_key() -> None:
    """Relabelling a blob with the previous key's id must not open (the id is in the AAD)."""
    old, new = new_secret(), new_secret()
    rotating = Sealer(new, previous=old)
    blob = rotating.seal(PLAINTEXT, CONTEXT)
    relabelled = blob[:1] + bytes.fromhex(Sealer(old).key_id) + blob[1 + KEY_ID_LEN :]
    with pytest.raises(SealError) as caught:
        rotating.open(relabelled, CONTEXT)
    assert caught.value.reason == SEAL_TAMPERED


def test_appended_or_removed_bytes_fail(sealer: Sealer) -> None:
    blob = sealer.seal(PLAINTEXT, CONTEXT)
    for tampered in (blob + b"\x00", blob[:-1], blob[:1] + blob[2:]):
        with pytest.raises(SealError):
            sealer.open(tampered, CONTEXT)


@pytest.mark.parametrize(
    "elsewhere",
    [
        seal_context("peer_credentials", "client_key", "00000000-0000-4000-8000-000000000000"),
        seal_context("peer_credentials", "ca_key", "7b0e5c2a-0d5e-4f7c-9d55-3f2a1c9e8b10"),
        seal_context("issued_certificates", "client_key", "7b0e5c2a-0d5e-4f7c-9d55-3f2a1c9e8b10"),
        CONTEXT + " ",
    ],
    ids=["other-row", "other-column", "other-table", "near-miss"],
)
def test_blob_moved_elsewhere_fails(sealer: Sealer, elsewhere: str) -> None:
    blob = sealer.seal(PLAINTEXT, CONTEXT)
    with pytest.raises(SealError) as caught:
        sealer.open(blob, elsewhere)
    assert caught.value.reason == SEAL_TAMPERED


def test_wrong_secret_fails(sealer: Sealer) -> None:
    blob = sealer.seal(PLAINTEXT, CONTEXT)
    with pytest.raises(SealError) as caught:
        Sealer(new_secret()).open(blob, CONTEXT)
    assert caught.value.reason == SEAL_UNKNOWN_KEY
    # Names the secret the blob needs, so an operator can tell which one to put back.
    assert caught.value.key_id == sealer.key_id


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x01", b"\x01" + b"\x00" * 35, b"garbage", bytes(range(256)), b"\x02" + b"\x00" * 64],
    ids=["empty", "version-only", "one-short", "garbage", "long-garbage", "future-version"],
)
def test_malformed_blobs_raise_seal_error(sealer: Sealer, blob: bytes) -> None:
    with pytest.raises(SealError):
        sealer.open(blob, CONTEXT)


def test_every_truncation_raises_seal_error(sealer: Sealer) -> None:
    blob = sealer.seal(PLAINTEXT, CONTEXT)
    for length in range(len(blob)):
        with pytest.raises(SealError) as caught:
            sealer.open(blob[:length], CONTEXT)
        if length < VERSION_LEN + KEY_ID_LEN + NONCE_LEN + TAG_LEN:
            assert caught.value.reason == SEAL_MALFORMED


@settings(max_examples=300)
@given(garbage=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_seal_error(garbage: bytes) -> None:
    sealer = Sealer(FIXED_SECRET)
    with pytest.raises(SealError):
        sealer.open(garbage, CONTEXT)
    if len(garbage) >= VERSION_LEN + KEY_ID_LEN + NONCE_LEN + TAG_LEN:
        # Same garbage, but naming our key: it must still fail, on authentication.
        forged = b"\x01" + bytes.fromhex(sealer.key_id) + garbage[VERSION_LEN + KEY_ID_LEN :]
        with pytest.raises(SealError) as caught:
            sealer.open(forged, CONTEXT)
        assert caught.value.reason == SEAL_TAMPERED


def test_non_bytes_blob_is_a_type_error(sealer: Sealer) -> None:
    with pytest.raises(TypeError):
        sealer.open("AQID", CONTEXT)  # type: ignore[arg-type]


# --- context -------------------------------------------------------------------------------


def test_seal_context_is_canonical() -> None:
    assert seal_context("t", "c", "r") == "t/c/r"


@pytest.mark.parametrize(
    ("table", "column", "row_id"),
    [
        ("a/b", "c", "r"),
        ("t", "c/x", "r"),
        ("t", "c", "r/1"),
        ("", "c", "r"),
        ("t", "", "r"),
        ("t", "c", ""),
    ],
)
def test_seal_context_rejects_ambiguous_components(table: str, column: str, row_id: str) -> None:
    with pytest.raises(ValueError):
        seal_context(table, column, row_id)


def test_empty_context_is_refused(sealer: Sealer) -> None:
    with pytest.raises(ValueError):
        sealer.seal(PLAINTEXT, "")


# --- rotation ------------------------------------------------------------------------------


def test_rotation_opens_old_blobs_and_reseals_them_under_the_new_key() -> None:
    old, new = new_secret(), new_secret()
    old_blob = Sealer(old).seal(PLAINTEXT, CONTEXT)
    rotating = Sealer(new, previous=old)

    assert rotating.open(old_blob, CONTEXT) == PLAINTEXT
    assert rotating.needs_reseal(old_blob)

    resealed = rotating.reseal(old_blob, CONTEXT)
    assert not rotating.needs_reseal(resealed)
    assert resealed[1 : 1 + KEY_ID_LEN].hex() == Sealer(new).key_id == rotating.key_id
    assert Sealer(new).open(resealed, CONTEXT) == PLAINTEXT
    with pytest.raises(SealError) as caught:
        Sealer(old).open(resealed, CONTEXT)
    assert caught.value.reason == SEAL_UNKNOWN_KEY


def test_new_blobs_use_the_current_key_during_rotation() -> None:
    old, new = new_secret(), new_secret()
    blob = Sealer(new, previous=old).seal(PLAINTEXT, CONTEXT)
    assert Sealer(new).open(blob, CONTEXT) == PLAINTEXT
    assert not Sealer(new, previous=old).needs_reseal(blob)


def test_reseal_keeps_the_context_binding() -> None:
    old, new = new_secret(), new_secret()
    old_blob = Sealer(old).seal(PLAINTEXT, CONTEXT)
    rotating = Sealer(new, previous=old)
    with pytest.raises(SealError):
        rotating.reseal(old_blob, seal_context("other", "column", "row"))
    resealed = rotating.reseal(old_blob, CONTEXT)
    with pytest.raises(SealError):
        rotating.open(resealed, seal_context("other", "column", "row"))


def test_after_rotation_completes_the_old_key_is_unknown() -> None:
    old, new = new_secret(), new_secret()
    old_blob = Sealer(old).seal(PLAINTEXT, CONTEXT)
    with pytest.raises(SealError) as caught:
        Sealer(new).needs_reseal(old_blob)
    assert caught.value.reason == SEAL_UNKNOWN_KEY


def test_needs_reseal_refuses_malformed_blobs(sealer: Sealer) -> None:
    with pytest.raises(SealError):
        sealer.needs_reseal(b"\x01")


def test_previous_equal_to_current_is_ignored(secret: bytes) -> None:
    sealer = Sealer(secret, previous=secret)
    assert not sealer.needs_reseal(sealer.seal(PLAINTEXT, CONTEXT))


# --- secret strength -----------------------------------------------------------------------


def _urandom_base64() -> str:
    return base64.b64encode(os.urandom(32)).decode()


STRONG_GENERATORS = {
    "token_urlsafe(32)": lambda: secrets.token_urlsafe(32),
    "token_urlsafe(48)": lambda: secrets.token_urlsafe(48),
    "token_hex(32)": lambda: secrets.token_hex(32),
    "TOKEN_HEX(32)": lambda: secrets.token_hex(32).upper(),
    "base64(urandom(32))": _urandom_base64,
    "base64(urandom(32)) unpadded": lambda: _urandom_base64().rstrip("="),
    "base64url(urandom(32)) padded": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
    "generate_secret()": generate_secret,
}


@pytest.mark.parametrize("generator", list(STRONG_GENERATORS), ids=list(STRONG_GENERATORS))
def test_strong_secrets_are_accepted(generator: str) -> None:
    # Many draws: the pattern checks must not refuse real random secrets by bad luck.
    for _ in range(500):
        raw = parse_secret(STRONG_GENERATORS[generator]())
        assert len(raw) >= 32
        Sealer(raw)


def test_parse_secret_decodes_each_encoding_to_the_same_bytes() -> None:
    raw = os.urandom(32)
    encodings = [
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        f"  {raw.hex()}\n",
    ]
    for text in encodings:
        try:
            assert parse_secret(text) == raw
        except WeakSecretError:  # about 2^-35 per encoding; draw again rather than flake
            pytest.skip("random secret tripped a pattern check")


def test_raw_random_bytes_are_accepted() -> None:
    for _ in range(500):
        check_secret_strength(os.urandom(32))


WEAK_TEXTS = {
    "empty": "",
    "whitespace": "   \n",
    "one char": "a" * 64,
    "one digit": "0" * 100,
    "short pattern": "abcd" * 16,
    "repeated word": "password" * 8,
    "repeated hex block": "0123456789abcdef" * 4,
    "repeated random block": "Zq3-xW9_" * 8,
    "32-char ascii password": "Tr0ub4dor&3-horse-Battery-Stap1e",
    "lowercase passphrase": "correcthorsebatterystaplecorrecthorsebattery",
    "alphabet": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
    "digits counting": "".join(str(i % 10) for i in range(120)),
    "short token": secrets.token_urlsafe(16),
    "short hex": secrets.token_hex(16),
    "long but tiny alphabet": "01" * 200,
    # Only four symbols, at random: no repeats or runs, caught by the distinct-symbol rule.
    "four symbols at random": "".join(random.Random(7).choices("0123", k=100)),
    "random with one repeat": "q8R-" + secrets.token_urlsafe(40)[:20] + "q8R-kx7PzT" * 2,
}


@pytest.mark.parametrize("text", list(WEAK_TEXTS.values()), ids=list(WEAK_TEXTS))
def test_weak_secrets_are_refused(text: str) -> None:
    with pytest.raises(WeakSecretError) as caught:
        parse_secret(text)
    assert "token_urlsafe" in caught.value.remediation


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00" * 32,
        os.urandom(31),
        b"x" * 64,
        bytes(range(32)),
        b"Tr0ub4dor&3-horse-Battery-Stap1e",
    ],
    ids=["empty", "zeros", "31-random-bytes", "one-byte", "counting", "ascii-password"],
)
def test_weak_raw_secrets_are_refused_by_sealer(raw: bytes) -> None:
    with pytest.raises(WeakSecretError):
        Sealer(raw)


def test_weak_previous_secret_is_refused(secret: bytes) -> None:
    with pytest.raises(WeakSecretError):
        Sealer(secret, previous=b"\x00" * 32)


def test_remediation_names_where_to_write_the_secret() -> None:
    with pytest.raises(WeakSecretError) as caught:
        parse_secret("hunter2", location="/srv/mosaic/secrets/seal.key")
    assert "/srv/mosaic/secrets/seal.key" in caught.value.remediation


def test_sealer_wants_bytes() -> None:
    with pytest.raises(TypeError):
        Sealer(generate_secret())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Sealer(new_secret(), previous=generate_secret())  # type: ignore[arg-type]


def test_parse_secret_wants_text() -> None:
    with pytest.raises(TypeError):
        parse_secret(os.urandom(32))  # type: ignore[arg-type]


# --- nothing secret leaks ------------------------------------------------------------------


def _everything_printed(exc: BaseException) -> str:
    return "\n".join(
        [str(exc), repr(exc), *traceback.format_exception_only(type(exc), exc)]
        + [str(getattr(exc, name, "")) for name in ("remediation", "reason", "message")]
    )


def test_weak_secret_error_does_not_show_the_secret() -> None:
    weak = "password" * 8
    with pytest.raises(WeakSecretError) as caught:
        parse_secret(weak)
    printed = _everything_printed(caught.value)
    assert "password" not in printed
    assert caught.value.__cause__ is None


def test_weak_raw_secret_error_does_not_show_the_secret() -> None:
    weak = b"\xde\xad\xbe\xef" * 8
    with pytest.raises(WeakSecretError) as caught:
        Sealer(weak)
    printed = _everything_printed(caught.value)
    for form in ("deadbeef", "DEADBEEF", base64.b64encode(weak).decode()[:8], repr(weak)[2:12]):
        assert form not in printed


def test_seal_errors_show_neither_secret_plaintext_nor_blob(secret: bytes, sealer: Sealer) -> None:
    plaintext = b"top-secret-credential-value"
    blob = sealer.seal(plaintext, CONTEXT)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    failures: list[SealError] = []
    for bad, context in ((tampered, CONTEXT), (blob, "x/y/z"), (blob[:5], CONTEXT)):
        with pytest.raises(SealError) as caught:
            sealer.open(bad, context)
        failures.append(caught.value)
        assert caught.value.__cause__ is None
        # A chained exception would be printed with the error; nothing may ride along.
        assert caught.value.__context__ is None or caught.value.__suppress_context__
    for failure in failures:
        printed = _everything_printed(failure)
        assert "sealed value cannot be opened" in str(failure)
        for leak in (
            secret.hex(),
            base64.b64encode(secret).decode(),
            plaintext.decode(),
            blob.hex(),
            blob.hex()[-16:],
            repr(blob)[2:20],
        ):
            assert leak not in printed


def test_sealer_repr_shows_only_key_ids(secret: bytes) -> None:
    previous = new_secret()
    sealer = Sealer(secret, previous=previous)
    shown = repr(sealer) + str(sealer)
    assert Sealer(secret).key_id in shown
    for raw in (secret, previous):
        for form in (
            raw.hex(),
            base64.b64encode(raw).decode(),
            base64.urlsafe_b64encode(raw).decode(),
        ):
            assert form[:16] not in shown


def test_sealer_does_not_keep_the_secret(secret: bytes) -> None:
    """Looks inside: the only way to check what an object retains."""
    sealer = Sealer(secret, previous=new_secret())
    assert not hasattr(sealer, "__dict__")
    stored: list[object] = []
    holders: tuple[object, ...] = (sealer, sealer._current, sealer._previous)
    for holder in holders:
        assert holder is not None
        stored.extend(getattr(holder, slot) for slot in vars(type(holder))["__slots__"])
    assert not any(isinstance(value, bytes) and value in secret for value in stored)


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=300)
@given(plaintext=st.binary(max_size=2048), context=st.text(min_size=1, max_size=200))
def test_open_inverts_seal(plaintext: bytes, context: str) -> None:
    sealer = Sealer(FIXED_SECRET)
    assert sealer.open(sealer.seal(plaintext, context), context) == plaintext


@settings(max_examples=200)
@given(
    plaintext=st.binary(max_size=256),
    context=st.text(min_size=1, max_size=50),
    other=st.text(min_size=1, max_size=50),
)
def test_open_under_any_other_context_fails(plaintext: bytes, context: str, other: str) -> None:
    sealer = Sealer(FIXED_SECRET)
    blob = sealer.seal(plaintext, context)
    if other.encode() == context.encode():
        return
    with pytest.raises(SealError):
        sealer.open(blob, other)


def test_derived_purpose_keys_are_independent_and_follow_the_secret() -> None:
    import secrets as _secrets

    from mosaic.sealing import Sealer, parse_secret

    one = Sealer(parse_secret(_secrets.token_urlsafe(32)))
    two = Sealer(parse_secret(_secrets.token_urlsafe(32)))
    assert one.derive_key("page-token") == one.derive_key("page-token")
    assert one.derive_key("page-token") != one.derive_key("other")
    assert one.derive_key("page-token") != two.derive_key("page-token")
    assert len(one.derive_key("page-token")) == 32
