"""Federated queries (issue #6): the mTLS Federation service on a real gateway B, its
scope rules one by one, revocation and suspension, audit, rate limits, and the querying
side A (FederationClient and `mosaic federation query`).

Peer certificates are minted with ca-service IssueCertificate (as the gateway) and the
grant activated with grants-service ActivateGrantAndPeer (as enrollment-service), so
each rule gets its own grant and certificate; the end-to-end test enrolls for real.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import string
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from federation_gateway.client import FederationClient, PeerError
from mosaic import metrics
from mosaic.cli.admin import admin_channel, admin_metadata
from mosaic.config import GATEWAY, START_ORDER, load_config
from mosaic.errors import RemoteError
from mosaic.federation.v1 import (
    ca_pb2,
    ca_pb2_grpc,
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    grants_pb2,
    grants_pb2_grpc,
    resources_pb2,
    resources_pb2_grpc,
)
from mosaic.rpc.options import CLIENT_OPTIONS, in_batches
from tests.support.instances import Instance, internal_channel_as
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.slow

U = "11111111-1111-4111-8111-111111111111"  # the subject user
V = "22222222-2222-4222-8222-222222222222"  # another user of B
T1 = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"  # a granted team
T2 = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"  # a team never granted


# ---- helpers (also used by test_rate_limit_valkey.py) -----------------------------------


def set_rate_limit(inst: Instance, per_second: float, burst: int) -> None:
    """Write [rate_limit] into the instance's toml (before it starts)."""
    path = inst.home / "instance.toml"
    doc = tomllib.loads(path.read_text())
    doc["rate_limit"] = {"per_second": per_second, "burst": burst}
    path.write_text(tomli_w.dumps(doc))


def rows() -> list[common_pb2.ResourceItem]:
    """25 personal + 5 T1 + 3 T2 tasks of U, 5 tasks of V, notes, memory and credentials."""
    out = []

    def add(row_id: str, resource: str, owner: str, team: str, title: str) -> None:
        out.append(
            common_pb2.ResourceItem(
                id=row_id,
                resource=resource,
                owner_user_id=owner,
                team_id=team,
                title=title,
                body=f"body of {row_id}",
            )
        )

    for i in range(25):
        add(f"t-u-p-{i:02d}", "tasks", U, "", f"personal task {i} {'alpha' if i % 2 else 'beta'}")
    for i in range(5):
        add(f"t-u-t1-{i:02d}", "tasks", U, T1, f"team one task {i} alpha")
    for i in range(3):
        add(f"t-u-t2-{i:02d}", "tasks", U, T2, f"team two task {i} alpha")
    for i in range(5):
        add(f"t-v-p-{i:02d}", "tasks", V, "", f"other user task {i} alpha")
    for i in range(3):
        add(f"n-u-p-{i:02d}", "notes", U, "", f"note {i} alpha")
    add("m-u-p-00", "memory", U, "", "memory alpha")
    add("c-u-p-00", "credentials", U, "", "credential alpha")
    return out


async def import_rows(home: Path, items: list[common_pb2.ResourceItem]) -> None:
    async with internal_channel_as(home, "resource-service", "federation-gateway") as channel:
        await resources_pb2_grpc.ResourceSourceStub(channel).ImportResources(
            resources_pb2.ImportResourcesRequest(items=items), timeout=30
        )


@dataclass
class PeerCert:
    """A peer's client certificate on B, with the grant it carries."""

    grant_id: str
    peer_id: str
    subject: str
    key_pem: bytes
    cert_pem: bytes
    chain_pem: bytes
    serial: str


def make_csr(name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


async def admin_call(inst: Instance, method: str, request: Any) -> Any:
    config = load_config(inst.home)
    async with admin_channel(config) as channel:
        stub = gateway_pb2_grpc.FederationAdminStub(channel)
        return await getattr(stub, method)(request, metadata=admin_metadata(config), timeout=30)


async def issue(
    inst: Instance, csr_pem: bytes, *, grant_id: str, subject: str, peer_id: str
) -> ca_pb2.IssueCertificateResponse:
    """A certificate from B's CA for the grant and subject given, as the gateway asks."""
    async with internal_channel_as(inst.home, "ca-service", "federation-gateway") as channel:
        return await ca_pb2_grpc.CertificateAuthorityStub(channel).IssueCertificate(
            ca_pb2.IssueCertificateRequest(
                csr_pem=csr_pem.decode(),
                grant_id=grant_id,
                subject_user_id=subject,
                peer_id=peer_id,
            ),
            timeout=30,
        )


async def grant_with_cert(
    inst: Instance,
    scope: dict[str, Any],
    *,
    subject: str = U,
    expires_at: dt.datetime | None = None,
    activate: bool = True,
    peer_name: str = "",
) -> PeerCert:
    """Create a grant for a new peer (or for ``peer_name``), mint its certificate, and
    activate both."""
    request = grants_pb2.CreateGrantRequest(
        subject_user_id=subject,
        peer_name=peer_name or f"peer-{uuid.uuid4().hex[:10]}",
        scope_json=json.dumps(scope),
        allow_sensitive=True,
    )
    if expires_at is not None:
        request.expires_at.FromDatetime(expires_at)
    created = await admin_call(inst, "CreateGrant", request)
    grant_id, peer_id = created.grant.id, created.peer.id
    key_pem, csr_pem = make_csr(created.peer.name)
    issued = await issue(inst, csr_pem, grant_id=grant_id, subject=subject, peer_id=peer_id)
    if activate:
        async with internal_channel_as(inst.home, "grants-service", "enrollment-service") as ch:
            await grants_pb2_grpc.GrantsStub(ch).ActivateGrantAndPeer(
                grants_pb2.ActivateGrantAndPeerRequest(
                    grant_id=grant_id,
                    peer_id=peer_id,
                    cert_serial=issued.serial,
                    cert_pem=issued.certificate_pem,
                    cert_not_after=issued.not_after,
                ),
                timeout=30,
            )
    return PeerCert(
        grant_id=grant_id,
        peer_id=peer_id,
        subject=subject,
        key_pem=key_pem,
        cert_pem=issued.certificate_pem.encode(),
        chain_pem="".join(issued.chain_pem).encode(),
        serial=issued.serial,
    )


def federation_channel(
    inst: Instance,
    key_pem: bytes,
    cert_chain_pem: bytes,
    root_pem: bytes | None = None,
    *,
    port: int | None = None,
) -> grpc.aio.Channel:
    """A raw mTLS channel to B's federation listener, as a peer gateway would open it."""
    config = load_config(inst.home)
    roots = root_pem or (config.federation_pki_dir / "root.crt").read_bytes()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key_pem, certificate_chain=cert_chain_pem
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port or config.ports.federation}", credentials, options=CLIENT_OPTIONS
    )


class Peer:
    """A connected peer: a channel with the certificate, and a Federation stub."""

    def __init__(self, inst: Instance, cert: PeerCert, *, port: int | None = None) -> None:
        self.cert = cert
        self.channel = federation_channel(
            inst, cert.key_pem, cert.cert_pem + cert.chain_pem, port=port
        )
        self.stub = gateway_pb2_grpc.FederationStub(self.channel)

    async def __aenter__(self) -> Peer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()


