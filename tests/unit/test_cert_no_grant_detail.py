"""A client certificate from the right CA whose grant extensions do not read: the peer
hears only CERT_NO_GRANT, as ever; B's log (WARNING) and the audit row's detail say which
certificate (its serial) and why, so an operator can tell a template change from a
stranger. Driven through the whole gate (federation_fakes) with real certificates."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from federation_gateway import federation
from mosaic.errors import ServiceError
from mosaic.federation.v1 import gateway_pb2
from mosaic.logs import JsonFormatter
from mosaic.x509ext import GRANT_ID_OID, grant_extensions
from tests.support.federation_fakes import (
    GRANT_ID,
    SUBJECT,
    PeerContext,
    RecordingAudit,
    gated_servicer,
)

SERIAL = 0x5EED_CAFE_0123


def _pem(extensions: list[x509.ExtensionType]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer-a")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(SERIAL)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


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


class _Lines(logging.Handler):
    """B's log as the service writes it: JSON lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter("federation-gateway"))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def lines() -> object:
    handler = _Lines()
    logger = logging.getLogger("mosaic.gateway.federation")
    logger.addHandler(handler)
    federation.certificate_identity.cache_clear()
    federation._unusable_logged.clear()
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize(
    ("extensions", "problem"),
    [
        (_printable_string_grant, "not a DER UTF8String"),
        (_unparseable_key_usage, "certificate extensions do not parse: error parsing asn1"),
    ],
    ids=["grant-id-printable-string", "malformed-key-usage"],
)
async def test_the_operator_learns_why_and_the_peer_does_not(
    extensions: object, problem: str, lines: _Lines
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

    [warning] = [line for line in lines.lines if line["level"] == "warning"]
    assert warning["reason"] == "CERT_NO_GRANT"
    assert warning["serial"] == serial
    assert problem in str(warning["problem"])


async def test_a_peer_retrying_with_it_is_logged_once_and_audited_every_time(
    lines: _Lines,
) -> None:
    audit = RecordingAudit()
    servicer = gated_servicer(lambda method, request: None, audit=audit)
    context = PeerContext(_pem(_printable_string_grant()))
    for _ in range(20):
        with pytest.raises(ServiceError):
            await servicer.Capabilities(gateway_pb2.CapabilitiesRequest(), context)
    assert len([line for line in lines.lines if line["level"] == "warning"]) == 1
    assert len(audit.rows) == 20 and all(row.detail for row in audit.rows)


async def test_a_good_certificate_is_still_read() -> None:
    federation.certificate_identity.cache_clear()
    identity = federation.certificate_identity(_pem(list(grant_extensions(GRANT_ID, SUBJECT))))
    assert isinstance(identity, federation.CertIdentity)
    assert identity.grant_uuid == uuid.UUID(GRANT_ID) and identity.serial == format(SERIAL, "x")
