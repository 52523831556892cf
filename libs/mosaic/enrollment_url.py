"""The enrollment URL an admin of the serving gateway hands to the querying gateway.

    mosaic-enroll://HOST:PORT/v1/redeem?token=TOKEN&ca_sha256=HEX64

``HOST:PORT`` is the serving gateway's enrollment listener, ``token`` the single-use
enrollment token (43 URL-safe base64 characters, 256 random bits) and ``ca_sha256`` the
lowercase hex SHA-256 of the DER of its federation CA root, which the querying gateway
pins before it sends anything.

Parsing is strict: anything but exactly this shape is refused with an
:class:`EnrollmentURLError` that names the bad part. Neither the error nor the
``repr`` of a parsed URL ever contains the token.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

__all__ = [
    "CA_PARAM",
    "PATH",
    "SCHEME",
    "TOKEN_PARAM",
    "EnrollmentURL",
    "EnrollmentURLError",
    "bracket_host",
    "build_enrollment_url",
    "is_host",
    "is_well_formed_token",
    "parse_enrollment_url",
]

SCHEME = "mosaic-enroll"
PATH = "/v1/redeem"
TOKEN_PARAM = "token"  # noqa: S105 - a parameter name, not a secret
CA_PARAM = "ca_sha256"
MAX_URL_LENGTH = 1024

_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_PREFIX = SCHEME + "://"


class EnrollmentURLError(ValueError):
    """An enrollment URL was refused; the message says which part is wrong, never the token."""


@dataclass(frozen=True)
class EnrollmentURL:
    """A parsed enrollment URL. ``host`` is bare (no brackets for IPv6)."""

    host: str
    port: int
    token: str = field(repr=False)
    ca_sha256: str

    @property
    def endpoint(self) -> str:
        """``host:port`` to dial (IPv6 literals in brackets)."""
        return f"{bracket_host(self.host)}:{self.port}"

    def to_url(self) -> str:
        return build_enrollment_url(self.host, self.port, self.token, self.ca_sha256)


def is_well_formed_token(token: str) -> bool:
    """True when ``token`` has the shape of an enrollment token (not whether it is valid)."""
    return isinstance(token, str) and _TOKEN.fullmatch(token) is not None


def build_enrollment_url(host: str, port: int, token: str, ca_sha256: str) -> str:
    """The enrollment URL for the listener at ``host`` (bare, IPv6 without brackets) and
    ``port``, the token and the root fingerprint.

    Raises EnrollmentURLError if any part would not parse back.
    """
    bare, checked_port = _split_authority(f"{bracket_host(host)}:{port}")
    return (
        f"{_PREFIX}{bracket_host(bare)}:{checked_port}{PATH}"
        f"?{TOKEN_PARAM}={_check_token(token)}&{CA_PARAM}={_check_fingerprint(ca_sha256)}"
    )


def parse_enrollment_url(text: str) -> EnrollmentURL:
    """Parse and validate an enrollment URL; surrounding whitespace is ignored."""
    if not isinstance(text, str):
        raise EnrollmentURLError("the enrollment URL must be text")
    url = text.strip()
    if not url:
        raise EnrollmentURLError("the enrollment URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise EnrollmentURLError(
            f"the enrollment URL is {len(url)} characters long; at most {MAX_URL_LENGTH}"
        )
    if any(ch.isspace() or not ch.isprintable() or not ch.isascii() for ch in url):
        raise EnrollmentURLError(
            "the enrollment URL contains spaces, line breaks or non-ASCII characters; "
            "copy it again as one line"
        )
    if not url.startswith(_PREFIX):
        scheme = url.split(":", 1)[0] if ":" in url else ""
        shown = f" {scheme!r}" if _PARAM_NAME.fullmatch(scheme) else ""
        raise EnrollmentURLError(
            f"the enrollment URL must start with {_PREFIX} (its scheme{shown} is not {SCHEME!r})"
        )
    rest = url[len(_PREFIX) :]
    if "#" in rest:
        raise EnrollmentURLError("the enrollment URL must not have a #fragment")
    if "?" not in rest:
        raise EnrollmentURLError(
            f"the enrollment URL has no query; it needs {TOKEN_PARAM}=… and {CA_PARAM}=…"
        )
    before_query, query = rest.split("?", 1)
    slash = before_query.find("/")
    authority = before_query if slash < 0 else before_query[:slash]
    path = "" if slash < 0 else before_query[slash:]
    if "@" in authority:
        raise EnrollmentURLError(
            "the enrollment URL must not carry user information (user@ before the host)"
        )
    host, port = _split_authority(authority)
    if path != PATH:
        raise EnrollmentURLError(f"the enrollment URL's path must be {PATH}")
    params = _parse_query(query)
    return EnrollmentURL(
        host=host,
        port=port,
        token=_check_token(params[TOKEN_PARAM]),
        ca_sha256=_check_fingerprint(params[CA_PARAM]),
    )


def _parse_query(query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in query.split("&") if query else []:
        name, sep, value = part.partition("=")
        if name not in (TOKEN_PARAM, CA_PARAM):
            shown = f" {name!r}" if _PARAM_NAME.fullmatch(name) else ""
            raise EnrollmentURLError(
                f"the enrollment URL has an unexpected query parameter{shown}; only "
                f"{TOKEN_PARAM} and {CA_PARAM} are allowed"
            )
        if not sep:
            raise EnrollmentURLError(f"the enrollment URL's {name} parameter has no value")
        if name in params:
            raise EnrollmentURLError(f"the enrollment URL has {name} more than once")
        params[name] = value
    for name in (TOKEN_PARAM, CA_PARAM):
        if name not in params:
            raise EnrollmentURLError(f"the enrollment URL has no {name} parameter")
    return params


def _check_token(token: str) -> str:
    if not is_well_formed_token(token):
        raise EnrollmentURLError(
            "the enrollment URL's token is malformed: it must be 43 URL-safe base64 "
            "characters (A-Z a-z 0-9 - _); copy the whole URL again"
        )
    return token


def _check_fingerprint(value: str) -> str:
    if not isinstance(value, str) or _FINGERPRINT.fullmatch(value) is None:
        raise EnrollmentURLError(
            f"the enrollment URL's {CA_PARAM} must be 64 lowercase hex characters "
            "(the SHA-256 of the serving gateway's federation CA root)"
        )
    return value


def _split_authority(authority: str) -> tuple[str, int]:
    """``host:port`` → (bare host, port); hosts are DNS names, IPv4 or [IPv6] literals."""
    if not authority:
        raise EnrollmentURLError("the enrollment URL has no host:port")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise EnrollmentURLError("the enrollment URL's IPv6 host has no closing ']'")
        host, rest = authority[1:end], authority[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise EnrollmentURLError(
                "the enrollment URL's host in [brackets] is not an IPv6 address"
            ) from None
        if not rest.startswith(":"):
            raise EnrollmentURLError("the enrollment URL has no port after its host")
        port_text = rest[1:]
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            raise EnrollmentURLError("the enrollment URL has no port after its host")
        if not _is_host_name(host):
            raise EnrollmentURLError("the enrollment URL's host is not a DNS name or an IP address")
    if _PORT.fullmatch(port_text) is None or not 1 <= int(port_text) <= 65535:
        raise EnrollmentURLError("the enrollment URL's port must be a number from 1 to 65535")
    return host, int(port_text)


def _is_host_name(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    return all(_HOST_LABEL.fullmatch(label) for label in host.split("."))


def is_host(host: str) -> bool:
    """True for a DNS name, an IPv4 address or a bare (unbracketed) IPv6 address; not for
    one with a zone (fe80::1%eth0), which names an interface of this host only."""
    if ":" not in host:
        return _is_host_name(host)
    if "%" in host:
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def bracket_host(host: str) -> str:
    """``host`` as it goes before ``:port``: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
