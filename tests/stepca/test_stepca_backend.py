"""StepCABackend against a real step-ca (built from Debian's sources, see infra/step-ca).

Skips locally when step-ca cannot be built/started; fails in CI (require_or_skip).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import stat
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca_service.backends.base import (
    CABackendError,
    CABackendInvalidResponse,
    CABackendMisconfigured,
    CABackendRejected,
    CABackendUnavailable,
)
from ca_service.backends.stepca import StepCABackend, decrypt_provisioner_jwk
from tests.support.procs import LOOPBACK, free_port
from tests.support.stepca import BROKEN_TEMPLATE_TEXT, StepCAServer, ec_private_jwk

pytestmark = pytest.mark.stepca

GRANT_OID = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")
SUBJECT_OID = x509.ObjectIdentifier("1.3.6.1.4.1.99999.2")
HOUR = timedelta(hours=1)

# Every error string and the rendered log of every test, checked for secrets at the end.
_SEEN_TEXT: list[str] = []


def _record(exc: CABackendError) -> CABackendError:
    _SEEN_TEXT.extend([str(exc), exc.message, exc.remediation, repr(exc)])
    return exc


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    # caplog.text would only show the teardown phase here: collect the call's records.
    for phase in ("setup", "call"):
        for record in caplog.get_records(phase):
            _SEEN_TEXT.append(f"{record.name} {record.getMessage()} {record.exc_text or ''}")


@pytest.fixture(scope="module")
def stepca_nodb() -> Iterator[StepCAServer]:
    server = StepCAServer(with_db=False).start_or_skip()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stepca_broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StepCAServer]:
    template = tmp_path_factory.mktemp("stepca-broken") / "federation-broken.tpl"
    template.write_text(BROKEN_TEMPLATE_TEXT)
    server = StepCAServer(template=template).start_or_skip()
    try:
        yield server
    finally:
        server.stop()


def make_csr(
    cn: str = "peer-gateway-a",
    *,
    dns: list[str] | None = None,
    forged: tuple[str, str] | None = None,
) -> tuple[x509.CertificateSigningRequest, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    names = [cn] if dns is None else dns
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    if forged is not None:
        for oid, value in ((GRANT_OID, forged[0]), (SUBJECT_OID, forged[1])):
            raw = b"\x0c\x24" + value.encode()
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, raw), critical=False)
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    return builder.sign(key, hashes.SHA256()), key


def ext_bytes(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes:
    value = cert.extensions.get_extension_for_oid(oid).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


def ids() -> tuple[str, str]:
    return str(uuid.uuid4()), str(uuid.uuid4())


async def test_certificate_carries_grant_oids(stepca: StepCAServer) -> None:
    backend = stepca.make_backend()
    grant_id, subject_id = ids()
    csr, key = make_csr()
    signed = await backend.sign(
        csr, grant_id=grant_id, subject_user_id=subject_id, peer_id="peer-1", lifetime=HOUR
    )
    cert = signed.certificate

    assert ext_bytes(cert, GRANT_OID) == b"\x0c\x24" + grant_id.encode("ascii")
    assert ext_bytes(cert, SUBJECT_OID) == b"\x0c\x24" + subject_id.encode("ascii")
    for oid in (GRANT_OID, SUBJECT_OID):
        assert not cert.extensions.get_extension_for_oid(oid).critical

    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "peer-gateway-a"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["peer-gateway-a"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.public_key() == key.public_key()

    # Chains to the pinned root through the intermediate step-ca returned.
    assert signed.chain == [stepca.intermediate]
    assert backend.trust_roots() == [stepca.root_cert]
    assert backend.intermediates() == [stepca.intermediate]
    cert.verify_directly_issued_by(signed.chain[0])
    signed.chain[0].verify_directly_issued_by(stepca.root_cert)

    # Lifetime honoured (step-ca backdates notBefore by one minute).
    validity = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert HOUR <= validity <= HOUR + timedelta(minutes=2)


async def test_csr_extensions_are_never_copied(stepca: StepCAServer) -> None:
    backend = stepca.make_backend()
    grant_id, subject_id = ids()
    forged = ids()
    csr, _ = make_csr("peer-gateway-forger", forged=forged)
    signed = await backend.sign(
        csr, grant_id=grant_id, subject_user_id=subject_id, peer_id="peer-2", lifetime=HOUR
    )
    cert = signed.certificate
    assert ext_bytes(cert, GRANT_OID) == b"\x0c\x24" + grant_id.encode()
    assert ext_bytes(cert, SUBJECT_OID) == b"\x0c\x24" + subject_id.encode()
    oids = [e.oid for e in cert.extensions]
    assert oids.count(GRANT_OID) == 1 and oids.count(SUBJECT_OID) == 1
    assert forged[0].encode() not in cert.public_bytes(serialization.Encoding.DER)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


async def test_csr_without_sans_gets_cn_as_dns_san(stepca: StepCAServer) -> None:
    """step-ca 0.19: a token with no sans means sans = [sub]; the certificate gets CN as SAN."""
    backend = stepca.make_backend()
    grant_id, subject_id = ids()
    csr, _ = make_csr("peer-gateway-nosan", dns=[])
    signed = await backend.sign(
        csr, grant_id=grant_id, subject_user_id=subject_id, peer_id="p", lifetime=HOUR
    )
    san = signed.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["peer-gateway-nosan"]
    assert ext_bytes(signed.certificate, GRANT_OID) == b"\x0c\x24" + grant_id.encode()


async def test_non_uuid_claim_is_refused_by_template(stepca: StepCAServer) -> None:
    backend = stepca.make_backend()
    csr, _ = make_csr()
    with pytest.raises(CABackendRejected) as info:
        await backend.sign(
            csr,
            grant_id="not-a-uuid",
            subject_user_id=str(uuid.uuid4()),
            peer_id="p",
            lifetime=HOUR,
        )
    _record(info.value)
    assert "mosaic_grant_id" in info.value.message
    assert info.value.remediation


async def test_broken_template_drops_oids(stepca_broken: StepCAServer) -> None:
    backend = stepca_broken.make_backend()
    grant_id, subject_id = ids()
    csr, _ = make_csr(forged=ids())
    signed = await backend.sign(
        csr, grant_id=grant_id, subject_user_id=subject_id, peer_id="p", lifetime=HOUR
    )
    oids = {e.oid for e in signed.certificate.extensions}
    assert GRANT_OID not in oids and SUBJECT_OID not in oids


async def test_stopped_stepca_is_unavailable() -> None:
    server = StepCAServer(with_db=False).start_or_skip()
    try:
        backend = server.make_backend(timeout=3.0)
        csr, _ = make_csr()
        grant_id, subject_id = ids()
        await backend.sign(
            csr, grant_id=grant_id, subject_user_id=subject_id, peer_id="p", lifetime=HOUR
        )
        server.stop_process()
        with pytest.raises(CABackendUnavailable) as info:
            await backend.sign(
                csr, grant_id=grant_id, subject_user_id=subject_id, peer_id="p", lifetime=HOUR
            )
        _record(info.value)
        assert info.value.remediation
        assert server.url in info.value.remediation
        with pytest.raises(CABackendUnavailable) as info:
            await backend.revoke(1234, "superseded")
        _record(info.value)
    finally:
        server.stop()


async def test_wrong_pinned_root_is_unavailable(stepca: StepCAServer) -> None:
    backend = stepca.make_backend(root_pem=_other_root_pem(), intermediates_pem=None)
    csr, _ = make_csr()
    grant_id, subject_id = ids()
    with pytest.raises(CABackendUnavailable) as info:
        await backend.sign(
            csr, grant_id=grant_id, subject_user_id=subject_id, peer_id="p", lifetime=HOUR
        )
    _record(info.value)
    assert "pinned" in info.value.message or "pinned" in info.value.remediation


def _other_root_pem() -> bytes:
    from datetime import UTC, datetime

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Someone else's root")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - HOUR)
        .not_valid_after(now + HOUR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


async def test_silent_server_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(1)  # accepts TCP but never speaks TLS
        port = sock.getsockname()[1]
        jwk = ec_private_jwk(ec.generate_private_key(ec.SECP256R1()))
        backend = StepCABackend(
            url=f"https://{LOOPBACK}:{port}",
            root_pem=_other_root_pem(),
            dns_name="stepca.test",
            provisioner_name="mosaic-fed",
            provisioner_jwk=jwk,
            timeout=0.5,
        )
        csr, _ = make_csr()
        with pytest.raises(CABackendUnavailable) as info:
            await backend.sign(
                csr,
                grant_id=str(uuid.uuid4()),
                subject_user_id=str(uuid.uuid4()),
                peer_id="p",
                lifetime=HOUR,
            )
    _record(info.value)
    assert "within" in info.value.message


async def test_connection_refused_is_unavailable() -> None:
    port = free_port()
    jwk = ec_private_jwk(ec.generate_private_key(ec.SECP256R1()))
    backend = StepCABackend(
        url=f"https://{LOOPBACK}:{port}",
        root_pem=_other_root_pem(),
        dns_name="stepca.test",
        provisioner_name="mosaic-fed",
        provisioner_jwk=jwk,
        timeout=2.0,
    )
    csr, _ = make_csr()
    with pytest.raises(CABackendUnavailable) as info:
        await backend.sign(
            csr,
            grant_id=str(uuid.uuid4()),
            subject_user_id=str(uuid.uuid4()),
            peer_id="p",
            lifetime=HOUR,
        )
    _record(info.value)
    assert info.value.remediation


async def test_wrong_provisioner_key_same_kid_is_rejected(stepca: StepCAServer) -> None:
    impostor = ec_private_jwk(ec.generate_private_key(ec.SECP256R1()), kid=stepca.kid)
    backend = stepca.make_backend(provisioner_jwk=impostor)
    csr, _ = make_csr()
    with pytest.raises(CABackendRejected) as info:
        await backend.sign(
            csr,
            grant_id=str(uuid.uuid4()),
            subject_user_id=str(uuid.uuid4()),
            peer_id="p",
            lifetime=HOUR,
        )
    _record(info.value)
    assert "401" in info.value.message
    assert "provisioner token refused" in info.value.message
    assert "clock" in info.value.remediation
    with pytest.raises(CABackendRejected) as info:
        await backend.revoke(1234, "superseded")
    _record(info.value)


async def test_unknown_kid_and_wrong_audience_are_rejected(stepca: StepCAServer) -> None:
    csr, _ = make_csr()
    for backend in (
        stepca.make_backend(kid="no-such-kid"),
        stepca.make_backend(dns_name="not-a-ca-name.test"),
    ):
        with pytest.raises(CABackendRejected) as info:
            await backend.sign(
                csr,
                grant_id=str(uuid.uuid4()),
                subject_user_id=str(uuid.uuid4()),
                peer_id="p",
                lifetime=HOUR,
            )
        _record(info.value)
        assert "401" in info.value.message


async def test_lifetime_above_provisioner_max_is_rejected(stepca: StepCAServer) -> None:
    """step-ca 0.19 refuses (403), it does not cap; exactly the max (24h) is fine."""
    backend = stepca.make_backend()
    csr, _ = make_csr()
    grant_id, subject_id = ids()
    with pytest.raises(CABackendRejected) as info:
        await backend.sign(
            csr,
            grant_id=grant_id,
            subject_user_id=subject_id,
            peer_id="p",
            lifetime=timedelta(hours=25),
        )
    _record(info.value)
    assert "403" in info.value.message
    assert "maximum certificate duration" in info.value.message
    signed = await backend.sign(
        csr,
        grant_id=grant_id,
        subject_user_id=subject_id,
        peer_id="p",
        lifetime=timedelta(hours=24),
    )
    validity = signed.certificate.not_valid_after_utc - signed.certificate.not_valid_before_utc
    assert timedelta(hours=24) <= validity <= timedelta(hours=24, minutes=2)


async def test_revoke_with_db_is_recorded(stepca: StepCAServer) -> None:
    backend = stepca.make_backend()
    csr, _ = make_csr()
    grant_id, subject_id = ids()
    signed = await backend.sign(
        csr, grant_id=grant_id, subject_user_id=subject_id, peer_id="p", lifetime=HOUR
    )
    serial = signed.certificate.serial_number
    outcome = await backend.revoke(serial, "key_compromise")
    assert outcome.recorded_at_backend is True
    again = await backend.revoke(serial, "key_compromise")
    assert again.recorded_at_backend is True
    assert "already" in again.note


async def test_revoke_without_db_is_not_recorded(stepca_nodb: StepCAServer) -> None:
    backend = stepca_nodb.make_backend()
    csr, _ = make_csr()
    signed = await backend.sign(
        csr,
        grant_id=str(uuid.uuid4()),
        subject_user_id=str(uuid.uuid4()),
        peer_id="p",
        lifetime=HOUR,
    )
    outcome = await backend.revoke(signed.certificate.serial_number, "superseded")
    assert outcome.recorded_at_backend is False
    assert "database" in outcome.note


async def test_concurrent_signs(stepca: StepCAServer) -> None:
    backend = stepca.make_backend()
    jobs = []
    for i in range(8):
        csr, _ = make_csr(f"peer-gateway-{i}")
        jobs.append(
            backend.sign(
                csr,
                grant_id=str(uuid.uuid4()),
                subject_user_id=str(uuid.uuid4()),
                peer_id="p",
                lifetime=HOUR,
            )
        )
    results = await asyncio.gather(*jobs)
    assert len({r.certificate.serial_number for r in results}) == 8


def test_encrypted_key_decrypts_to_private_jwk(stepca: StepCAServer) -> None:
    assert decrypt_provisioner_jwk(stepca.encrypted_key, stepca.password) == stepca.private_jwk
    with pytest.raises(CABackendMisconfigured) as info:
        decrypt_provisioner_jwk(stepca.encrypted_key, "wrong password")
    _record(info.value)
    with pytest.raises(CABackendMisconfigured) as info:
        decrypt_provisioner_jwk("not.a.jwe", stepca.password)
    _record(info.value)


def test_misconfiguration_is_typed(stepca: StepCAServer) -> None:
    public_only = {k: v for k, v in stepca.private_jwk.items() if k != "d"}
    cases: list[dict[str, Any]] = [
        {"provisioner_jwk": public_only},
        {"root_pem": b"not a pem"},
        {"url": "http://127.0.0.1:1"},
    ]
    for override in cases:
        with pytest.raises(CABackendMisconfigured) as info:
            stepca.make_backend(**override)
        _record(info.value)
        assert info.value.remediation
    assert stepca.private_jwk["d"] not in repr(stepca.make_backend())


def test_unusable_responses_are_invalid(stepca: StepCAServer) -> None:
    backend = stepca.make_backend()
    csr, _ = make_csr()
    good_leaf = _other_root_pem().decode()  # a valid certificate, but not for this CSR's key
    for data in (
        None,
        {"status": 201},
        {"crt": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"},
        {"crt": good_leaf, "certChain": "oops"},
        {"crt": good_leaf},
    ):
        with pytest.raises(CABackendInvalidResponse) as info:
            backend._parse_sign(data, csr)
        _record(info.value)


def test_stepca_log_is_private(stepca: StepCAServer) -> None:
    assert stepca.dir is not None and stepca.log_path is not None
    assert stat.S_IMODE(stepca.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(stepca.log_path.stat().st_mode) == 0o600
    for name in ("ca.json", "password.txt", "intermediate_ca_key"):
        assert stat.S_IMODE((stepca.dir / name).stat().st_mode) == 0o600


def test_zz_no_secret_in_errors_or_logs(
    stepca: StepCAServer, stepca_nodb: StepCAServer, stepca_broken: StepCAServer
) -> None:
    """Runs last in this module: every recorded error string and captured DEBUG log."""
    assert _SEEN_TEXT, "no error text was recorded"
    text = "\n".join(_SEEN_TEXT)
    tokens: set[str] = set()
    for server in (stepca, stepca_nodb, stepca_broken):
        assert server.log_path is not None
        with contextlib.suppress(OSError):
            tokens |= set(re.findall(r"ott=(\S+)", server.log_path.read_text()))
    assert tokens, "step-ca logged no tokens: the check below would be vacuous"
    for token in tokens:
        assert token not in text
        assert token.split(".")[2] not in text  # not even the signature
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ", text)
    assert "PRIVATE KEY" not in text
    for server in (stepca, stepca_nodb, stepca_broken):
        assert server.private_jwk["d"] not in text
        assert server.password not in text