async def refusal(awaitable: Any) -> RemoteError:
    """Await a call that must fail; return its error as the caller sees it."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return RemoteError.from_rpc_error(info.value)


async def list_all(
    stub: gateway_pb2_grpc.FederationStub, resource: str, page_size: int = 0
) -> tuple[list[str], int]:
    ids: list[str] = []
    token = ""
    pages = 0
    while True:
        reply = await stub.List(
            gateway_pb2.ListRequest(resource=resource, page_size=page_size, page_token=token),
            timeout=10,
        )
        pages += 1
        ids += [i.id for i in reply.items]
        token = reply.next_page_token
        if not token:
            return ids, pages


async def audit_rows(inst: Instance, peer_id: str) -> list[gateway_pb2.AuditEntry]:
    reply = await admin_call(
        inst, "ListAudit", gateway_pb2.ListAuditRequest(peer_id=peer_id, limit=1000)
    )
    return list(reply.entries)


MAIN_SCOPE = {
    "resources": ["tasks", "notes"],
    "excluded_resources": ["credentials"],
    "filters": {"tasks": {"include_teams": [T1], "include_personal": True}},
    "max_rows_per_query": 10,
}
VISIBLE_TASKS = sorted(
    [f"t-u-p-{i:02d}" for i in range(25)] + [f"t-u-t1-{i:02d}" for i in range(5)]
)


# ---- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    inst = Instance(tmp_path_factory.mktemp("fed"), "b")
    set_rate_limit(inst, per_second=20, burst=60)
    inst.start()
    asyncio.run(import_rows(inst.home, rows()))
    yield inst
    inst.stop()


@pytest.fixture(scope="module")
def main_cert(b: Instance) -> PeerCert:
    return asyncio.run(grant_with_cert(b, MAIN_SCOPE))


# ---- the core path ----------------------------------------------------------------------


async def test_capabilities_describe_the_grant(b: Instance, main_cert: PeerCert) -> None:
    async with Peer(b, main_cert) as peer:
        caps = await peer.stub.Capabilities(gateway_pb2.CapabilitiesRequest(), timeout=10)
    assert list(caps.resources) == ["notes", "tasks"]
    assert list(caps.verbs) == ["capabilities", "list", "get", "search"]
    assert caps.max_rows_per_query == 10
    assert caps.rate_limit_per_second == 20 and caps.rate_limit_burst == 60
    assert caps.grant_id == main_cert.grant_id and caps.subject_user_id == U
    assert caps.server_version


async def test_paging_returns_every_visible_row_exactly_once(
    b: Instance, main_cert: PeerCert
) -> None:
    async with Peer(b, main_cert) as peer:
        ids, pages = await list_all(peer.stub, "tasks", page_size=7)
        assert ids == VISIBLE_TASKS  # each once, in id order
        assert pages == 5  # 30 rows, 7 per page
        default_ids, default_pages = await list_all(peer.stub, "tasks")
        assert default_ids == VISIBLE_TASKS and default_pages == 3  # 0 → the cap of 10


async def test_row_cap_clamps_an_over_large_page(b: Instance, main_cert: PeerCert) -> None:
    async with Peer(b, main_cert) as peer:
        reply = await peer.stub.List(
            gateway_pb2.ListRequest(resource="tasks", page_size=10_000), timeout=10
        )
        assert len(reply.items) == 10 and reply.next_page_token
        search = await peer.stub.Search(
            gateway_pb2.SearchRequest(resource="tasks", query="alpha", limit=10_000), timeout=10
        )
        assert len(search.items) == 10
        err = await refusal(
            peer.stub.List(gateway_pb2.ListRequest(resource="tasks", page_size=-1), timeout=10)
        )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "PAGE_SIZE_INVALID"


async def test_resource_not_granted(b: Instance, main_cert: PeerCert) -> None:
    async with Peer(b, main_cert) as peer:
        for call in (
            peer.stub.List(gateway_pb2.ListRequest(resource="memory"), timeout=10),
            peer.stub.Get(gateway_pb2.GetRequest(resource="memory", id="m-u-p-00"), timeout=10),
            peer.stub.Search(gateway_pb2.SearchRequest(resource="memory", query="a"), timeout=10),
        ):
            err = await refusal(call)
            assert err.code == grpc.StatusCode.PERMISSION_DENIED
            assert err.reason == "RESOURCE_NOT_GRANTED"


async def test_excluded_resource(b: Instance, main_cert: PeerCert) -> None:
    async with Peer(b, main_cert) as peer:
        err = await refusal(
            peer.stub.Get(gateway_pb2.GetRequest(resource="credentials", id="c-u-p-00"), timeout=10)
        )
    assert err.code == grpc.StatusCode.PERMISSION_DENIED and err.reason == "RESOURCE_EXCLUDED"


async def test_ungranted_team_rows_are_invisible(b: Instance, main_cert: PeerCert) -> None:
    async with Peer(b, main_cert) as peer:
        ids, _ = await list_all(peer.stub, "tasks")
        assert not [i for i in ids if i.startswith("t-u-t2-")]
        err = await refusal(
            peer.stub.Get(gateway_pb2.GetRequest(resource="tasks", id="t-u-t2-00"), timeout=10)
        )
        assert err.code == grpc.StatusCode.NOT_FOUND
        found = await peer.stub.Search(
            gateway_pb2.SearchRequest(resource="tasks", query="team two"), timeout=10
        )
        assert list(found.items) == []


async def test_other_users_rows_are_invisible_and_not_an_oracle(
    b: Instance, main_cert: PeerCert
) -> None:
    async with Peer(b, main_cert) as peer:
        ids, _ = await list_all(peer.stub, "tasks")
        assert not [i for i in ids if i.startswith("t-v-")]
        outside = await refusal(
            peer.stub.Get(gateway_pb2.GetRequest(resource="tasks", id="t-v-p-00"), timeout=10)
        )
        missing = await refusal(
            peer.stub.Get(gateway_pb2.GetRequest(resource="tasks", id="t-nope-00"), timeout=10)
        )
        found = await peer.stub.Search(
            gateway_pb2.SearchRequest(resource="tasks", query="other user"), timeout=10
        )
    # A missing row and someone else's row get exactly the same answer.
    assert outside.code == missing.code == grpc.StatusCode.NOT_FOUND
    assert (outside.reason, outside.message) == (missing.reason, missing.message)
    assert list(found.items) == []


async def test_get_and_search_inside_the_scope(b: Instance, main_cert: PeerCert) -> None:
    async with Peer(b, main_cert) as peer:
        got = await peer.stub.Get(
            gateway_pb2.GetRequest(resource="tasks", id="t-u-t1-03"), timeout=10
        )
        found = await peer.stub.Search(
            gateway_pb2.SearchRequest(resource="tasks", query="team one"), timeout=10
        )
    assert got.item.id == "t-u-t1-03" and got.item.team_id == T1 and got.item.owner_user_id == U
    assert sorted(i.id for i in found.items) == [f"t-u-t1-{i:02d}" for i in range(5)]


async def test_personal_rows_off(b: Instance) -> None:
    cert = await grant_with_cert(
        b,
        {
            "resources": ["tasks"],
            "filters": {"tasks": {"include_teams": [T1], "include_personal": False}},
        },
    )
    async with Peer(b, cert) as peer:
        ids, _ = await list_all(peer.stub, "tasks")
        assert ids == [f"t-u-t1-{i:02d}" for i in range(5)]
        err = await refusal(
            peer.stub.Get(gateway_pb2.GetRequest(resource="tasks", id="t-u-p-01"), timeout=10)
        )
        assert err.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "bad_id",
    ["", "../etc/passwd", "' OR 1=1 --", "a" * 65, "t-u-p-01\x00", "tâche", "t u p", "%"],
)
async def test_hostile_ids_are_refused(b: Instance, main_cert: PeerCert, bad_id: str) -> None:
    async with Peer(b, main_cert) as peer:
        err = await refusal(
            peer.stub.Get(gateway_pb2.GetRequest(resource="tasks", id=bad_id), timeout=10)
        )
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "ID_INVALID"


async def test_hostile_resource_names_and_queries(b: Instance, main_cert: PeerCert) -> None:
    async with Peer(b, main_cert) as peer:
        for resource in ("tasks'; DROP TABLE resources; --", "", "TASKS", "x" * 5000):
            err = await refusal(
                peer.stub.List(gateway_pb2.ListRequest(resource=resource), timeout=10)
            )
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT, resource
            assert err.reason == "RESOURCE_UNKNOWN"
        for query in ("", "   ", "x" * 1001, "a\x00b", " ".join(f"w{i}" for i in range(33))):
            err = await refusal(
                peer.stub.Search(
                    gateway_pb2.SearchRequest(resource="tasks", query=query), timeout=10
                )
            )
            assert err.reason == "QUERY_INVALID"
        # FTS syntax is only ever words: no operator reaches the index.
        found = await peer.stub.Search(
            gateway_pb2.SearchRequest(resource="tasks", query='alpha OR "x" NEAR(a b) *'),
            timeout=10,
        )
        assert all(i.owner_user_id == U for i in found.items)


async def test_hostile_page_tokens_are_refused(b: Instance, main_cert: PeerCert) -> None:
    other = await grant_with_cert(b, MAIN_SCOPE)
    async with Peer(b, main_cert) as peer, Peer(b, other) as other_peer:
        first = await peer.stub.List(gateway_pb2.ListRequest(resource="tasks"), timeout=10)
        token = first.next_page_token
        notes_token = (
            await peer.stub.List(gateway_pb2.ListRequest(resource="notes", page_size=1), timeout=10)
        ).next_page_token
        assert token and notes_token
        flipped = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
        hostile = [
            "garbage",
            "=" * 40,
            token[:-4],  # truncated
            flipped,  # one character changed
            token + "AAAA",  # extended
            "x" * 10_000,
            notes_token,  # another resource
        ]
        for bad in hostile:
            err = await refusal(
                peer.stub.List(
                    gateway_pb2.ListRequest(resource="tasks", page_token=bad), timeout=10
                )
            )
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT, bad[:30]
            assert err.reason == "PAGE_TOKEN_INVALID"
        # A valid token of one grant is useless under another grant.
        err = await refusal(
            other_peer.stub.List(
                gateway_pb2.ListRequest(resource="tasks", page_token=token), timeout=10
            )
        )
        assert err.reason == "PAGE_TOKEN_INVALID"
        # ... and still good for its own grant.
        second = await peer.stub.List(
            gateway_pb2.ListRequest(resource="tasks", page_token=token), timeout=10
        )
        assert second.items[0].id > first.items[-1].id


async def test_concurrent_identical_lists_under_two_grants_get_their_own_cursors(
    b: Instance,
) -> None:
    """Two grants with the same scope share resource-service reads (identical reads), but
    each grant's pages carry cursors bound to that grant only. (Fresh grants: the module's
    main grant may have spent its rate-limit burst in earlier tests.)"""
    one, other = [await grant_with_cert(b, MAIN_SCOPE) for _ in range(2)]
    async with Peer(b, one) as peer, Peer(b, other) as other_peer:
        request = gateway_pb2.ListRequest(resource="tasks")
        replies = await asyncio.gather(
            *(p.stub.List(request, timeout=10) for _ in range(12) for p in (peer, other_peer))
        )
        assert all(list(r.items) == list(replies[0].items) for r in replies)
        mine = {r.next_page_token for r in replies[0::2]}
        theirs = {r.next_page_token for r in replies[1::2]}
        assert mine.isdisjoint(theirs)
        for owner, stranger, tokens in ((peer, other_peer, mine), (other_peer, peer, theirs)):
            for token in tokens:
                following = gateway_pb2.ListRequest(resource="tasks", page_token=token)
                assert (await owner.stub.List(following, timeout=10)).items
                err = await refusal(stranger.stub.List(following, timeout=10))
                assert err.reason == "PAGE_TOKEN_INVALID"


# ---- identity, revocation, suspension ---------------------------------------------------


async def test_certificate_from_another_ca_fails_the_handshake(
    b: Instance, main_cert: PeerCert
) -> None:
    from ca_service.backends.local import LocalCABackend, create_local_ca
    from ca_service.domain import validate_csr

    material = create_local_ca("intruder")
    backend = LocalCABackend(
        material.root_certificate, material.intermediate_certificate, material.intermediate_key
    )
    key_pem, csr_pem = make_csr("intruder")
    # Same grant and subject as a real, active grant: only the issuer differs.
    signed = await backend.sign(
        validate_csr(csr_pem),
        grant_id=main_cert.grant_id,
        subject_user_id=U,
        peer_id=main_cert.peer_id,
        lifetime=dt.timedelta(hours=1),
    )
    pem = serialization.Encoding.PEM
    chain = signed.certificate.public_bytes(pem) + b"".join(
        c.public_bytes(pem) for c in (signed.chain or [material.intermediate_certificate])
    )
    async with federation_channel(b, key_pem, chain) as channel:
        err = await refusal(
            gateway_pb2_grpc.FederationStub(channel).Capabilities(
                gateway_pb2.CapabilitiesRequest(), timeout=10
            )
        )
    assert err.code == grpc.StatusCode.UNAVAILABLE  # no TLS session, so no RPC at all


async def test_certificate_without_grant_is_unauthenticated(b: Instance) -> None:
    """The gateway's own server certificate chains to the same CA but carries no grant."""
    fed = load_config(b.home).federation_pki_dir
    async with federation_channel(
        b, (fed / "server.key").read_bytes(), (fed / "server.crt").read_bytes()
    ) as channel:
        err = await refusal(
            gateway_pb2_grpc.FederationStub(channel).Capabilities(
                gateway_pb2.CapabilitiesRequest(), timeout=10
            )
        )
    # Refused either at the handshake (serverAuth-only EKU) or by the gateway: never served.
    assert err.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE)
    if err.code == grpc.StatusCode.UNAUTHENTICATED:
        assert err.reason == "CERT_NO_GRANT"


