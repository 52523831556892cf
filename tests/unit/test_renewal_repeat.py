"""RenewCertificate presented with a certificate the grant's current one replaced (flow 6,
a lost answer repeated): the whole gate with fake grants-service and ca-service, so the
moments a real one never holds open (a revoke between the gate and the answer) can be
forced.

Only a CSR proving possession of the current certificate's key gets that certificate
again; anything else gets exactly the refusal the gate gave before: never a rate limit
(neither the grant's query limit nor its renewal limit is spent) and nothing that tells
the grant's state."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from federation_gateway.federation import RENEW_REPEAT_WINDOW, FederationServicer
from mosaic.errors import ServiceError, failed_precondition
from mosaic.federation.v1 import ca_pb2, gateway_pb2, grants_pb2
from mosaic.pki import spki_der
from mosaic.repeats import served_certificate
from mosaic.rpc.interceptors import MalformedRequest
from mosaic.x509ext import grant_extensions
from tests.support.federation_fakes import (
    GRANT_ID,
    SUBJECT,
    gated_servicer,
    grant_reply,
    known_identity,
)
from tests.support.pki import csr_pem as _csr

OLD = "1ab"  # the certificate A still holds
CURRENT = "2cd"  # the one B made current, whose answer A lost
_CA = ec.generate_private_key(ec.SECP256R1())


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _certificate(
    public_key: Any,
    serial: str,
    age: dt.timedelta = dt.timedelta(),
    *,
    grant_id: str = GRANT_ID,
    subject: str = SUBJECT,
) -> str:
    """As B's CA issues it for the grant: its two extensions name the grant and SUBJECT."""
    start = dt.datetime.now(dt.UTC) - age
    builder = x509.CertificateBuilder()
    for extension in grant_extensions(grant_id, subject):
        builder = builder.add_extension(extension, critical=False)
    cert = (
        builder.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
        .public_key(public_key)
        .serial_number(int(serial, 16))
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=1))
        .sign(_CA, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class B:
    """grants-service and ca-service as B's gate sees them."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, *, serial: str = CURRENT) -> None:
        self.serial = serial
        self.cert_pem = _certificate(key.public_key(), serial)
        self.grant_status = grants_pb2.GRANT_STATUS_ACTIVE
        self.peer_state = grants_pb2.PEER_STATE_ACTIVE
        self.peer_serial: str | None = None  # the peer row's latest, if not this grant's
        self.peer_cert_pem: str | None = None  # ditto; None: the grant's certificate
        self.stores_certificates = True  # False: a grants-service from before grants_0003
        self.issued: list[str] = []
        self.revoked: list[str] = []

    def reply(self, *, with_certificate: bool = False) -> grants_pb2.GetGrantResponse:
        return grant_reply(
            cert_serial=self.serial,
            status=self.grant_status,
            peer_state=self.peer_state,
            peer_cert_serial=self.peer_serial,
            peer_cert_pem=self.cert_pem if self.peer_cert_pem is None else self.peer_cert_pem,
            cert_pem=self.cert_pem if with_certificate and self.stores_certificates else "",
        )

    async def __call__(self, method: str, request: Any) -> Any:
        if method == "GetGrant":
            return self.reply(with_certificate=request.with_certificate)
        if method == "GetTrustBundle":
            return ca_pb2.GetTrustBundleResponse(intermediates_pem=["INTERMEDIATE"])
        if method == "IssueCertificate":
            serial = f"{0x500 + len(self.issued) + 1:x}"
            self.issued.append(serial)
            key = x509.load_pem_x509_csr(request.csr_pem.encode()).public_key()
            return ca_pb2.IssueCertificateResponse(
                certificate_pem=_certificate(key, serial), serial=serial
            )
        if method == "RotatePeerCertificate":
            return await self.rotate(request)
        if method == "RevokeCertificate":
            self.revoked.append(request.serial)
            return ca_pb2.RevokeCertificateResponse()
        raise AssertionError(method)

    async def rotate(self, request: Any) -> Any:
        """Conditional, as grants-service's: only from the expected current serial."""
        if request.expected_serial != self.serial:
            status = failed_precondition("CERT_NOT_CURRENT", "not current").to_status()
            raise grpc.aio.AioRpcError(
                status.code,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(*status.trailing_metadata),
                status.details,
            )
        self.serial, self.cert_pem = request.cert_serial, request.cert_pem
        return grants_pb2.RotatePeerCertificateResponse()


class Audit:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str | None]] = []

    async def record(self, row: Any) -> None:
        self.rows.append((row.status, row.outcome, row.reason))

    def record_soon(self, row: Any) -> None:
        self.rows.append((row.status, row.outcome, row.reason))


class Peer:
    """What B's listener verified: a client certificate with this serial for the grant."""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [b"verified"]}

    def peer(self) -> str:
        return "ipv4:192.0.2.7:50000"


