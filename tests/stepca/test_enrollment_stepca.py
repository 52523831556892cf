"""Enrollment between two real gateways where B runs on PostgreSQL with the step-ca backend.

A (SQLite, local CA) enrolls with B through the real CLI. B's client certificates come
from a real step-ca (tests/support/stepca.py) and chain to step-ca's root, while A pins
B's own federation root from the enrollment URL: A must still verify the certificate
(B sends step-ca's root over the pinned channel) and store what it needs to dial B.

Skips locally when step-ca or PostgreSQL is missing; fails in CI (require_or_skip).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mosaic.config import load_config
from mosaic.enrollment_url import parse_enrollment_url
from mosaic.errors import RemoteError
from mosaic.federation.v1 import (
    enrollment_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    grants_pb2,
    grants_pb2_grpc,
)
from mosaic.x509ext import grant_identity, load_pem_certificates, serial_hex, verify_chain
from tests.support.instances import Instance, enroll, grant_and_token, internal_channel_as
from tests.support.postgres import PostgresServer
from tests.support.stepca import StepCAServer, stepca_instance

pytestmark = [pytest.mark.stepca, pytest.mark.postgres, pytest.mark.slow]

CONCURRENT_REDEEMS = 24


@pytest.fixture(scope="module")
def gateways(
    stepca: StepCAServer,
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Instance, Instance]]:
    root = tmp_path_factory.mktemp("enroll-stepca")
    b = stepca_instance(
        root,
        "b",
        stepca,
        db=postgres_server.create_database(f"enroll_stepca_{uuid.uuid4().hex[:8]}"),
    )
    config_file = b.home / "instance.toml"
    doc = tomllib.loads(config_file.read_text())
    # One machine makes every attempt from 127.0.0.1: allow the concurrency test's burst.
    doc.setdefault("rate_limit", {})["redeem_burst"] = 2 * CONCURRENT_REDEEMS
    config_file.write_text(tomli_w.dumps(doc))
    a = Instance(root, "a")
    try:
        b.start()
        a.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_peer_add_with_a_step_ca_issued_certificate(
    gateways: tuple[Instance, Instance], stepca: StepCAServer, tmp_path: Path
) -> None:
    a, b = gateways
    assert b.init_doc["database"] == "postgresql"
    assert b.init_doc["ca_backend"] == "step-ca"
    scope = tmp_path / "scope.json"
    scope.write_text(json.dumps({"resources": ["notes"]}))
    user = str(uuid.uuid4())
    code, grant, err = b.cli(
        "federation", "grant", "create", "--user", user, "--peer-name", "a", "--scope", str(scope)
    )
    assert code == 0, (grant, err)
    code, token, err = b.cli("federation", "grant", "token", grant["id"], "--ttl", "300")
    assert code == 0, (token, err)
    # The pin is B's own federation root, not step-ca's.
    assert (
        parse_enrollment_url(token["enrollment_url"]).ca_sha256
        == (b.init_doc["federation_root_sha256"])
    )

    code, peer, err = a.cli("federation", "peer", "add", token["enrollment_url"], timeout=120)
    assert code == 0, (peer, err)
    assert peer["state"] == "active"
    assert peer["direction"] == "outbound"
    assert peer["endpoint"] == b.init_doc["federation_endpoint"]
    not_after = dt.datetime.fromisoformat(peer["cert_not_after"].replace("Z", "+00:00"))
    assert not_after > dt.datetime.now(dt.UTC)

    code, on_b, _ = b.cli("federation", "grant", "show", grant["id"])
    assert code == 0
    assert on_b["status"] == "active"
    assert on_b["peer"]["cert_serial"] == peer["cert_serial"]

    stored = asyncio.run(_credentials(a, peer["id"]))
    certs = load_pem_certificates(stored.peer.cert_pem)
    leaf = certs[0]
    # Issued by step-ca, with the grant OIDs B reported, for the key A generated.
    identity = grant_identity(leaf)
    assert (identity.grant_id, identity.subject_user_id) == (grant["id"], user)
    assert leaf.issuer == stepca.intermediate.subject
    assert serial_hex(leaf.serial_number) == peer["cert_serial"]
    verify_chain(leaf, certs[1:], [stepca.root_cert])
    key = serialization.load_pem_private_key(stored.client_key_pem.encode(), None)
    assert key.public_key() == leaf.public_key()
    # A dials B's federation listener trusting B's pinned root only.
    b_root = x509.load_pem_x509_certificate(
        (b.home / "pki" / "federation" / "root.crt").read_bytes()
    )
    assert load_pem_certificates(stored.peer.ca_bundle_pem) == [b_root]

    # Single use holds on Postgres too.
    code, again, _ = a.cli(
        "federation", "peer", "add", token["enrollment_url"], "--name", "b-again", timeout=120
    )
    assert code == 1
    assert again["error"]["code"] == "TOKEN_ALREADY_USED"
    assert token["token"] not in a.log_text() + b.log_text()


async def _credentials(a: Instance, peer_id: str) -> grants_pb2.GetPeerCredentialsResponse:
    async with internal_channel_as(a.home, "grants-service", "federation-gateway") as channel:
        reply: grants_pb2.GetPeerCredentialsResponse = await grants_pb2_grpc.GrantsStub(
            channel
        ).GetPeerCredentials(grants_pb2.GetPeerCredentialsRequest(id=peer_id), timeout=10)
        return reply


def test_concurrent_redeems_on_postgres_have_exactly_one_winner(
    gateways: tuple[Instance, Instance], stepca: StepCAServer, tmp_path: Path
) -> None:
    _, b = gateways
    scope = tmp_path / "scope.json"
    scope.write_text(json.dumps({"resources": ["tasks"]}))
    grant, token = grant_and_token(b, scope, user=str(uuid.uuid4()))
    config = load_config(b.home)
    root = (config.federation_pki_dir / "root.crt").read_bytes()

    async def redeem(csr_pem: str) -> object:
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{config.ports.enrollment}",
            grpc.ssl_channel_credentials(root_certificates=root),
        ) as channel:
            try:
                return await gateway_pb2_grpc.PeerEnrollmentStub(channel).Redeem(
                    gateway_pb2.PeerRedeemRequest(token=token["token"], csr_pem=csr_pem),
                    timeout=60,
                )
            except grpc.aio.AioRpcError as exc:
                return RemoteError.from_rpc_error(exc)

    csrs = [_csr() for _ in range(CONCURRENT_REDEEMS)]

    async def all_at_once() -> list[object]:
        return await asyncio.gather(*(redeem(csr) for csr in csrs))

    results = asyncio.run(all_at_once())
    losers = [r for r in results if isinstance(r, RemoteError)]
    assert len(results) - len(losers) == 1, [str(r) for r in losers]
    assert {r.reason for r in losers} <= {"TOKEN_IN_USE", "TOKEN_ALREADY_USED"}
    code, on_b, _ = b.cli("federation", "grant", "show", grant["id"])
    assert code == 0, on_b
    assert on_b["status"] == "active"

    # The winner lost its answer and repeats the redeem with the same CSR: the same
    # step-ca certificate again, with the chain to step-ca's root.
    winner = next(i for i, r in enumerate(results) if not isinstance(r, RemoteError))
    first = results[winner]
    again = asyncio.run(redeem(csrs[winner]))
    assert isinstance(first, enrollment_pb2.RedeemResponse)
    assert isinstance(again, enrollment_pb2.RedeemResponse), str(again)
    assert again.repeated and (again.serial, again.certificate_pem) == (
        first.serial,
        first.certificate_pem,
    )
    leaf = x509.load_pem_x509_certificate(again.certificate_pem.encode())
    verify_chain(leaf, load_pem_certificates("".join(again.chain_pem)), [stepca.root_cert])


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_renewal_and_its_repeat_with_step_ca(
    gateways: tuple[Instance, Instance], stepca: StepCAServer, tmp_path: Path
) -> None:
    """Flow 6 with step-ca issuing: `peer renew` stores a step-ca certificate chaining to
    step-ca's root; a renewal whose answer was lost, repeated with the same CSR, gets the
    same certificate with the same chain."""
    a, b = gateways
    scope = tmp_path / "scope.json"
    scope.write_text(json.dumps({"resources": ["notes"]}))
    _, peer = enroll(a, b, scope, user=str(uuid.uuid4()), name="b-renew", peer_name="a-renew")

    code, renewed, err = a.cli("federation", "peer", "renew", "b-renew", timeout=120)
    assert code == 0, (renewed, err)
    assert renewed["cert_serial"] != peer["cert_serial"]
    held = asyncio.run(_credentials(a, renewed["id"]))
    certs = load_pem_certificates(held.peer.cert_pem)
    assert certs[0].issuer == stepca.intermediate.subject
    verify_chain(certs[0], certs[1:], [stepca.root_cert])

    config = load_config(b.home)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(config.federation_pki_dir / "root.crt").read_bytes(),
        private_key=held.client_key_pem.encode(),
        certificate_chain=held.peer.cert_pem.encode(),
    )
    csr = _csr()

    async def renew_twice() -> list[gateway_pb2.RenewCertificateResponse]:
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{config.ports.federation}", credentials
        ) as channel:
            stub = gateway_pb2_grpc.FederationStub(channel)
            request = gateway_pb2.RenewCertificateRequest(csr_pem=csr)
            return [await stub.RenewCertificate(request, timeout=60) for _ in range(2)]

    first, again = asyncio.run(renew_twice())
    assert (first.repeated, again.repeated) == (False, True)
    assert (again.serial, again.certificate_pem) == (first.serial, first.certificate_pem)
    leaf = x509.load_pem_x509_certificate(again.certificate_pem.encode())
    verify_chain(leaf, load_pem_certificates("".join(again.chain_pem)), [stepca.root_cert])