async def test_revoked_serial_is_refused_on_the_next_request(b: Instance) -> None:
    cert = await grant_with_cert(b, MAIN_SCOPE)
    async with Peer(b, cert) as peer:
        await peer.stub.Capabilities(gateway_pb2.CapabilitiesRequest(), timeout=10)
        async with internal_channel_as(b.home, "ca-service", "federation-gateway") as channel:
            await ca_pb2_grpc.CertificateAuthorityStub(channel).RevokeCertificate(
                ca_pb2.RevokeCertificateRequest(serial=cert.serial, reason="test"), timeout=10
            )
        err = await _next_refusal(peer)
    assert err.code == grpc.StatusCode.PERMISSION_DENIED and err.reason == "CERT_REVOKED"
    # The refusal is found under the peer (`audit list --peer`), as RUNBOOK advises.
    refusals = [r for r in await audit_rows(b, cert.peer_id) if r.reason == "CERT_REVOKED"]
    assert refusals and refusals[0].outcome == "denied"
    assert refusals[0].grant_id == cert.grant_id


async def test_grant_revoke_through_the_admin_api_revokes_its_certificates(b: Instance) -> None:
    """`grant revoke` puts the grant's serials on every gateway's revoked set, not only the
    grant's status: the certificate is dead even if the grant row were ever restored."""
    cert = await grant_with_cert(b, MAIN_SCOPE)
    code, _, err = b.cli("federation", "grant", "revoke", cert.grant_id, "--reason", "test")
    assert code == 0, err
    async with internal_channel_as(b.home, "ca-service", "federation-gateway") as channel:
        listed = await ca_pb2_grpc.CertificateAuthorityStub(channel).ListRevocations(
            ca_pb2.ListRevocationsRequest(), timeout=10
        )
    revoked = {r.serial: r for r in listed.revocations}
    assert cert.serial in revoked
    assert revoked[cert.serial].grant_id == cert.grant_id
    assert revoked[cert.serial].reason == "test"