def _servicer(
    b: B, *, revoked: tuple[str, ...] = (OLD,), query_limit: tuple[float, int] = (100.0, 100)
) -> tuple[FederationServicer, Audit]:
    audit = Audit()
    servicer = gated_servicer(
        b, audit=audit, revoked=revoked, query_limit=query_limit, renew_limit=(1 / 60, 5)
    )
    return servicer, audit


@pytest.fixture
def presenting(monkeypatch: pytest.MonkeyPatch) -> Any:
    """presenting(serial, subject=SUBJECT): the client certificate the next calls carry."""

    def present(serial: str, subject: str = SUBJECT) -> None:
        known_identity(monkeypatch, serial=serial, grant_id=GRANT_ID, subject=subject)

    return present


async def _renew(servicer: FederationServicer, csr_pem: str | MalformedRequest) -> str:
    request = (
        csr_pem
        if isinstance(csr_pem, MalformedRequest)
        else gateway_pb2.RenewCertificateRequest(csr_pem=csr_pem)
    )
    try:
        reply = await servicer.RenewCertificate(request, Peer())  # type: ignore[arg-type]
    except ServiceError as exc:
        return f"{exc.code.name} {exc.reason}"
    return f"OK {reply.serial}" + (" repeated" if reply.repeated else "")


async def _capabilities(servicer: FederationServicer) -> str:
    try:
        await servicer.Capabilities(gateway_pb2.CapabilitiesRequest(), Peer())
    except ServiceError as exc:
        return f"{exc.code.name} {exc.reason}"
    return "OK"


async def test_the_current_certificate_is_given_again_for_its_key(presenting: Any) -> None:
    key = _key()
    b = B(key)
    servicer, audit = _servicer(b)
    presenting(OLD)

    assert await _renew(servicer, _csr(key)) == f"OK {CURRENT} repeated"
    assert b.issued == [] and b.revoked == []
    assert audit.rows == [("OK", "allowed", "RENEWAL_REPEATED")]
    # Not yet in the revoked set (the revocation runs after the answer): the same.
    servicer, _ = _servicer(b, revoked=())
    assert await _renew(servicer, _csr(key)) == f"OK {CURRENT} repeated"


async def test_a_replaced_certificate_gets_only_the_gates_refusal_and_spends_no_limit(
    presenting: Any,
) -> None:
    """Whoever holds the replaced key (renewing to push a stolen key out is exactly this)
    must not lock the rightful peer out by spending the grant's limits."""
    b = B(_key())
    servicer, audit = _servicer(b, query_limit=(0.001, 3))
    presenting(OLD)
    thief = _csr(_key())

    answers = {await _renew(servicer, thief) for _ in range(8)}
    answers |= {await _renew(servicer, "not a CSR") for _ in range(3)}
    answers.add(await _renew(servicer, MalformedRequest(b"\xff")))

    assert answers == {"PERMISSION_DENIED CERT_REVOKED"}
    assert {row[2] for row in audit.rows} == {"CERT_REVOKED"}
    presenting(CURRENT)  # the rightful peer: its query and renewal limits are whole
    assert [await _capabilities(servicer) for _ in range(2)] == ["OK", "OK"]  # 2 of 3
    assert (await _renew(servicer, _csr(_key()))).startswith("OK 5")
    assert b.issued == ["501"]


@pytest.mark.parametrize(
    "change",
    [
        "grant revoked",
        "peer suspended",
        "grant expired",
        "other subject",
        "too old",
        "stored certificate not the grant's serial",
        "stored certificate of another grant",
        "stored certificate of another subject",
        "nothing stored, the peer row another grant's",
    ],
)
async def test_no_answer_again_when_the_grant_no_longer_serves_it(
    presenting: Any, change: str
) -> None:
    key = _key()
    b = B(key)
    subject = SUBJECT
    if change == "grant revoked":
        b.grant_status = grants_pb2.GRANT_STATUS_REVOKED
    elif change == "peer suspended":
        b.peer_state = grants_pb2.PEER_STATE_SUSPENDED
    elif change == "grant expired":
        b.grant_status = grants_pb2.GRANT_STATUS_EXPIRED
    elif change == "other subject":
        subject = str(uuid.uuid4())
    elif change == "too old":
        b.cert_pem = _certificate(key.public_key(), CURRENT, RENEW_REPEAT_WINDOW)
    elif change == "stored certificate not the grant's serial":
        b.cert_pem = _certificate(key.public_key(), "7e57")
    elif change == "stored certificate of another grant":
        b.cert_pem = _certificate(key.public_key(), CURRENT, grant_id=str(uuid.uuid4()))
    elif change == "stored certificate of another subject":
        b.cert_pem = _certificate(key.public_key(), CURRENT, subject=str(uuid.uuid4()))
    else:
        b.stores_certificates = False
        b.peer_serial, b.peer_cert_pem = "9f9f", _certificate(key.public_key(), "9f9f")
    servicer, _ = _servicer(b)
    presenting(OLD, subject)

    assert await _renew(servicer, _csr(key)) == "PERMISSION_DENIED CERT_REVOKED"
    assert b.issued == []


