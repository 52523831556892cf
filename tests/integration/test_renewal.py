"""Certificate renewal (flow 6) between two real gateways: `peer renew` on A, B re-issues.

A and B are started once for the module (SQLite, local CA) and A enrolls for real through
the CLI (`grant create` / `grant token` on B, `peer add` on A). The old certificate and key
are read from A's grants-service (as the gateway) before renewing, so the tests can present
them to B's federation listener directly afterwards. The grant revocation test changes the
enrollment for good, so it runs last.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mosaic.config import load_config
from mosaic.errors import RemoteError
from mosaic.federation.v1 import (
    ca_pb2,
    ca_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    grants_pb2,
    grants_pb2_grpc,
)
from mosaic.rpc.options import CLIENT_OPTIONS
from mosaic.x509ext import grant_identity, serial_hex
from tests.support.instances import Instance, enroll, internal_channel_as
from tests.support.pki import csr_pem as _csr_pem

pytestmark = pytest.mark.slow

USER = "33333333-3333-4333-8333-333333333333"
PEER_ON_A = "b"


@dataclass
class Pair:
    a: Instance
    b: Instance
    grant: dict[str, Any]  # B's grant for A
    peer: dict[str, Any]  # A's outbound peer, as `peer add` (later `peer renew`) printed it
    # A's certificate and key from before the renewal.
    old: grants_pb2.GetPeerCredentialsResponse | None = None


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("renew")
    a = Instance(root, "a")
    b = Instance(root, "b")
    scope = root / "scope.json"
    scope.write_text(json.dumps({"resources": ["tasks", "notes"]}))
    try:
        a.start()
        b.start()
        grant, peer = enroll(a, b, scope, user=USER, name=PEER_ON_A)
        yield Pair(a, b, grant, peer)
    finally:
        a.stop()
        b.stop()


# ---- helpers ---------------------------------------------------------------------------


async def _credentials(a: Instance, peer: str) -> grants_pb2.GetPeerCredentialsResponse:
    """A's stored certificate and unsealed key for the peer, as the gateway reads them."""
    async with internal_channel_as(a.home, "grants-service", "federation-gateway") as channel:
        reply: grants_pb2.GetPeerCredentialsResponse = await grants_pb2_grpc.GrantsStub(
            channel
        ).GetPeerCredentials(grants_pb2.GetPeerCredentialsRequest(id=peer), timeout=10)
    return reply


def _federation_channel(b: Instance, key_pem: str, cert_pem: str) -> grpc.aio.Channel:
    """A raw mTLS channel to B's federation listener with the given client certificate."""
    config = load_config(b.home)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(config.federation_pki_dir / "root.crt").read_bytes(),
        private_key=key_pem.encode(),
        certificate_chain=cert_pem.encode(),
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{config.ports.federation}", credentials, options=CLIENT_OPTIONS
    )


async def _refusal(awaitable: Any) -> RemoteError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return RemoteError.from_rpc_error(info.value)


async def _revoked_serials(b: Instance) -> set[str]:
    async with internal_channel_as(b.home, "ca-service", "federation-gateway") as channel:
        reply = await ca_pb2_grpc.CertificateAuthorityStub(channel).ListRevocations(
            ca_pb2.ListRevocationsRequest(), timeout=10
        )
    return {r.serial for r in reply.revocations}


def _b_peer(pair: Pair) -> dict[str, Any]:
    code, doc, err = pair.b.cli("federation", "peer", "show", pair.grant["peer_id"])
    assert code == 0, (doc, err)
    return dict(doc)


def _a_peer(pair: Pair) -> dict[str, Any]:
    code, doc, err = pair.a.cli("federation", "peer", "show", PEER_ON_A)
    assert code == 0, (doc, err)
    return dict(doc)


# ---- flow 6 ------------------------------------------------------------------------------