async def _next_refusal(peer: Peer) -> RemoteError:
    """The next request after a change; the change reaches the gateway over a watch stream,
    so allow the documented bound (≤ 1 s) rather than assume it is instantaneous."""
    deadline = asyncio.get_running_loop().time() + 1.0
    while True:
        try:
            await peer.stub.List(gateway_pb2.ListRequest(resource="tasks"), timeout=10)
        except grpc.aio.AioRpcError as err:
            return RemoteError.from_rpc_error(err)
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("still served more than 1 s after the change")
        await asyncio.sleep(0.05)


async def test_revoked_grant_is_refused_on_the_next_request(b: Instance) -> None:
    cert = await grant_with_cert(b, MAIN_SCOPE)
    async with Peer(b, cert) as peer:
        await peer.stub.List(gateway_pb2.ListRequest(resource="tasks"), timeout=10)
        # Straight to grants-service: the admin API would revoke the certificate too, and
        # this test is about the grant's status on its own.
        async with internal_channel_as(b.home, "grants-service", "federation-gateway") as ch:
            await grants_pb2_grpc.GrantsStub(ch).RevokeGrant(
                grants_pb2.RevokeGrantRequest(id=cert.grant_id), timeout=10
            )
        err = await _next_refusal(peer)
    assert err.code == grpc.StatusCode.PERMISSION_DENIED and err.reason == "GRANT_REVOKED"


async def test_suspended_peer_is_refused_on_the_next_request_and_resumes(b: Instance) -> None:
    cert = await grant_with_cert(b, MAIN_SCOPE)
    async with Peer(b, cert) as peer:
        await peer.stub.List(gateway_pb2.ListRequest(resource="tasks"), timeout=10)
        await admin_call(
            b,
            "SetPeerState",
            grants_pb2.SetPeerStateRequest(id=cert.peer_id, state=grants_pb2.PEER_STATE_SUSPENDED),
        )
        err = await _next_refusal(peer)
        assert err.code == grpc.StatusCode.PERMISSION_DENIED and err.reason == "PEER_SUSPENDED"
        await admin_call(
            b,
            "SetPeerState",
            grants_pb2.SetPeerStateRequest(id=cert.peer_id, state=grants_pb2.PEER_STATE_ACTIVE),
        )
        await asyncio.sleep(0.6)  # past the grant cache TTL, whether or not the event came
        await peer.stub.List(gateway_pb2.ListRequest(resource="tasks"), timeout=10)


async def test_each_grant_of_one_peer_is_served_with_its_own_certificate(b: Instance) -> None:
    """A peer holding grants for two users: enrolling the second must not switch the first
    one's certificate off (the gate checks a certificate against its own grant), and a
    certificate is refused under any grant but its own."""
    name = f"peer-{uuid.uuid4().hex[:10]}"
    first = await grant_with_cert(b, MAIN_SCOPE, peer_name=name)
    second = await grant_with_cert(b, MAIN_SCOPE, subject=str(uuid.uuid4()), peer_name=name)
    assert first.peer_id == second.peer_id
    for cert in (first, second):
        async with Peer(b, cert) as peer:
            caps = await peer.stub.Capabilities(gateway_pb2.CapabilitiesRequest(), timeout=10)
            assert (caps.grant_id, caps.subject_user_id) == (cert.grant_id, cert.subject)


@pytest.mark.parametrize(
    ("subject", "reason"), [(U, "CERT_NOT_CURRENT"), (V, "PEER_GRANT_MISMATCH")]
)
async def test_a_certificate_the_grant_was_not_activated_with_is_refused(
    b: Instance, subject: str, reason: str
) -> None:
    """A certificate from B's own CA naming an active grant is still refused unless it is
    the one enrollment (or the last renewal) made current for that grant's peer and
    subject: a second certificate for the grant, or one naming another user."""
    cert = await grant_with_cert(b, MAIN_SCOPE)
    key_pem, csr_pem = make_csr("cross-wired")
    other = await issue(b, csr_pem, grant_id=cert.grant_id, subject=subject, peer_id=cert.peer_id)
    crossed = PeerCert(
        grant_id=cert.grant_id,
        peer_id=cert.peer_id,
        subject=subject,
        key_pem=key_pem,
        cert_pem=other.certificate_pem.encode(),
        chain_pem="".join(other.chain_pem).encode(),
        serial=other.serial,
    )
    async with Peer(b, crossed) as peer:
        err = await refusal(peer.stub.List(gateway_pb2.ListRequest(resource="tasks"), timeout=10))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED and err.reason == reason
    # The grant's own certificate is still served.
    async with Peer(b, cert) as peer:
        await peer.stub.List(gateway_pb2.ListRequest(resource="tasks"), timeout=10)


# Field 1 (resource) holding bytes that are not UTF-8; and a message cut short.
UNPARSABLE = [b"\x0a\x02\xff\xfe", b"\x0a\x10abc"]


@pytest.mark.parametrize("body", UNPARSABLE)
async def test_a_request_that_does_not_parse_is_refused_audited_and_counted(
    b: Instance, body: bytes
) -> None:
    """INVALID_ARGUMENT REQUEST_MALFORMED (not gRPC's UNKNOWN naming our parser), after
    the certificate, revocation, grant and rate-limit checks, with its audit row."""
    cert = await grant_with_cert(b, MAIN_SCOPE)
    async with Peer(b, cert) as peer:
        raw = peer.channel.unary_unary("/mosaic.federation.v1.Federation/List")
        err = await refusal(raw(body, timeout=10))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "REQUEST_MALFORMED"
    assert "DecodeError" not in err.message and "mosaic" not in err.message
    [row] = await audit_rows(b, cert.peer_id)
    assert (row.verb, row.outcome, row.reason) == ("list", "denied", "REQUEST_MALFORMED")
    assert row.grant_id == cert.grant_id and row.query_hash