@pytest.mark.parametrize("change", ["grant revoked", "peer suspended", "renewed again"])
async def test_a_change_between_the_gate_and_the_answer_holds(presenting: Any, change: str) -> None:
    """The gate's view may be up to half a second old; the answer reads the grant afresh."""
    key = _key()
    b = B(key)
    servicer, _ = _servicer(b)
    presenting(OLD)
    await servicer._grants.get(GRANT_ID)  # the gate's cached view, from before the change
    if change == "grant revoked":
        b.grant_status = grants_pb2.GRANT_STATUS_REVOKED
    elif change == "peer suspended":
        b.peer_state = grants_pb2.PEER_STATE_SUSPENDED
    else:
        b.serial, b.cert_pem = "3ef", _certificate(_key().public_key(), "3ef")

    assert await _renew(servicer, _csr(key)) == "PERMISSION_DENIED CERT_REVOKED"


async def test_a_current_certificate_that_is_revoked_is_still_refused(presenting: Any) -> None:
    key = _key()
    b = B(key)
    servicer, _ = _servicer(b, revoked=(CURRENT,))
    presenting(CURRENT)

    assert await _renew(servicer, _csr(key)) == "PERMISSION_DENIED CERT_REVOKED"
    assert await _renew(servicer, _csr(_key())) == "PERMISSION_DENIED CERT_REVOKED"
    assert b.issued == []


async def test_a_repeat_that_meets_the_first_renewal_still_running_is_answered_next_time(
    presenting: Any,
) -> None:
    """A's repeat reaches B while its first attempt is still being recorded: the gate sees
    the old certificate as current, a second certificate is issued and loses the switch
    (and is revoked), and A is told CERT_NOT_CURRENT, which A repeats once more (see
    admin/renewal.py) and is then given the first renewal's certificate."""
    b = B(_key(), serial=OLD)
    rotate = b.rotate
    holding, release, first_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def first_rotate_held(request: Any) -> Any:
        if request.cert_serial == "501":  # the first attempt: A loses its answer meanwhile
            holding.set()
            await release.wait()
            try:
                return await rotate(request)
            finally:
                first_done.set()
        await first_done.wait()  # the repeat's rotate comes second
        return await rotate(request)

    b.rotate = first_rotate_held  # type: ignore[method-assign]
    servicer, _ = _servicer(b, revoked=())
    presenting(OLD)
    key = _key()

    first = asyncio.ensure_future(_renew(servicer, _csr(key)))
    await holding.wait()
    second = asyncio.ensure_future(_renew(servicer, _csr(key)))
    while len(b.issued) < 2:  # the repeat passed the gate and was issued a certificate
        await asyncio.sleep(0.01)
    release.set()
    assert await first == "OK 501"
    assert await second == "FAILED_PRECONDITION CERT_NOT_CURRENT"
    await servicer._unfinished.finish(30)
    assert "502" in b.revoked  # the loser's certificate

    assert await _renew(servicer, _csr(key)) == "OK 501 repeated"


async def test_a_peer_whose_other_grant_renewed_since_still_gets_its_answer(
    presenting: Any,
) -> None:
    """The peer's row holds its latest certificate across its grants, here another
    grant's: the repeat is answered with this grant's own certificate."""
    key = _key()
    b = B(key)
    b.peer_serial = "9f9f"
    b.peer_cert_pem = _certificate(_key().public_key(), "9f9f", grant_id=str(uuid.uuid4()))
    servicer, _ = _servicer(b)
    presenting(OLD)

    assert await _renew(servicer, _csr(key)) == f"OK {CURRENT} repeated"


async def test_a_grants_service_from_before_grants_0003_still_answers_from_the_peer_row(
    presenting: Any,
) -> None:
    """During a rolling upgrade grants-service may not know with_certificate: the peer's
    row stands in when it holds the grant's serial, as before per-grant storage."""
    key = _key()
    b = B(key)
    b.stores_certificates = False
    servicer, _ = _servicer(b)
    presenting(OLD)

    assert await _renew(servicer, _csr(key)) == f"OK {CURRENT} repeated"


def test_the_peer_row_stands_in_only_for_the_grants_own_peer() -> None:
    """Nothing stored for the grant (before grants_0003): a peer row holding the grant's
    serial and a certificate for the key stands in only when it is the grant's peer."""
    key = _key()
    reply = grant_reply(cert_serial=CURRENT, peer_cert_pem=_certificate(key.public_key(), CURRENT))
    spki = spki_der(key.public_key())
    assert served_certificate(reply, spki) is not None
    reply.peer.id = str(uuid.uuid4())
    assert served_certificate(reply, spki) is None
