"""A client certificate from the right CA whose grant extensions do not read: the peer
hears only CERT_NO_GRANT, as ever; B's log (WARNING) and the audit row's detail say which
certificate (its serial) and why, so an operator can tell a template change from a
stranger. Driven through the whole gate (federation_fakes) with real certificates."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from federation_gateway import federation
from mosaic.errors import ServiceError
from mosaic.federation.v1 import gateway_pb2
from mosaic.x509ext import GRANT_ID_OID, grant_extensions
from tests.support.federation_fakes import (
    GRANT_ID,
    SUBJECT,
    PeerContext,
    RecordingAudit,
    gated_servicer,
)
from tests.support.logs import JsonLines, captured
from tests.support.pki import self_signed_pem

SERIAL = 0x5EED_CAFE_0123


def _pem(extensions: list[x509.ExtensionType]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return self_signed_pem(key, "peer-a", serial=SERIAL, extensions=extensions).encode()


def _printable_string_grant() -> list[x509.ExtensionType]:
    """The grant id as a PrintableString (0x13) instead of a UTF8String: a template change."""
    good = grant_extensions(GRANT_ID, SUBJECT)
    return [x509.UnrecognizedExtension(GRANT_ID_OID, b"\x13\x24" + GRANT_ID.encode()), good[1]]


def _unparseable_key_usage() -> list[x509.ExtensionType]:
    """Valid grant extensions, and a keyUsage cryptography cannot parse (a NULL)."""
    return [
        *grant_extensions(GRANT_ID, SUBJECT),
        x509.UnrecognizedExtension(ExtensionOID.KEY_USAGE, b"\x05\x00"),
    ]


@pytest.fixture
def lines() -> Iterator[JsonLines]:
    federation.certificate_identity.cache_clear()
    federation._unusable_logged.clear()
    with captured("mosaic.gateway.federation") as handler:
        yield handler


@pytest.mark.parametrize(
    ("extensions", "problem"),
    [
        (_printable_string_grant, "not a DER UTF8String"),
        (_unparseable_key_usage, "certificate extensions do not parse: error parsing asn1"),
    ],
    ids=["grant-id-printable-string", "malformed-key-usage"],
)
async def test_the_operator_learns_why_and_the_peer_does_not(
    extensions: object, problem: str, lines: JsonLines
) -> None:
    audit = RecordingAudit()
    servicer = gated_servicer(lambda method, request: None, audit=audit)
    context = PeerContext(_pem(extensions()))  # type: ignore[operator]
    with pytest.raises(ServiceError) as info:
        await servicer.Capabilities(gateway_pb2.CapabilitiesRequest(), context)

    # The peer's answer is what it always was: nothing of the serial or the problem.
    refusal = info.value
    assert refusal.code == grpc.StatusCode.UNAUTHENTICATED
    assert refusal.reason == "CERT_NO_GRANT"
    assert refusal.message == "the client certificate carries no valid grant"
    assert "asn1" not in str(refusal.to_status()) and "5eedcafe" not in str(refusal.to_status())

    serial = format(SERIAL, "x")
    [row] = audit.rows
    assert row.reason == "CERT_NO_GRANT" and row.outcome == "denied"
    assert row.detail.startswith(f"certificate serial {serial}: ")
    assert problem in row.detail

    [warning] = lines.at("warning")
    assert warning["reason"] == "CERT_NO_GRANT"
    assert warning["serial"] == serial
    assert problem in str(warning["problem"])


async def test_a_peer_retrying_with_it_is_logged_once_and_audited_every_time(
    lines: JsonLines,
) -> None:
    audit = RecordingAudit()
    servicer = gated_servicer(lambda method, request: None, audit=audit)
    context = PeerContext(_pem(_printable_string_grant()))
    for _ in range(20):
        with pytest.raises(ServiceError):
            await servicer.Capabilities(gateway_pb2.CapabilitiesRequest(), context)
    assert len(lines.at("warning")) == 1
    assert len(audit.rows) == 20 and all(row.detail for row in audit.rows)


async def test_a_good_certificate_is_still_read() -> None:
    federation.certificate_identity.cache_clear()
    identity = federation.certificate_identity(_pem(list(grant_extensions(GRANT_ID, SUBJECT))))
    assert isinstance(identity, federation.CertIdentity)
    assert identity.grant_uuid == uuid.UUID(GRANT_ID) and identity.serial == format(SERIAL, "x")