async def test_internal_services_refuse_a_request_that_does_not_parse(b: Instance) -> None:
    async with internal_channel_as(b.home, "resource-service", "federation-gateway") as ch:
        raw = ch.unary_unary("/mosaic.federation.v1.ResourceSource/ListResources")
        err = await refusal(raw(UNPARSABLE[0], timeout=10))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "REQUEST_MALFORMED"


async def test_pending_grant_is_not_served(b: Instance) -> None:
    cert = await grant_with_cert(b, MAIN_SCOPE, activate=False)
    async with Peer(b, cert) as peer:
        err = await refusal(peer.stub.List(gateway_pb2.ListRequest(resource="tasks"), timeout=10))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED and err.reason == "GRANT_NOT_ACTIVE"


async def test_expired_grant_is_refused(b: Instance) -> None:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
    cert = await grant_with_cert(b, MAIN_SCOPE, expires_at=expires)
    async with Peer(b, cert) as peer:
        await peer.stub.List(gateway_pb2.ListRequest(resource="tasks"), timeout=10)
        await asyncio.sleep(max(0.0, (expires - dt.datetime.now(dt.UTC)).total_seconds()) + 0.1)
        err = await refusal(peer.stub.List(gateway_pb2.ListRequest(resource="tasks"), timeout=10))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED and err.reason == "GRANT_EXPIRED"


# ---- audit and rate limit ---------------------------------------------------------------


async def test_every_request_is_audited_with_the_request_id_a_received(b: Instance) -> None:
    cert = await grant_with_cert(b, MAIN_SCOPE)
    async with Peer(b, cert) as peer:
        call = peer.stub.List(gateway_pb2.ListRequest(resource="tasks", page_size=3), timeout=10)
        reply = await call
        allowed_rid = dict(await call.trailing_metadata())["x-request-id"]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await peer.stub.List(gateway_pb2.ListRequest(resource="memory"), timeout=10)
        denied_rid = dict(info.value.trailing_metadata())["x-request-id"]
    entries = {e.request_id: e for e in await audit_rows(b, cert.peer_id)}
    allowed, denied = entries[allowed_rid], entries[denied_rid]
    assert (allowed.outcome, allowed.status, allowed.verb, allowed.resource) == (
        "allowed",
        "OK",
        "list",
        "tasks",
    )
    assert allowed.bytes_out == reply.ByteSize() > 0
    assert allowed.grant_id == cert.grant_id and allowed.subject_user_id == U
    assert allowed.peer_id == cert.peer_id and len(allowed.query_hash) == 64
    assert allowed.latency_ms > 0
    assert (denied.outcome, denied.status, denied.reason) == (
        "denied",
        "PERMISSION_DENIED",
        "RESOURCE_NOT_GRANTED",
    )
    assert denied.query_hash != allowed.query_hash


def scrape(inst: Instance, service: str) -> str:
    return metrics.scrape(load_config(inst.home).ports.metrics[service])


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for sample in metrics.samples(text)
    }