def test_peer_renew_replaces_the_certificate_on_both_sides(pair: Pair) -> None:
    old = asyncio.run(_credentials(pair.a, PEER_ON_A))
    old_serial = old.peer.cert_serial
    assert old_serial == pair.peer["cert_serial"] == _b_peer(pair)["cert_serial"]
    code, caps, err = pair.a.cli("federation", "query", PEER_ON_A, "capabilities")
    assert code == 0, (caps, err)
    # Certificate times have whole seconds: let more than one pass since the old one was
    # issued (before A stored the peer), so the new not_after differs. A wait for a
    # condition, not a timing assertion.
    stored_at = dt.datetime.fromisoformat(pair.peer["created_at"].replace("Z", "+00:00"))
    while dt.datetime.now(dt.UTC) < stored_at + dt.timedelta(seconds=1.5):
        time.sleep(0.1)

    code, renewed, err = pair.a.cli("federation", "peer", "renew", PEER_ON_A, timeout=120)
    assert code == 0, (renewed, err)
    assert renewed["id"] == pair.peer["id"] and renewed["state"] == "active"
    assert renewed["cert_serial"] and renewed["cert_serial"] != old_serial
    assert renewed["cert_not_after"] != pair.peer["cert_not_after"]
    assert _a_peer(pair)["cert_serial"] == renewed["cert_serial"]

    # B's inbound peer now carries the new serial.
    assert _b_peer(pair)["cert_serial"] == renewed["cert_serial"]

    # A stored the new certificate with a new key, for the same grant and subject.
    new = asyncio.run(_credentials(pair.a, PEER_ON_A))
    leaf = x509.load_pem_x509_certificate(new.peer.cert_pem.encode())
    assert serial_hex(leaf.serial_number) == renewed["cert_serial"]
    key = serialization.load_pem_private_key(new.client_key_pem.encode(), password=None)
    assert key.public_key() == leaf.public_key()
    assert new.client_key_pem != old.client_key_pem
    identity = grant_identity(leaf)
    assert (identity.grant_id, identity.subject_user_id) == (pair.grant["id"], USER)
    assert new.peer.ca_bundle_pem == old.peer.ca_bundle_pem

    # A's next query uses the new certificate.
    code, caps, err = pair.a.cli("federation", "query", PEER_ON_A, "capabilities")
    assert code == 0, (caps, err)
    assert caps["capabilities"]["grant_id"] == pair.grant["id"]

    # The old serial is revoked at B's CA, and the renewal is in B's audit log.
    assert old_serial in asyncio.run(_revoked_serials(pair.b))
    code, audit, _ = pair.b.cli("federation", "audit", "list", "--limit", "100")
    assert code == 0
    renews = [e for e in audit["entries"] if e["verb"] == "renew"]
    assert [e["outcome"] for e in renews] == ["allowed"]
    pair.peer = renewed
    pair.old = old


async def test_the_old_certificate_is_refused_afterwards(pair: Pair) -> None:
    old = pair.old
    assert old is not None, "runs after the renewal test"
    async with _federation_channel(pair.b, old.client_key_pem, old.peer.cert_pem) as channel:
        stub = gateway_pb2_grpc.FederationStub(channel)
        error = await _refusal(stub.Capabilities(gateway_pb2.CapabilitiesRequest(), timeout=10))
        assert error.code == grpc.StatusCode.PERMISSION_DENIED, error
        assert error.reason in ("CERT_REVOKED", "CERT_NOT_CURRENT"), error
        # Nor can it renew again.
        error = await _refusal(
            stub.RenewCertificate(
                gateway_pb2.RenewCertificateRequest(csr_pem=_csr_pem()), timeout=30
            )
        )
        assert error.code == grpc.StatusCode.PERMISSION_DENIED, error
        assert error.reason in ("CERT_REVOKED", "CERT_NOT_CURRENT"), error
    # Refusals changed nothing at B.
    assert _b_peer(pair)["cert_serial"] == pair.peer["cert_serial"]


