"""`peer add` on A reserves its peer name at grants-service before it spends the token.

Two `peer add` runs under one name used to both pass a name check, both redeem their
tokens on B (activating both grants there), and only one could be stored on A: the other
grant stayed active on B with a certificate whose key A had dropped.

A's grants-service is real here (its servicer and store, on SQLite and on Postgres, one
servicer per gateway replica over one database); the serving gateway B is a fake redeem
that can be held midway, since a real one cannot be paused between an enrollment's
reservation and its store."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from federation_gateway.admin import enrollment as enrollment_admin
from federation_gateway.admin.enrollment import EnrollmentAdminMixin, _Accepted
from grants_service import domain
from grants_service.app import MIGRATIONS
from grants_service.servicer import ChangeNotifier, GrantsServicer
from grants_service.store import GrantsStore
from mosaic.config import to_async_postgres_url
from mosaic.db import Database
from mosaic.enrollment_url import build_enrollment_url
from mosaic.errors import ServiceError
from mosaic.federation.v1 import enrollment_pb2, gateway_pb2, grants_pb2
from mosaic.sealing import Sealer, generate_secret, parse_secret
from mosaic.x509ext import serial_hex
from tests.support.federation_fakes import admin_gateway, service_rpc_error
from tests.support.pki import self_signed_pem

WAIT_S = 5.0


class GrantsReplicas:
    """One grants-service database and a servicer (own engine) per gateway replica."""

    def __init__(self, databases: list[Database]) -> None:
        sealer = Sealer(parse_secret(generate_secret()))
        self.databases = databases
        self.stores = [GrantsStore(db) for db in databases]
        self.servicers = [
            GrantsServicer(store, sealer, ChangeNotifier(), sealer_on_disk=lambda: sealer)
            for store in self.stores
        ]

    def backend(self, replica: int) -> Callable[[str, Any], Any]:
        servicer = self.servicers[replica]

        async def call(method: str, request: Any) -> Any:
            try:
                return await getattr(servicer, method)(request, None)
            except ServiceError as exc:
                raise service_rpc_error(exc) from None

        return call

    async def peers(self) -> list[grants_pb2.Peer]:
        reply = await self.servicers[0].ListPeers(grants_pb2.ListPeersRequest(), None)
        return list(reply.peers)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def replicas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[GrantsReplicas]:
    if request.param == "sqlite":
        url, schema = f"sqlite+aiosqlite:///{tmp_path / 'grants.db'}", "grants"
    else:
        url, schema = to_async_postgres_url(request.getfixturevalue("postgres_url")), "grants"
    databases = [Database(url, schema=schema, migrations_dir=MIGRATIONS) for _ in range(2)]
    await databases[0].migrate()
    try:
        yield GrantsReplicas(databases)
    finally:
        for db in databases:
            await db.dispose()


class ServingGateway:
    """B's enrollment listener: records each token redeemed; ``hold`` keeps the redeems of
    the tokens in it waiting until ``answer`` is set; ``refuse`` refuses every redeem."""

    def __init__(self) -> None:
        self.redeemed: list[str] = []
        self.hold: set[str] = set()
        self.redeeming = asyncio.Event()
        self.answer = asyncio.Event()
        self.refuse: ServiceError | None = None

    async def redeem(self, target: Any, root: Any, csr: Any, **_: Any) -> Any:
        self.redeemed.append(target.token)
        if self.refuse is not None:
            raise self.refuse
        if target.token in self.hold:
            self.redeeming.set()
            await self.answer.wait()
        return enrollment_pb2.RedeemResponse(federation_endpoint="127.0.0.1:7443")


@pytest.fixture
def serving(monkeypatch: pytest.MonkeyPatch) -> ServingGateway:
    b = ServingGateway()

    async def fetch_pinned_root(target: Any) -> str:
        return "ROOT"

    async def redeem(self: Any, target: Any, root: Any, csr: Any, **kw: Any) -> Any:
        return await b.redeem(target, root, csr, **kw)

    monkeypatch.setattr(enrollment_admin, "fetch_pinned_root", fetch_pinned_root)
    monkeypatch.setattr(EnrollmentAdminMixin, "_redeem", redeem)
    monkeypatch.setattr(enrollment_admin, "_accept", _accept_own_key)
    return b


def _accept_own_key(reply: Any, key: ec.EllipticCurvePrivateKey, root: Any, target: Any) -> Any:
    """B's answer as A accepts it: a certificate for A's own key (self-signed here)."""
    pem = self_signed_pem(key, "a")
    serial = x509.load_pem_x509_certificate(pem.encode()).serial_number
    return _Accepted(pem, pem, str(uuid.uuid4()), str(uuid.uuid4()), serial_hex(serial))


def _url(token: str) -> str:
    return build_enrollment_url("127.0.0.1", 7444, token, "0" * 64)


async def _add(replicas: GrantsReplicas, replica: int, token: str, name: str = "b") -> Any:
    servicer = EnrollmentAdminMixin(admin_gateway(replicas.backend(replica)))
    request = gateway_pb2.AddPeerRequest(enrollment_url=_url(token), name=name)
    return await asyncio.wait_for(servicer.AddPeer(request, None), WAIT_S)


async def test_a_second_add_under_a_name_being_added_is_refused_before_its_token_is_spent(
    replicas: GrantsReplicas, serving: ServingGateway
) -> None:
    first, second, third = (secrets.token_urlsafe(32) for _ in range(3))
    serving.hold.add(first)
    adding = asyncio.ensure_future(_add(replicas, 0, first))
    await asyncio.wait_for(serving.redeeming.wait(), WAIT_S)

    # On the other replica, while the first add waits for B's answer.
    with pytest.raises(ServiceError) as refused:
        await _add(replicas, 1, second)
    assert (refused.value.code, refused.value.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "PEER_NAME_TAKEN",
    )
    assert "being added right now" in refused.value.message
    assert "token was not used" in refused.value.message
    assert "comes free at" in refused.value.remediation
    assert serving.redeemed == [first]  # the second token was never sent to B

    serving.answer.set()
    added = await asyncio.wait_for(adding, WAIT_S)
    assert added.peer.state == grants_pb2.PEER_STATE_ACTIVE and added.peer.name == "b"
    [peer] = await replicas.peers()
    assert (peer.id, peer.state, peer.has_client_key) == (added.peer.id, added.peer.state, True)
    creds = await replicas.servicers[1].GetPeerCredentials(
        grants_pb2.GetPeerCredentialsRequest(id="b"), None
    )
    assert "PRIVATE KEY" in creds.client_key_pem  # sealed bound to the reserved row

    with pytest.raises(ServiceError) as taken:
        await _add(replicas, 1, third)
    assert taken.value.reason == "PEER_NAME_TAKEN"
    assert "already exists" in taken.value.message
    assert "token was not used" in taken.value.message
    assert serving.redeemed == [first]


async def test_concurrent_reservations_of_one_name_have_exactly_one_winner(
    replicas: GrantsReplicas,
) -> None:
    now = dt.datetime.now(dt.UTC)
    outcomes = await asyncio.gather(
        *(replicas.stores[i % 2].reserve_outbound_peer("b", now=now) for i in range(16)),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, domain.PeerNameTaken)]
    assert len(winners) == 1 and len(refused) == 15, outcomes
    assert all(r.reserved_until == now + domain.OUTBOUND_RESERVATION_TTL for r in refused)


async def test_a_failed_enrollment_lets_the_name_go(
    replicas: GrantsReplicas, serving: ServingGateway
) -> None:
    serving.refuse = ServiceError(
        grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED", "enrollment token is not valid"
    )
    with pytest.raises(ServiceError) as refused:
        await _add(replicas, 0, secrets.token_urlsafe(32))
    assert refused.value.reason == "TOKEN_EXPIRED"
    assert await replicas.peers() == []

    serving.refuse = None
    added = await _add(replicas, 1, secrets.token_urlsafe(32))
    assert added.peer.state == grants_pb2.PEER_STATE_ACTIVE


async def test_a_reservation_left_by_an_add_that_never_finished_lapses(
    replicas: GrantsReplicas,
) -> None:
    store = replicas.stores[0]
    t0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
    crashed = await store.reserve_outbound_peer("b", now=t0)  # its gateway died here

    with pytest.raises(domain.PeerNameTaken) as held:
        await store.reserve_outbound_peer("b", now=t0 + domain.OUTBOUND_RESERVATION_TTL / 2)
    assert held.value.reserved_until == t0 + domain.OUTBOUND_RESERVATION_TTL

    later = t0 + domain.OUTBOUND_RESERVATION_TTL
    taken_over = await replicas.stores[1].reserve_outbound_peer("b", now=later)
    assert taken_over.id != crashed.id and taken_over.state == "pending"
    # Had the first add come back after all, it could not store under the name.
    assert await store.release_outbound_peer(crashed.id) is False
    with pytest.raises(domain.PeerReservationLost):
        await store.register_outbound_peer(
            crashed.id, _new_outbound("b"), sealed_key=b"sealed", now=later, reserved=True
        )


async def test_a_store_that_fails_after_the_redeem_says_the_token_was_used(
    replicas: GrantsReplicas, serving: ServingGateway
) -> None:
    token = secrets.token_urlsafe(32)
    serving.hold.add(token)
    adding = asyncio.ensure_future(_add(replicas, 0, token))
    await asyncio.wait_for(serving.redeeming.wait(), WAIT_S)
    # The operator removes the pending peer while B is issuing the certificate.
    await replicas.servicers[1].RemovePeer(grants_pb2.RemovePeerRequest(id="b"), None)
    serving.answer.set()

    with pytest.raises(ServiceError) as failed:
        await asyncio.wait_for(adding, WAIT_S)
    assert failed.value.reason == "PEER_NOT_STORED"
    assert "the enrollment token was used" in failed.value.message
    assert "PEER_RESERVATION_LOST" not in failed.value.message  # told in words
    assert "no longer reserved" in failed.value.message
    assert "revoke grant" in failed.value.remediation
    assert "was not used" not in failed.value.message + failed.value.remediation


def _new_outbound(name: str) -> domain.NewOutboundPeer:
    return domain.NewOutboundPeer(
        name=name,
        endpoint="127.0.0.1:7443",
        cert_pem="CERT",
        cert_serial="01",
        cert_not_after=dt.datetime(2026, 12, 2, tzinfo=dt.UTC),
        ca_bundle_pem="BUNDLE",
        client_key_pem="KEY",
        remote_grant_id=None,
        remote_subject_user_id=None,
    )


async def test_an_add_stopped_before_the_redeem_lets_the_name_go(
    replicas: GrantsReplicas, serving: ServingGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def wrong_pin(target: Any) -> Any:
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "CA_PIN_MISMATCH", "no root")

    monkeypatch.setattr(enrollment_admin, "fetch_pinned_root", wrong_pin)
    with pytest.raises(ServiceError) as refused:
        await _add(replicas, 0, secrets.token_urlsafe(32))
    assert refused.value.reason == "CA_PIN_MISMATCH"
    assert await replicas.peers() == [] and serving.redeemed == []


@pytest.mark.parametrize("target", ["active", "suspended", "revoked"])
async def test_a_reserved_name_cannot_be_given_a_state(
    replicas: GrantsReplicas, target: str
) -> None:
    """Only the `peer add` holding it makes a reservation a peer (or lets it go): revoked
    through the admin API it would keep the name from every later add, and the running one
    would spend its token to be told its reservation was lost."""
    store = replicas.stores[0]
    now = dt.datetime.now(dt.UTC)
    reserved = await store.reserve_outbound_peer("b", now=now)
    with pytest.raises(domain.PeerRefused) as refused:
        await store.set_peer_state(reserved.id, target=target, reason="", now=now)
    assert refused.value.reason == "PEER_PENDING", refused.value
    [peer] = await replicas.peers()
    assert peer.state == grants_pb2.PEER_STATE_PENDING and peer.name == "b"
    assert await store.release_outbound_peer(reserved.id) is True


async def test_a_ctrl_c_while_the_name_is_being_reserved_lets_it_go(
    replicas: GrantsReplicas, serving: ServingGateway
) -> None:
    """The operator's call went away while grants-service was committing the reservation:
    the gateway never learned its id, and the name stayed "being added right now" until
    it lapsed (5 minutes). The reservation now goes on and is let go at once."""
    real = replicas.backend(0)
    committed, answer = asyncio.Event(), asyncio.Event()

    async def backend(method: str, request: Any) -> Any:
        reply = await real(method, request)
        if method == "ReserveOutboundPeer":
            committed.set()  # reserved; its answer is on its way
            await answer.wait()
        return reply

    servicer = EnrollmentAdminMixin(admin_gateway(backend))
    request = gateway_pb2.AddPeerRequest(enrollment_url=_url(secrets.token_urlsafe(32)), name="b")
    adding = asyncio.ensure_future(servicer.AddPeer(request, None))
    await asyncio.wait_for(committed.wait(), WAIT_S)
    assert [p.name for p in await replicas.peers()] == ["b"]
    adding.cancel()  # Ctrl-C
    with pytest.raises(asyncio.CancelledError):
        await adding
    answer.set()

    async def released() -> None:
        while await replicas.peers():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(released(), WAIT_S)
    assert serving.redeemed == []  # the token was never spent
    added = await _add(replicas, 1, secrets.token_urlsafe(32))  # the name is free at once
    assert added.peer.state == grants_pb2.PEER_STATE_ACTIVE