async def test_metrics_count_requests_and_refusals_and_name_no_one(
    b: Instance, main_cert: PeerCert
) -> None:
    """Each service serves Prometheus text on its own metrics port. On the gateway, one
    allowed and one refused List move exactly the counters an operator alerts on, and the
    scrape names no grant, peer, user, serial or secret."""
    before = samples(scrape(b, GATEWAY))
    async with Peer(b, main_cert) as peer:
        await peer.stub.List(gateway_pb2.ListRequest(resource="tasks"), timeout=10)
        await refusal(peer.stub.List(gateway_pb2.ListRequest(resource="memory"), timeout=10))
    text = scrape(b, GATEWAY)
    after = samples(text)

    def moved(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    federation = {"grpc_service": "mosaic.federation.v1.Federation", "grpc_method": "List"}
    assert moved("grpc_server_handled_total", **federation, grpc_code="OK") == 1
    assert moved("grpc_server_handled_total", **federation, grpc_code="PERMISSION_DENIED") == 1
    assert moved("grpc_server_handling_seconds_count", **federation) == 2
    audit = {"verb": "list"}
    assert moved("mosaic_audit_rows_total", **audit, code="OK", outcome="allowed", reason="") == 1
    assert (
        moved(
            "mosaic_audit_rows_total",
            **audit,
            code="PERMISSION_DENIED",
            outcome="denied",
            reason="RESOURCE_NOT_GRANTED",
        )
        == 1
    )
    assert after[("mosaic_revocations_loaded", frozenset())] == 1
    secrets = [
        load_config(b.home).admin_token_file.read_text().strip(),
        main_cert.grant_id,
        main_cert.peer_id,
        main_cert.subject,
        main_cert.serial,
    ]
    assert not [s for s in secrets if s.lower() in text.lower()]
    for service in START_ORDER:
        own = samples(scrape(b, service))
        assert own[("mosaic_serving", frozenset())] == 1, service
        assert any(
            name == "mosaic_build_info" and ("service", service) in labels for name, labels in own
        ), service


async def test_audit_list_cli_filters_by_peer(b: Instance, main_cert: PeerCert) -> None:
    async with Peer(b, main_cert) as peer:
        await peer.stub.Capabilities(gateway_pb2.CapabilitiesRequest(), timeout=10)
    code, doc, err = b.cli(
        "federation", "audit", "list", "--peer", main_cert.peer_id, "--limit", "5"
    )
    assert code == 0, (doc, err)
    assert 1 <= len(doc["entries"]) <= 5
    assert {e["peer_id"] for e in doc["entries"]} == {main_cert.peer_id}
    # The peer's name, not only its UUID, in the document and in the table.
    code, shown, _ = b.cli("federation", "peer", "show", main_cert.peer_id)
    assert code == 0
    assert {e["peer_name"] for e in doc["entries"]} == {shown["name"]}
    code, out, _ = b.cli(
        "federation", "audit", "list", "--peer", main_cert.peer_id, "--limit", "5", json_out=False
    )
    assert code == 0 and shown["name"] in out and main_cert.peer_id not in out, out
    stamps = [e["created_at"] for e in doc["entries"]]
    assert stamps == sorted(stamps, reverse=True)
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    code, doc, _ = b.cli("federation", "audit", "list", "--since", future)
    assert code == 0 and doc["entries"] == []


async def test_rate_limit_exceeded_is_refused_with_retry_info_and_audited(b: Instance) -> None:
    cert = await grant_with_cert(b, MAIN_SCOPE)
    async with Peer(b, cert) as peer:

        async def one() -> grpc.aio.AioRpcError | None:
            try:
                await peer.stub.Capabilities(gateway_pb2.CapabilitiesRequest(), timeout=10)
            except grpc.aio.AioRpcError as err:
                return err
            return None

        results = await asyncio.gather(*(one() for _ in range(120)))
    errors = [e for e in results if e is not None]
    assert errors and len(errors) < 120
    err = errors[0]
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(err)
    assert status is not None
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert retry
    info = error_details_pb2.RetryInfo()
    retry[0].Unpack(info)
    assert info.retry_delay.ToNanoseconds() > 0
    entries = await audit_rows(b, cert.peer_id)
    assert len(entries) == 120
    limited = [e for e in entries if e.reason == "RATE_LIMITED"]
    assert len(limited) == len(errors)
    assert all(e.status == "RESOURCE_EXHAUSTED" and e.outcome == "denied" for e in limited)


# ---- the querying side (A) ---------------------------------------------------------------


async def register_outbound(a: Instance, b_inst: Instance, cert: PeerCert, name: str) -> str:
    """Store B as a peer A queries, as enrollment would (A's grants-service)."""
    b_config = load_config(b_inst.home)
    async with internal_channel_as(a.home, "grants-service", "federation-gateway") as channel:
        reply = await grants_pb2_grpc.GrantsStub(channel).RegisterOutboundPeer(
            grants_pb2.RegisterOutboundPeerRequest(
                name=name,
                endpoint=b_config.federation_endpoint,
                cert_pem=cert.cert_pem.decode(),
                ca_bundle_pem=(b_config.federation_pki_dir / "root.crt").read_text(),
                client_key_pem=cert.key_pem.decode(),
                remote_grant_id=cert.grant_id,
                remote_subject_user_id=cert.subject,
            ),
            timeout=10,
        )
    return str(reply.peer.id)


@pytest.fixture(scope="module")
def a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    inst = Instance(tmp_path_factory.mktemp("fed-a"), "a")
    inst.start()
    yield inst
    inst.stop()


async def test_client_builds_one_channel_under_50_concurrent_first_calls(
    a: Instance, b: Instance
) -> None:
    cert = await grant_with_cert(b, MAIN_SCOPE)
    peer_id = await register_outbound(a, b, cert, "b-concurrent")
    async with internal_channel_as(a.home, "grants-service", "federation-gateway") as channel:
        client = FederationClient(grants_pb2_grpc.GrantsStub(channel))
        request = gateway_pb2.QueryRequest(
            peer="b-concurrent", capabilities=gateway_pb2.CapabilitiesRequest()
        )
        try:
            replies = await asyncio.gather(*(client.query(request) for _ in range(50)))
            assert client.builds == 1
            assert all(r.capabilities.grant_id == cert.grant_id for r in replies)
            assert all(r.request_id and not r.stale for r in replies)
            # By id as well as by name: still the same channel.
            await client.query(
                gateway_pb2.QueryRequest(
                    peer=peer_id, capabilities=gateway_pb2.CapabilitiesRequest()
                )
            )
            assert client.builds == 1
            client.flush(peer_id)
            await client.query(request)
            assert client.builds == 2  # flushed → rebuilt on next use
        finally:
            await client.close()


async def test_client_errors_are_typed_with_the_servers_reason(a: Instance, b: Instance) -> None:
    cert = await grant_with_cert(b, MAIN_SCOPE)
    await register_outbound(a, b, cert, "b-typed")
    async with internal_channel_as(a.home, "grants-service", "federation-gateway") as channel:
        client = FederationClient(grants_pb2_grpc.GrantsStub(channel))
        try:
            with pytest.raises(PeerError) as info:
                await client.query(
                    gateway_pb2.QueryRequest(
                        peer="b-typed", list=gateway_pb2.ListRequest(resource="memory")
                    )
                )
            assert info.value.code == "FORBIDDEN"
            assert info.value.server_reason == "RESOURCE_NOT_GRANTED"
            assert info.value.request_id
            with pytest.raises(PeerError) as info:
                await client.query(
                    gateway_pb2.QueryRequest(
                        peer="b-typed", get=gateway_pb2.GetRequest(resource="tasks", id="t-v-p-00")
                    )
                )
            assert info.value.code == "NOT_FOUND"
            with pytest.raises(PeerError) as info:
                await client.query(
                    gateway_pb2.QueryRequest(
                        peer="nobody", capabilities=gateway_pb2.CapabilitiesRequest()
                    )
                )
            assert info.value.code == "PEER_NOT_FOUND"
            await admin_call(b, "RevokeGrant", grants_pb2.RevokeGrantRequest(id=cert.grant_id))
            await asyncio.sleep(0.6)  # grant cache TTL on B
            with pytest.raises(PeerError) as info:
                await client.query(
                    gateway_pb2.QueryRequest(
                        peer="b-typed", capabilities=gateway_pb2.CapabilitiesRequest()
                    )
                )
            # The admin API revokes the grant and its certificates: either refusal is right.
            assert info.value.code == "FORBIDDEN"
            assert info.value.server_reason in ("GRANT_REVOKED", "CERT_REVOKED")
        finally:
            await client.close()


async def test_a_peers_hostile_titles_are_shown_as_text_not_obeyed(
    a: Instance, b: Instance
) -> None:
    """B's rows reach A's operator's terminal. A title holding rich markup used to crash
    `mosaic federation query … list` (MarkupError: B's data stopped A from reading it), and
    escape sequences (title change, screen clear) reached the terminal raw. The human view
    shows them as text; --json keeps them exact."""
    owner = str(uuid.uuid4())
    titles = {
        "h-markup": "[/] hostile [link=https://evil.example]click[/link]",
        "h-escape": "\x1b]0;owned\x07\x1b[2J\x1b[31mRED\x9b0m\r\x7fend",
    }
    await import_rows(
        b.home,
        [
            common_pb2.ResourceItem(id=i, resource="notes", owner_user_id=owner, title=t, body="b")
            for i, t in titles.items()
        ],
    )
    cert = await grant_with_cert(b, {"resources": ["notes"]}, subject=owner)
    await register_outbound(a, b, cert, "b-hostile")

    code, out, err = await asyncio.to_thread(
        a.cli, "federation", "query", "b-hostile", "list", "notes", json_out=False
    )
    assert (code, err) == (0, ""), out
    assert not {"\x1b", "\x07", "\x9b", "\x7f"} & set(out), repr(out)
    assert titles["h-markup"] in out
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mRED\\x9b0m\\x0d\\x7fend" in out
    code, doc, err = await asyncio.to_thread(
        a.cli, "federation", "query", "b-hostile", "list", "notes"
    )
    assert code == 0, (doc, err)
    assert {i["id"]: i["title"] for i in doc["items"]} == titles


async def test_a_peers_invisible_format_characters_are_shown_escaped(
    a: Instance, b: Instance
) -> None:
    """Bidi overrides and isolates reorder what the operator sees ("Trojan Source": a title
    stored as "invoice \\u202egnp.exe" reads "invoice exe.png"), and zero-width characters,
    the byte order mark and line/paragraph separators hide text or break lines unseen. The
    human view writes each as its escape, in stored order; --json keeps the exact titles
    and, being ASCII, passes none of them to the terminal raw."""
    owner = str(uuid.uuid4())
    titles = {
        "h-rlo": "invoice \u202egnp.exe",
        "h-isolates": "ok\u2066\u2067\u2068hidden\u2069\u061c",
        "h-invisible": "a\u200bb\u200cc\u200dd\u200ee\u200ff\ufeffg\u2028h\u2029i\U000e0041",
    }
    shown = {
        "h-rlo": "invoice \\u202egnp.exe",
        "h-isolates": "ok\\u2066\\u2067\\u2068hidden\\u2069\\u061c",
        "h-invisible": (
            "a\\u200bb\\u200cc\\u200dd\\u200ee\\u200ff\\ufeffg\\u2028h\\u2029i\\U000e0041"
        ),
    }
    await import_rows(
        b.home,
        [
            common_pb2.ResourceItem(id=i, resource="notes", owner_user_id=owner, title=t, body="b")
            for i, t in titles.items()
        ],
    )
    cert = await grant_with_cert(b, {"resources": ["notes"]}, subject=owner)
    await register_outbound(a, b, cert, "b-bidi")
    unshown = set("".join(titles.values())) - set(string.printable)

    code, out, err = await asyncio.to_thread(
        a.cli, "federation", "query", "b-bidi", "list", "notes", json_out=False
    )
    assert (code, err) == (0, ""), out
    assert not unshown & set(out), repr(out)
    flat = "".join(out.split())  # the table folds long cells
    for escaped in shown.values():
        assert "".join(escaped.split()) in flat, (escaped, out)

    # --json given by hand: the raw document, before the helper parses it.
    code, raw, err = await asyncio.to_thread(
        a.cli, "--json", "federation", "query", "b-bidi", "list", "notes", json_out=False
    )
    assert code == 0, (raw, err)
    assert raw.isascii(), repr(raw)
    assert {i["id"]: i["title"] for i in json.loads(raw)["items"]} == titles


async def test_query_get_and_search_show_the_body_escaped_and_a_missing_row_is_no_oracle(
    a: Instance, b: Instance
) -> None:
    """`query get` and `query search` used to show a row's body only with --json. The human
    view of `get` shows it whole (its lines kept, controls and bidi characters escaped);
    `search` shows its start. A missing row and a row outside the grant's scope get the
    same answer, now "no such row" with a remediation instead of an empty one."""
    owner, other = str(uuid.uuid4()), str(uuid.uuid4())
    hostile = "first line\nsecond \x1b[2Jline \u202egnp.exe"
    await import_rows(
        b.home,
        [
            common_pb2.ResourceItem(
                id="body-1", resource="notes", owner_user_id=owner, title="t", body=hostile
            ),
            common_pb2.ResourceItem(
                id="body-2", resource="notes", owner_user_id=owner, title="long", body="zz " * 400
            ),
            common_pb2.ResourceItem(
                id="body-other", resource="notes", owner_user_id=other, title="t", body="x"
            ),
        ],
    )
    cert = await grant_with_cert(b, {"resources": ["notes"]}, subject=owner)
    await register_outbound(a, b, cert, "b-bodies")

    code, out, err = await asyncio.to_thread(
        a.cli, "federation", "query", "b-bodies", "get", "notes", "body-1", json_out=False
    )
    assert (code, err) == (0, ""), out
    assert not {"\x1b", "\u202e"} & set(out), repr(out)
    assert "first line" in out and "second \\x1b[2Jline \\u202egnp.exe" in out

    code, out, err = await asyncio.to_thread(
        a.cli, "federation", "query", "b-bodies", "search", "notes", "zz", json_out=False
    )
    assert (code, err) == (0, ""), out
    assert "zz zz" in out and "(1039 more" in out  # 1199 characters, 160 shown

    answers = []
    for row_id in ("no-such-row", "body-other"):
        code, doc, _ = await asyncio.to_thread(
            a.cli, "federation", "query", "b-bodies", "get", "notes", row_id
        )
        assert code == 1, doc
        answers.append({k: v for k, v in doc["error"].items() if k != "request_id"})
    assert answers[0] == answers[1]
    assert answers[0]["code"] == "NOT_FOUND"
    assert answers[0]["message"] == "no such row"
    assert "check the id" in answers[0]["remediation"]


async def test_a_search_cut_to_fit_one_message_says_so_to_the_querying_operator(
    a: Instance, b: Instance
) -> None:
    """60 matching rows of 90 KiB are over gRPC's 4 MiB message cap: B's resource-service
    returns the rows that fit. A's operator used to get fewer rows than the limit with no
    way to know rows were left out; the answer now says `truncated`, through B's gateway
    and A's, in `query search` --json and in its human view. An answer short only because
    of the limit is not truncated."""
    owner = str(uuid.uuid4())
    bulky = [
        common_pb2.ResourceItem(
            id=f"bulky-{n:02d}",
            resource="notes",
            owner_user_id=owner,
            title=f"bulky note {n}",
            body="bulky " * 15_000,
        )
        for n in range(60)
    ]
    for batch in in_batches(bulky):  # an import is one message too
        await import_rows(b.home, batch)
    cert = await grant_with_cert(
        b, {"resources": ["notes"], "max_rows_per_query": 100}, subject=owner
    )
    await register_outbound(a, b, cert, "b-bulky")

    code, doc, err = await asyncio.to_thread(
        a.cli, "federation", "query", "b-bulky", "search", "notes", "bulky", "--limit", "100"
    )
    assert code == 0, (doc, err)
    assert 0 < len(doc["items"]) < 60
    assert doc["truncated"] is True
    code, out, err = await asyncio.to_thread(
        a.cli,
        "federation",
        "query",
        "b-bulky",
        "search",
        "notes",
        "bulky",
        "--limit",
        "100",
        json_out=False,
    )
    assert code == 0, (out, err)
    assert "TRUNCATED" in out

    code, doc, err = await asyncio.to_thread(
        a.cli, "federation", "query", "b-bulky", "search", "notes", "bulky", "--limit", "3"
    )
    assert code == 0, (doc, err)
    assert len(doc["items"]) == 3
    assert doc["truncated"] is False


def test_query_cli_end_to_end_with_real_enrollment_and_stale_answers(
    a: Instance, tmp_path: Path
) -> None:
    """A enrolls with a fresh B for real (`grant token` + `peer add`), queries it through
    `mosaic federation query`, then B stops: a cached answer comes back stale, an uncached
    one fails with NETWORK."""
    b2 = Instance(tmp_path, "b2")
    b2.start()
    try:
        asyncio.run(import_rows(b2.home, rows()))
        scope = tmp_path / "scope.json"
        scope.write_text(json.dumps(MAIN_SCOPE))
        code, grant, err = b2.cli(
            "federation", "grant", "create", "--user", U, "--peer-name", "a", "--scope", str(scope)
        )
        assert code == 0, (grant, err)
        code, token, err = b2.cli("federation", "grant", "token", grant["id"])
        assert code == 0, (token, err)
        code, peer, err = a.cli(
            "federation", "peer", "add", token["enrollment_url"], "--name", "b2", timeout=120
        )
        assert code == 0, (peer, err)

        code, caps, err = a.cli("federation", "query", "b2", "capabilities")
        assert code == 0, (caps, err)
        assert caps["capabilities"]["grant_id"] == grant["id"]
        code, page, _ = a.cli("federation", "query", "b2", "list", "tasks", "--limit", "4")
        assert code == 0, page
        assert [i["id"] for i in page["items"]] == VISIBLE_TASKS[:4]
        assert set(page["items"][0]) >= {
            "id",
            "resource",
            "title",
            "body",
            "owner_user_id",
            "team_id",
            "updated_at",
        }
        assert page["stale"] is False and page["fetched_at"] and page["request_id"]
        code, page2, _ = a.cli(
            "federation",
            "query",
            "b2",
            "list",
            "tasks",
            "--limit",
            "4",
            "--page-token",
            page["next_page_token"],
        )
        assert code == 0 and [i["id"] for i in page2["items"]] == VISIBLE_TASKS[4:8]
        code, got, _ = a.cli("federation", "query", "b2", "get", "tasks", "t-u-t1-00")
        assert code == 0 and got["items"][0]["team_id"] == T1
        code, found, _ = a.cli("federation", "query", "b2", "search", "notes", "alpha")
        assert code == 0 and len(found["items"]) == 3
        code, denied, _ = a.cli("federation", "query", "b2", "list", "memory")
        assert code == 1
        assert denied["error"]["code"] == "FORBIDDEN"
        assert denied["error"]["server_reason"] == "RESOURCE_NOT_GRANTED"

        # B's audit has the request ids A received.
        code, audit, _ = b2.cli("federation", "audit", "list", "--limit", "100")
        assert code == 0
        by_rid = {e["request_id"]: e for e in audit["entries"]}
        assert by_rid[page["request_id"]]["outcome"] == "allowed"
        assert by_rid[denied["error"]["request_id"]]["reason"] == "RESOURCE_NOT_GRANTED"

        b2.stop()
        code, stale, _ = a.cli("federation", "query", "b2", "list", "tasks", "--limit", "4")
        assert code == 0, stale
        assert stale["stale"] is True
        assert stale["fetched_at"] == page["fetched_at"]
        assert stale["items"] == page["items"]
        code, fresh, _ = a.cli("federation", "query", "b2", "list", "notes")
        assert code == 1 and fresh["error"]["code"] == "NETWORK"
    finally:
        b2.stop()


# ---- the core path on PostgreSQL ---------------------------------------------------------


@pytest.mark.postgres
def test_core_path_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    inst = Instance(tmp_path, "bpg", db=postgres_url)
    inst.start()
    try:
        asyncio.run(_core_path(inst))
    finally:
        inst.stop()


async def _core_path(inst: Instance) -> None:
    await import_rows(inst.home, rows())
    cert = await grant_with_cert(inst, MAIN_SCOPE)
    async with Peer(inst, cert) as peer:
        ids, pages = await list_all(peer.stub, "tasks", page_size=7)
        assert ids == VISIBLE_TASKS and pages == 5
        found = await peer.stub.Search(
            gateway_pb2.SearchRequest(resource="tasks", query="team one"), timeout=10
        )
        assert sorted(i.id for i in found.items) == [f"t-u-t1-{i:02d}" for i in range(5)]
        err = await refusal(
            peer.stub.Get(gateway_pb2.GetRequest(resource="tasks", id="t-v-p-00"), timeout=10)
        )
        assert err.code == grpc.StatusCode.NOT_FOUND
        call = peer.stub.Get(gateway_pb2.GetRequest(resource="tasks", id="t-u-p-00"), timeout=10)
        await call
        rid = dict(await call.trailing_metadata())["x-request-id"]
        err = await refusal(
            peer.stub.List(gateway_pb2.ListRequest(resource="credentials"), timeout=10)
        )
        assert err.reason == "RESOURCE_EXCLUDED"
    entries = await audit_rows(inst, cert.peer_id)
    assert len(entries) == 5 + 1 + 1 + 1 + 1
    assert {e.request_id: e.outcome for e in entries}[rid] == "allowed"
    assert [e.outcome for e in entries].count("denied") == 1


# ---- a database outage on PostgreSQL -----------------------------------------------------


@pytest.mark.postgres
def test_a_database_outage_is_unavailable_and_passes(tmp_path: Path) -> None:
    """With its Postgres stopped, B answers UNAVAILABLE with a reason and a retry delay
    (not INTERNAL, which A would take for a broken answer), and serves again as soon as the
    database is back. The cluster is this test's own: stopping the session's would fail
    other tests."""
    server = PostgresServer().start_or_skip()
    try:
        if server.backend != "local":
            pytest.skip("stopping the database needs the local PostgreSQL backend")
        inst = Instance(tmp_path, "bdown", db=server.create_database("mosaic_outage"))
        inst.start()
        try:
            asyncio.run(_through_an_outage(inst, server))
        finally:
            inst.stop()
    finally:
        server.stop()


def _audit_log_row(inst: Instance, saying: str, within_s: float = 20.0) -> dict[str, Any]:
    """The gateway's audit_log doctor row once its detail says ``saying`` (or at the end)."""
    deadline = time.monotonic() + within_s
    while True:
        _, doc, _ = inst.cli("gateway", "doctor")
        [row] = [
            c
            for c in doc["checks"]
            if (c["service"], c["name"]) == ("federation-gateway", "audit_log")
        ]
        if saying in row["detail"] or time.monotonic() > deadline:
            return row
        time.sleep(0.5)


async def _through_an_outage(inst: Instance, server: PostgresServer) -> None:
    await import_rows(inst.home, rows())
    cert = await grant_with_cert(inst, MAIN_SCOPE)
    request = gateway_pb2.ListRequest(resource="tasks", page_size=5)
    async with Peer(inst, cert) as peer:
        before = await peer.stub.List(request, timeout=10)
        # fast, not immediate: this cluster runs synchronous_commit=off, and a crash could
        # lose the grant's own commit (then B rightly answers "no such grant" afterwards).
        server.pause("fast")
        err = await refusal(peer.stub.List(request, timeout=5))
        assert err.code == grpc.StatusCode.UNAVAILABLE, err
        assert err.reason in ("AUDIT_UNAVAILABLE", "DEPENDENCY_UNAVAILABLE"), err
        assert err.retry_after_s
        # The data source itself says why, as every service now does.
        async with internal_channel_as(inst.home, "resource-service", "federation-gateway") as ch:
            source = await refusal(
                resources_pb2_grpc.ResourceSourceStub(ch).ListResources(
                    resources_pb2.ListResourcesRequest(
                        resource="tasks",
                        visibility=common_pb2.Visibility(owner_user_id=U, include_personal=True),
                        limit=1,
                    ),
                    timeout=5,
                )
            )
        assert (source.code, source.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
        assert "postgres" not in source.message.lower() and server.password not in str(source)
        if err.reason == "AUDIT_UNAVAILABLE":
            # The gateway is out (health NOT_SERVING), and the doctor says it still is now.
            audit_row = await asyncio.to_thread(_audit_log_row, inst, "still failing")
            assert "database unreachable" in audit_row["detail"], audit_row
            code, _, _ = inst.cli("gateway", "health", "federation-gateway")
            assert code == 1
        server.resume()
        # With no request at all (a load balancer sends none to a replica that is not
        # serving), health and the doctor's audit_log row recover by themselves.
        code, doc, _ = await asyncio.to_thread(
            inst.cli, "gateway", "doctor", "--wait", "20", timeout=60
        )
        assert code == 0, [c for c in doc["checks"] if not c["ok"]]
        code, health, _ = inst.cli("gateway", "health", "federation-gateway")
        assert (code, health["status"]) == (0, "SERVING")
        after = await peer.stub.List(request, timeout=10)
        assert [i.id for i in after.items] == [i.id for i in before.items]
