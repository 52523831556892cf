"""ca-service with the step-ca backend: a real instance (`mosaic init --ca step-ca` +
`mosaic up`) in front of a real step-ca (tests/support/stepca.py, no fakes).

Skips locally when step-ca cannot be built or started; fails in CI (require_or_skip).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mosaic.config import ENROLLMENT, GATEWAY
from mosaic.errors import RemoteError
from mosaic.federation.v1 import ca_pb2, ca_pb2_grpc
from mosaic.x509ext import (
    GRANT_ID_OID,
    SUBJECT_USER_ID_OID,
    encode_uuid_utf8string,
    grant_identity,
    load_pem_certificates,
    sha256_fingerprint,
    verify_chain,
)
from tests.support.instances import Instance, internal_channel_as
from tests.support.stepca import BROKEN_TEMPLATE_TEXT, StepCAServer, stepca_instance

pytestmark = [pytest.mark.stepca, pytest.mark.slow]

CA = "ca-service"


def started_stepca_instance(root: Path, name: str, stepca: StepCAServer) -> Instance:
    instance = stepca_instance(root, name, stepca)
    instance.start()
    return instance


@pytest.fixture(scope="module")
def instance(stepca: StepCAServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    inst = started_stepca_instance(tmp_path_factory.mktemp("stepca-ok"), "b", stepca)
    try:
        yield inst
    finally:
        inst.stop()


@pytest.fixture
async def as_enrollment(instance: Instance) -> AsyncIterator[ca_pb2_grpc.CertificateAuthorityStub]:
    async with internal_channel_as(instance.home, CA, ENROLLMENT) as channel:
        yield ca_pb2_grpc.CertificateAuthorityStub(channel)


def make_csr(common_name: str = "peer-a") -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def ids() -> dict[str, str]:
    return {
        "grant_id": str(uuid.uuid4()),
        "subject_user_id": str(uuid.uuid4()),
        "peer_id": str(uuid.uuid4()),
    }


async def issue(
    stub: ca_pb2_grpc.CertificateAuthorityStub, **fields: Any
) -> ca_pb2.IssueCertificateResponse:
    request = ca_pb2.IssueCertificateRequest(**{"csr_pem": make_csr(), **ids(), **fields})
    return await stub.IssueCertificate(request, timeout=20)


async def rpc_error(call: Any) -> RemoteError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return RemoteError.from_rpc_error(info.value)


def assert_log_has_no_secret(instance: Instance, stepca: StepCAServer) -> None:
    text = instance.log_text()
    assert text, "the instance wrote no log"
    assert stepca.private_jwk["d"] not in text
    assert "eyJ" not in text  # no JWS/JWT: every token starts with a base64url '{"'
    assert stepca.password not in text


# ---- a working step-ca --------------------------------------------------------------


async def test_certificate_from_step_ca_carries_the_requested_grant(
    instance: Instance, stepca: StepCAServer, as_enrollment: ca_pb2_grpc.CertificateAuthorityStub
) -> None:
    wanted = ids()
    reply = await issue(as_enrollment, lifetime_seconds=3600, **wanted)

    assert reply.backend == "step-ca"
    cert = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    identity = grant_identity(cert)
    assert identity.grant_id == wanted["grant_id"]
    assert identity.subject_user_id == wanted["subject_user_id"]
    for oid, value in (
        (GRANT_ID_OID, wanted["grant_id"]),
        (SUBJECT_USER_ID_OID, wanted["subject_user_id"]),
    ):
        ext = cert.extensions.get_extension_for_oid(oid)
        assert ext.critical is False
        assert ext.value.value == encode_uuid_utf8string(value)  # type: ignore[attr-defined]
    assert cert.issuer == stepca.intermediate.subject
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in reply.chain_pem]
    verify_chain(cert, chain, [stepca.root_cert])
    assert_log_has_no_secret(instance, stepca)


async def test_trust_bundle_gives_step_ca_root_for_clients_and_local_root_for_the_server(
    instance: Instance, stepca: StepCAServer, as_enrollment: ca_pb2_grpc.CertificateAuthorityStub
) -> None:
    await issue(as_enrollment)  # the backend learns step-ca's intermediate from a sign
    bundle = await as_enrollment.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=5)
    assert bundle.backend == "step-ca"
    assert bundle.root_sha256 == sha256_fingerprint(stepca.root_cert)
    assert load_pem_certificates(bundle.root_pem) == [stepca.root_cert]
    assert [load_pem_certificates(p)[0] for p in bundle.intermediates_pem] == [stepca.intermediate]
    # The gateway's TLS server certificate still comes from the local federation PKI,
    # which peers pin through the enrollment URL.
    assert bundle.server_root_sha256 == instance.init_doc["federation_root_sha256"]
    assert bundle.server_root_sha256 != bundle.root_sha256


async def test_revocation_is_recorded_at_step_ca_too(
    instance: Instance, stepca: StepCAServer, as_enrollment: ca_pb2_grpc.CertificateAuthorityStub
) -> None:
    issued = await issue(as_enrollment)
    async with internal_channel_as(instance.home, CA, GATEWAY) as channel:
        stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
        reply = await stub.RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial=issued.serial, reason="key_compromise"),
            timeout=20,
        )
        assert [r.serial for r in reply.revocations] == [issued.serial]
        assert reply.revoked_at_backend is True, reply.backend_note
        listed = await stub.ListRevocations(ca_pb2.ListRevocationsRequest(), timeout=5)
    assert issued.serial in {r.serial for r in listed.revocations}
    assert_log_has_no_secret(instance, stepca)


async def test_lifetime_above_step_ca_maximum_is_a_failed_precondition(
    tmp_path: Path,
) -> None:
    """step-ca refuses (403) what its provisioner's claims forbid: the operator must align
    the CA service's max lifetime with step-ca's, the caller can do nothing about it."""
    with StepCAServer(max_lifetime="1h") as short:
        inst = started_stepca_instance(tmp_path, "short", short)
        try:
            async with internal_channel_as(inst.home, CA, ENROLLMENT) as channel:
                stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
                err = await rpc_error(issue(stub, lifetime_seconds=2 * 3600))
        finally:
            inst.stop()
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION
        assert err.reason == "CA_BACKEND_REJECTED"
        assert err.remediation
        assert_log_has_no_secret(inst, short)


# ---- a step-ca whose template drops the grant OIDs ----------------------------------


async def test_certificate_without_the_grant_oids_is_never_returned(tmp_path: Path) -> None:
    template = tmp_path / "broken.tpl"
    template.write_text(BROKEN_TEMPLATE_TEXT)
    with StepCAServer(template=template) as broken:
        inst = started_stepca_instance(tmp_path, "broken", broken)
        try:
            async with internal_channel_as(inst.home, CA, ENROLLMENT) as channel:
                stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
                err = await rpc_error(issue(stub))
        finally:
            inst.stop()
        assert err.code == grpc.StatusCode.INTERNAL
        assert err.reason == "ISSUED_CERT_MISMATCH"
        assert "1.3.6.1.4.1.99999.1" in err.message
        assert "BEGIN CERTIFICATE" not in err.message
        assert "template" in err.remediation
        records = [
            json.loads(line) for line in inst.log_text().splitlines() if line.startswith("{")
        ]
        refused = [r for r in records if r.get("reason") == "ISSUED_CERT_MISMATCH"]
        assert any(r["level"] == "error" and r["service"] == CA for r in refused)
        assert not any(r.get("msg") == "certificate issued" for r in records)
        assert_log_has_no_secret(inst, broken)


# ---- step-ca down -------------------------------------------------------------------


async def test_stopped_step_ca_is_unavailable_with_a_remediation(tmp_path: Path) -> None:
    with StepCAServer() as down:
        inst = started_stepca_instance(tmp_path, "down", down)
        try:
            async with internal_channel_as(inst.home, CA, ENROLLMENT) as channel:
                stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
                await issue(stub)  # works while step-ca runs
                down.stop_process()
                err = await rpc_error(issue(stub))
        finally:
            inst.stop()
        assert err.code == grpc.StatusCode.UNAVAILABLE
        assert err.reason == "CA_BACKEND_UNAVAILABLE"
        assert down.url in err.remediation
        assert err.retry_after_s is not None
        assert_log_has_no_secret(inst, down)