def test_a_renewal_whose_answer_was_lost_is_answered_again(pair: Pair, tmp_path: Path) -> None:
    """A's renewal answer is lost: A still holds the replaced certificate (soon revoked)
    and repeats the call with the same CSR. B answers with the certificate it issued for
    that key, and issues nothing more; the replaced certificate opens nothing else, and
    a CSR for any other key gets the refusal it got before. On its own enrollment, so the
    module's peer is left alone. Before the repeat, B's peer enrolls and renews another
    grant, so B's peer row holds another grant's certificate: the repeat is still answered
    (B keeps each grant's own certificate)."""
    a, b = pair.a, pair.b
    scope = tmp_path / "scope.json"
    scope.write_text(json.dumps({"resources": ["tasks"]}))
    grant, _ = enroll(a, b, scope, user=USER, name="b-lost", peer_name="a-lost")
    held = asyncio.run(_credentials(a, "b-lost"))
    new_key = ec.generate_private_key(ec.SECP256R1())
    csr = _csr_pem(new_key)

    def enroll_and_renew_another_grant() -> str:
        other, _ = enroll(a, b, scope, user=USER, name="b-lost-2", peer_name="a-lost")
        assert other["peer_id"] == grant["peer_id"]
        code, doc, err = a.cli("federation", "peer", "renew", "b-lost-2", timeout=120)
        assert code == 0, (doc, err)
        return str(doc["cert_serial"])

    async def lose_then_repeat() -> tuple[Any, ...]:
        async with _federation_channel(b, held.client_key_pem, held.peer.cert_pem) as channel:
            stub = gateway_pb2_grpc.FederationStub(channel)
            request = gateway_pb2.RenewCertificateRequest(csr_pem=csr)
            first = await stub.RenewCertificate(request, timeout=30)  # "lost"
            other_serial = await asyncio.to_thread(enroll_and_renew_another_grant)
            code, b_peer, err = await asyncio.to_thread(
                b.cli, "federation", "peer", "show", grant["peer_id"]
            )
            assert code == 0 and b_peer["cert_serial"] == other_serial, (b_peer, err)
            again = await stub.RenewCertificate(request, timeout=30)
            # Once the gate has the replaced serial in its revoked set, it opens nothing
            # but this repeat.
            for _ in range(100):
                refused = await _refusal(
                    stub.Capabilities(gateway_pb2.CapabilitiesRequest(), timeout=10)
                )
                if refused.reason == "CERT_REVOKED":
                    break
                await asyncio.sleep(0.1)
            after_revocation = await stub.RenewCertificate(request, timeout=30)
            other = await _refusal(
                stub.RenewCertificate(
                    gateway_pb2.RenewCertificateRequest(csr_pem=_csr_pem()), timeout=30
                )
            )
        return first, again, refused, after_revocation, other

    first, again, refused, after_revocation, other = asyncio.run(lose_then_repeat())
    assert not first.repeated
    for answer in (again, after_revocation):
        assert answer.repeated
        assert (answer.serial, answer.certificate_pem) == (first.serial, first.certificate_pem)
        assert list(answer.chain_pem) == list(first.chain_pem)
    assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CERT_REVOKED")
    assert (other.code, other.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CERT_REVOKED")

    # The certificate fetched again is the one B serves the grant with.
    key_pem = new_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()

    async def capabilities_with_the_new_certificate() -> gateway_pb2.CapabilitiesResponse:
        chain = again.certificate_pem + "".join(again.chain_pem)
        async with _federation_channel(b, key_pem, chain) as channel:
            reply: gateway_pb2.CapabilitiesResponse = await gateway_pb2_grpc.FederationStub(
                channel
            ).Capabilities(gateway_pb2.CapabilitiesRequest(), timeout=10)
        return reply

    assert asyncio.run(capabilities_with_the_new_certificate()).grant_id == grant["id"]
    with sqlite3.connect(b.home / "data" / "ca_service.db") as conn:
        issued = conn.execute(
            "SELECT serial FROM issued_certificates WHERE grant_id = ?",
            (uuid.UUID(grant["id"]).hex,),
        ).fetchall()
    assert sorted(row[0] for row in issued) == sorted([held.peer.cert_serial, first.serial])
    code, audit, _ = b.cli("federation", "audit", "list", "--limit", "200")
    assert code == 0
    renews = [
        (e["outcome"], e.get("reason") or None)
        for e in reversed(audit["entries"])
        if e["verb"] == "renew" and e.get("grant_id") == grant["id"]
    ]
    assert renews == [
        ("allowed", None),
        ("allowed", "RENEWAL_REPEATED"),
        ("allowed", "RENEWAL_REPEATED"),
        ("denied", "CERT_REVOKED"),
    ]


def test_renew_errors_and_usage(pair: Pair) -> None:
    code, doc, _ = pair.a.cli("federation", "peer", "renew", "no-such-peer")
    assert code == 1 and doc["error"]["code"] == "PEER_NOT_FOUND", doc
    # An inbound peer (one we serve) is not renewed from here.
    code, doc, _ = pair.b.cli("federation", "peer", "renew", pair.grant["peer_id"])
    assert code == 1, doc
    assert doc["error"]["code"] in ("PEER_NOT_FOUND", "PEER_MISCONFIGURED"), doc
    code, _, _ = pair.a.cli("federation", "peer", "renew")
    assert code == 2


async def test_rotate_peer_certificate_has_exactly_one_winner(pair: Pair) -> None:
    """grants-service level: concurrent RotatePeerCertificate calls with the same
    expected_serial; one wins, the others are FAILED_PRECONDITION CERT_NOT_CURRENT."""
    b = pair.b
    created = await _admin_create_grant(b)
    grant_id, peer_id = created.grant.id, created.peer.id
    issued = [await _issue(b, grant_id, peer_id) for _ in range(7)]
    first, candidates = issued[0], issued[1:]
    async with internal_channel_as(b.home, "grants-service", "enrollment-service") as channel:
        await grants_pb2_grpc.GrantsStub(channel).ActivateGrantAndPeer(
            grants_pb2.ActivateGrantAndPeerRequest(
                grant_id=grant_id,
                peer_id=peer_id,
                cert_serial=first.serial,
                cert_pem=first.certificate_pem,
                cert_not_after=first.not_after,
            ),
            timeout=30,
        )
        # Only the gateway may rotate.
        error = await _refusal(
            grants_pb2_grpc.GrantsStub(channel).RotatePeerCertificate(
                _rotate(grant_id, peer_id, first.serial, candidates[0]), timeout=10
            )
        )
        assert error.code == grpc.StatusCode.PERMISSION_DENIED, error

    async with internal_channel_as(b.home, "grants-service", "federation-gateway") as channel:
        stub = grants_pb2_grpc.GrantsStub(channel)
        results = await asyncio.gather(
            *(
                stub.RotatePeerCertificate(_rotate(grant_id, peer_id, first.serial, c), timeout=30)
                for c in candidates
            ),
            return_exceptions=True,
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1, results
        for loser in losers:
            assert isinstance(loser, grpc.aio.AioRpcError), loser
            remote = RemoteError.from_rpc_error(loser)
            assert remote.code == grpc.StatusCode.FAILED_PRECONDITION, remote
            assert remote.reason == "CERT_NOT_CURRENT", remote
        current = (await stub.GetPeer(grants_pb2.GetPeerRequest(id=peer_id), timeout=10)).peer
        assert current.cert_serial == winners[0].peer.cert_serial
        assert current.cert_serial in {c.serial for c in candidates}
        served = (await stub.GetGrant(grants_pb2.GetGrantRequest(id=grant_id), timeout=10)).grant
        assert served.cert_serial == current.cert_serial

        # A stale expected serial never applies.
        error = await _refusal(
            stub.RotatePeerCertificate(
                _rotate(grant_id, peer_id, first.serial, candidates[0]), timeout=10
            )
        )
        assert error.reason == "CERT_NOT_CURRENT", error


async def _admin_create_grant(b: Instance) -> grants_pb2.CreateGrantResponse:
    async with internal_channel_as(b.home, "grants-service", "federation-gateway") as channel:
        reply: grants_pb2.CreateGrantResponse = await grants_pb2_grpc.GrantsStub(
            channel
        ).CreateGrant(
            grants_pb2.CreateGrantRequest(
                subject_user_id=USER,
                peer_name=f"race-{uuid.uuid4().hex[:8]}",
                scope_json=json.dumps({"resources": ["tasks"]}),
            ),
            timeout=10,
        )
    return reply


async def _issue(b: Instance, grant_id: str, peer_id: str) -> ca_pb2.IssueCertificateResponse:
    async with internal_channel_as(b.home, "ca-service", "federation-gateway") as channel:
        reply: ca_pb2.IssueCertificateResponse = await ca_pb2_grpc.CertificateAuthorityStub(
            channel
        ).IssueCertificate(
            ca_pb2.IssueCertificateRequest(
                csr_pem=_csr_pem(), grant_id=grant_id, subject_user_id=USER, peer_id=peer_id
            ),
            timeout=30,
        )
    return reply


def _rotate(
    grant_id: str, peer_id: str, expected: str, issued: ca_pb2.IssueCertificateResponse
) -> grants_pb2.RotatePeerCertificateRequest:
    return grants_pb2.RotatePeerCertificateRequest(
        grant_id=grant_id,
        peer_id=peer_id,
        expected_serial=expected,
        cert_serial=issued.serial,
        cert_pem=issued.certificate_pem,
        cert_not_after=issued.not_after,
    )


# ---- last: B revokes the grant -------------------------------------------------------------


def test_renew_after_the_grant_is_revoked_is_refused_and_changes_nothing(pair: Pair) -> None:
    before = asyncio.run(_credentials(pair.a, PEER_ON_A))
    code, doc, err = pair.b.cli("federation", "grant", "revoke", pair.grant["id"])
    assert code == 0, (doc, err)

    code, doc, _ = pair.a.cli("federation", "peer", "renew", PEER_ON_A, timeout=120)
    assert code == 1, doc
    assert doc["error"]["code"] == "FORBIDDEN", doc
    assert doc["error"].get("server_reason") in ("GRANT_REVOKED", "CERT_REVOKED"), doc

    after = asyncio.run(_credentials(pair.a, PEER_ON_A))
    assert after.peer.cert_serial == before.peer.cert_serial == pair.peer["cert_serial"]
    assert after.peer.cert_pem == before.peer.cert_pem
    assert after.client_key_pem == before.client_key_pem
    assert _b_peer(pair)["cert_serial"] == pair.peer["cert_serial"]
