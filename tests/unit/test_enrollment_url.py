"""The enrollment URL: what builds parses back, and every malformed variant is refused
with an error that names the bad part and never shows the token."""

from __future__ import annotations

import secrets

import pytest

from mosaic.enrollment_url import (
    EnrollmentURL,
    EnrollmentURLError,
    build_enrollment_url,
    is_well_formed_token,
    parse_enrollment_url,
)

TOKEN = secrets.token_urlsafe(32)
FP = secrets.token_hex(32)
COLON_FP = ":".join(FP[i : i + 2] for i in range(0, 64, 2))
GOOD = f"mosaic-enroll://gw.example.org:7444/v1/redeem?token={TOKEN}&ca_sha256={FP}"


def test_build_parse_round_trip() -> None:
    url = build_enrollment_url("gw.example.org", 7444, TOKEN, FP)
    assert url == GOOD
    parsed = parse_enrollment_url(url)
    assert parsed == EnrollmentURL(host="gw.example.org", port=7444, token=TOKEN, ca_sha256=FP)
    assert parsed.endpoint == "gw.example.org:7444"
    assert parsed.to_url() == url


@pytest.mark.parametrize(
    ("host", "endpoint"),
    [("127.0.0.1", "127.0.0.1:1"), ("::1", "[::1]:1"), ("localhost", "localhost:1")],
)
def test_hosts_round_trip(host: str, endpoint: str) -> None:
    parsed = parse_enrollment_url(build_enrollment_url(host, 1, TOKEN, FP))
    assert (parsed.host, parsed.port, parsed.endpoint) == (host, 1, endpoint)


def test_parameter_order_and_surrounding_whitespace_do_not_matter() -> None:
    url = f"  mosaic-enroll://gw:65535/v1/redeem?ca_sha256={FP}&token={TOKEN}\n"
    parsed = parse_enrollment_url(url)
    assert (parsed.host, parsed.port, parsed.token, parsed.ca_sha256) == ("gw", 65535, TOKEN, FP)


def test_repr_hides_the_token() -> None:
    assert TOKEN not in repr(parse_enrollment_url(GOOD))


def test_token_shape() -> None:
    assert is_well_formed_token(TOKEN)
    assert not is_well_formed_token(TOKEN[:-1])
    assert not is_well_formed_token(TOKEN + "A")
    assert not is_well_formed_token(TOKEN[:-1] + "=")


BAD: dict[str, tuple[str, str]] = {
    "wrong scheme": (f"https://gw:7444/v1/redeem?token={TOKEN}&ca_sha256={FP}", "mosaic-enroll"),
    "uppercase scheme": (
        f"MOSAIC-ENROLL://gw:7444/v1/redeem?token={TOKEN}&ca_sha256={FP}",
        "scheme",
    ),
    "no scheme": (f"gw:7444/v1/redeem?token={TOKEN}&ca_sha256={FP}", "mosaic-enroll"),
    "missing token": (f"mosaic-enroll://gw:7444/v1/redeem?ca_sha256={FP}", "no token"),
    "missing fingerprint": (f"mosaic-enroll://gw:7444/v1/redeem?token={TOKEN}", "no ca_sha256"),
    "no query": ("mosaic-enroll://gw:7444/v1/redeem", "no query"),
    "extra parameter": (f"{GOOD}&next=evil", "'next'"),
    "duplicate token": (f"{GOOD}&token={TOKEN}", "more than once"),
    "empty parameter value": (
        f"mosaic-enroll://gw:7444/v1/redeem?token&ca_sha256={FP}",
        "no value",
    ),
    "missing port": (f"mosaic-enroll://gw/v1/redeem?token={TOKEN}&ca_sha256={FP}", "port"),
    "port zero": (f"mosaic-enroll://gw:0/v1/redeem?token={TOKEN}&ca_sha256={FP}", "port"),
    "port too large": (f"mosaic-enroll://gw:65536/v1/redeem?token={TOKEN}&ca_sha256={FP}", "port"),
    "port not a number": (
        f"mosaic-enroll://gw:74a4/v1/redeem?token={TOKEN}&ca_sha256={FP}",
        "port",
    ),
    "negative port": (f"mosaic-enroll://gw:-1/v1/redeem?token={TOKEN}&ca_sha256={FP}", "port"),
    "no host": (f"mosaic-enroll://:7444/v1/redeem?token={TOKEN}&ca_sha256={FP}", "host"),
    "bad host": (f"mosaic-enroll://g_w:7444/v1/redeem?token={TOKEN}&ca_sha256={FP}", "host"),
    "bad ipv6": (f"mosaic-enroll://[zz::1]:7444/v1/redeem?token={TOKEN}&ca_sha256={FP}", "IPv6"),
    "userinfo": (f"mosaic-enroll://me@gw:7444/v1/redeem?token={TOKEN}&ca_sha256={FP}", "user"),
    "token as userinfo": (
        f"mosaic-enroll://{TOKEN}@gw:7444/v1/redeem?token={TOKEN}&ca_sha256={FP}",
        "user",
    ),
    "wrong path": (f"mosaic-enroll://gw:7444/v2/redeem?token={TOKEN}&ca_sha256={FP}", "path"),
    "no path": (f"mosaic-enroll://gw:7444?token={TOKEN}&ca_sha256={FP}", "path"),
    "trailing slash": (f"mosaic-enroll://gw:7444/v1/redeem/?token={TOKEN}&ca_sha256={FP}", "path"),
    "fragment": (f"{GOOD}#frag", "fragment"),
    "uppercase fingerprint": (
        f"mosaic-enroll://gw:7444/v1/redeem?token={TOKEN}&ca_sha256={FP.upper()}",
        "lowercase hex",
    ),
    "short fingerprint": (
        f"mosaic-enroll://gw:7444/v1/redeem?token={TOKEN}&ca_sha256={FP[:-1]}",
        "64",
    ),
    "fingerprint with colons": (
        f"mosaic-enroll://gw:7444/v1/redeem?token={TOKEN}&ca_sha256={COLON_FP}",
        "64",
    ),
    "token with bad characters": (
        f"mosaic-enroll://gw:7444/v1/redeem?token={TOKEN[:-1]}+&ca_sha256={FP}",
        "token is malformed",
    ),
    "token percent-encoded": (
        f"mosaic-enroll://gw:7444/v1/redeem?token={TOKEN[:-3]}%41&ca_sha256={FP}",
        "token is malformed",
    ),
    "short token": (
        f"mosaic-enroll://gw:7444/v1/redeem?token={TOKEN[:-1]}&ca_sha256={FP}",
        "token is malformed",
    ),
    "long token": (
        f"mosaic-enroll://gw:7444/v1/redeem?token={TOKEN}A&ca_sha256={FP}",
        "token is malformed",
    ),
    "space inside": (f"mosaic-enroll://gw:7444/v1/redeem?token={TOKEN} &ca_sha256={FP}", "spaces"),
    "line break inside": (
        f"mosaic-enroll://gw:7444/v1/\nredeem?token={TOKEN}&ca_sha256={FP}",
        "line",
    ),
    "non-ascii": (f"mosaic-enroll://gẅ:7444/v1/redeem?token={TOKEN}&ca_sha256={FP}", "ASCII"),
    "empty": ("", "empty"),
    "too long": (GOOD + "&" + "x" * 2000, "long"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_urls_are_refused_without_echoing_the_token(case: str) -> None:
    url, expected = BAD[case]
    with pytest.raises(EnrollmentURLError) as err:
        parse_enrollment_url(url)
    message = str(err.value)
    assert expected in message, message
    assert TOKEN not in message
    # Not even a recognisable part of it.
    assert TOKEN[8:24] not in message


@pytest.mark.parametrize(
    ("host", "port", "token", "fingerprint"),
    [
        ("gw", 0, TOKEN, FP),
        ("gw", 7444, TOKEN[:-1], FP),
        ("gw", 7444, TOKEN, FP.upper()),
        ("g w", 7444, TOKEN, FP),
    ],
    # Stable ids: the token is random, and test workers must collect the same names.
    ids=["port 0", "short token", "uppercase fingerprint", "space in host"],
)
def test_build_refuses_what_would_not_parse(
    host: str, port: int, token: str, fingerprint: str
) -> None:
    with pytest.raises(EnrollmentURLError) as err:
        build_enrollment_url(host, port, token, fingerprint)
    assert TOKEN not in str(err.value)
