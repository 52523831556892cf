"""Redeem when something fails on the serving side: enrollment-service against the real
TokenStore and GrantsServicer (SQLite), with the failure injected in the transport.

If ActivateGrantAndPeer committed but its answer was lost, and grants-service cannot be
asked afterwards either, nothing tells whether the grant is now active with the new
certificate. Revoking that certificate (as for a refusal) would leave an active grant
with a dead certificate and a token every retry is refused; so it is kept, and the
token's claim is left to lapse.

A redeem that fails because our CA is down is not charged to the caller's per-address
limit (the gateway's enrollment listener, in front): the peer's automatic repeats and
its operator's retry must not end in RATE_LIMITED, which would hide the cause. A refused
token is still charged, whatever else is down."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select, update

from enrollment_service import domain
from enrollment_service.app import MIGRATIONS as ENROLLMENT_MIGRATIONS
from enrollment_service.servicer import EnrollmentServicer
from enrollment_service.store import TokenStore, federation_enrollment_tokens
from federation_gateway.peer_enrollment import PeerEnrollmentServicer
from federation_gateway.ratelimit import LocalGcra
from grants_service.app import MIGRATIONS as GRANTS_MIGRATIONS
from grants_service.servicer import ChangeNotifier, GrantsServicer
from grants_service.store import GrantsStore, federation_grants
from mosaic.config import RateLimitConfig
from mosaic.db import Database
from mosaic.errors import ServiceError
from mosaic.federation.v1 import (
    ca_pb2,
    ca_pb2_grpc,
    enrollment_pb2,
    gateway_pb2,
    grants_pb2,
    grants_pb2_grpc,
)
from mosaic.x509ext import grant_extensions
from tests.support.federation_fakes import FakeChannel, rpc_error, service_rpc_error
from tests.support.pki import csr_pem as _csr_pem

Hook = Callable[[Any], Awaitable[Any]]


@dataclass
class World:
    grants: GrantsServicer
    tokens: TokenStore
    grant: grants_pb2.Grant
    token: str
    revoked: list[str] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    csr_pem: str = field(default_factory=lambda: _csr_pem(ec.generate_private_key(ec.SECP256R1())))

    def enrollment(
        self, hooks: dict[str, Hook], ca_hooks: dict[str, Hook] | None = None
    ) -> EnrollmentServicer:
        async def grants_backend(name: str, request: Any) -> Any:
            hook = hooks.get(name)
            if hook is not None:
                answer = await hook(request)
                if answer is not None:
                    return answer
            try:
                return await getattr(self.grants, name)(request, None)
            except ServiceError as exc:
                raise rpc_error(exc.code, exc.message) from None

        async def ca_backend(name: str, request: Any) -> Any:
            hook = (ca_hooks or {}).get(name)
            if hook is not None:
                return await hook(request)
            if name == "GetTrustBundle":
                return ca_pb2.GetTrustBundleResponse()
            if name == "IssueCertificate":
                serial = f"5e{len(self.issued) + 1:04x}"  # shared by replace()d Worlds
                self.issued.append(serial)
                return ca_pb2.IssueCertificateResponse(
                    certificate_pem=_certificate(
                        request.csr_pem, serial, request.grant_id, request.subject_user_id
                    ),
                    serial=serial,
                )
            if name == "RevokeCertificate":
                self.revoked.append(request.serial)
                return ca_pb2.RevokeCertificateResponse()
            raise AssertionError(name)

        return EnrollmentServicer(
            self.tokens,
            grants_pb2_grpc.GrantsStub(FakeChannel(grants_backend)),
            ca_pb2_grpc.CertificateAuthorityStub(FakeChannel(ca_backend)),
        )

    async def redeem(self, hooks: dict[str, Hook], csr_pem: str | None = None) -> str:
        try:
            reply = await self.enrollment(hooks).Redeem(
                enrollment_pb2.RedeemRequest(token=self.token, csr_pem=csr_pem or self.csr_pem),
                None,
            )
        except ServiceError as exc:
            return f"{exc.code.name} {exc.reason}"
        return f"OK {reply.serial}" + (" repeated" if reply.repeated else "")

    async def create_token(self, ttl_seconds: int = 0, hooks: dict[str, Hook] | None = None) -> str:
        """The admin API's CreateToken for this World's grant: "OK" or the refusal."""
        try:
            await self.enrollment(hooks or {}).CreateToken(
                enrollment_pb2.CreateTokenRequest(grant_id=self.grant.id, ttl_seconds=ttl_seconds),
                None,
            )
        except ServiceError as exc:
            return f"{exc.code.name} {exc.reason}"
        return "OK"

    async def token_count(self) -> int:
        """How many tokens this World's grant has (the fixture made one)."""
        async with self.tokens._engine.connect() as conn:
            found = await conn.execute(
                select(func.count())
                .select_from(federation_enrollment_tokens)
                .where(federation_enrollment_tokens.c.grant_id == uuid.UUID(self.grant.id))
            )
            return int(found.scalar_one())

    async def second_grant(self) -> grants_pb2.CreateGrantResponse:
        """Another pending grant (on notes, for another user) for the same peer."""
        return await self.grants.CreateGrant(
            grants_pb2.CreateGrantRequest(
                subject_user_id=str(uuid.uuid4()),
                peer_name="a",
                scope_json=json.dumps({"resources": ["notes"]}),
            ),
            None,
        )

    async def grant_now(self) -> grants_pb2.Grant:
        reply = await self.grants.GetGrant(grants_pb2.GetGrantRequest(id=self.grant.id), None)
        return reply.grant

    async def set_token(self, **values: Any) -> None:
        """Move the token's times (the clock cannot be)."""
        async with self.tokens._engine.begin() as conn:
            await conn.execute(
                update(federation_enrollment_tokens)
                .where(federation_enrollment_tokens.c.token_hash == domain.hash_token(self.token))
                .values(**values)
            )

    async def token_state(self) -> str:
        row = await self.tokens.find(domain.hash_token(self.token))
        assert row is not None
        return row.state


_CA_KEY = ec.generate_private_key(ec.SECP256R1())


def _certificate(csr_pem: str, serial: str, grant_id: str, subject_user_id: str) -> str:
    """What the CA would issue for the CSR: its key, under ``serial``, for the grant."""
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    now = dt.datetime.now(dt.UTC)
    builder = x509.CertificateBuilder()
    for extension in grant_extensions(grant_id, subject_user_id):
        builder = builder.add_extension(extension, critical=False)
    cert = (
        builder.subject_name(csr.subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")]))
        .public_key(csr.public_key())
        .serial_number(int(serial, 16))
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(_CA_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    grants_db = Database(
        f"sqlite+aiosqlite:///{tmp_path / 'g.db'}",
        schema="grants",
        migrations_dir=GRANTS_MIGRATIONS,
    )
    tokens_db = Database(
        f"sqlite+aiosqlite:///{tmp_path / 'e.db'}",
        schema="enrollment",
        migrations_dir=ENROLLMENT_MIGRATIONS,
    )
    await grants_db.migrate()
    await tokens_db.migrate()
    grants = GrantsServicer(
        GrantsStore(grants_db),
        None,  # type: ignore[arg-type]
        ChangeNotifier(),
        sealer_on_disk=lambda: None,  # type: ignore[arg-type,return-value]
    )
    created = await grants.CreateGrant(
        grants_pb2.CreateGrantRequest(
            subject_user_id=str(uuid.uuid4()),
            peer_name="a",
            scope_json=json.dumps({"resources": ["tasks"]}),
        ),
        None,
    )
    tokens = TokenStore(tokens_db)
    now = dt.datetime.now(dt.UTC)
    new = domain.new_token(now, dt.timedelta(minutes=15))
    await tokens.create(
        new,
        grant_id=uuid.UUID(created.grant.id),
        peer_id=uuid.UUID(created.grant.peer_id),
        now=now,
    )
    yield World(grants, tokens, created.grant, new.token)
    await grants_db.dispose()
    await tokens_db.dispose()


def _activation_answer_lost(world: World) -> dict[str, Hook]:
    """grants-service commits the activation but its answer is lost, and the redeem's
    read-back of the grant fails too: nothing tells whether the grant is active."""
    read_backs = 0

    async def activate_then_lose_the_answer(request: Any) -> Any:
        await world.grants.ActivateGrantAndPeer(request, None)
        raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    async def read_back_fails(request: Any) -> Any:
        nonlocal read_backs
        read_backs += 1
        if read_backs == 2:  # the first read is the redeem's own; the second, the check
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "grants-service restarting")
        return None

    return {"ActivateGrantAndPeer": activate_then_lose_the_answer, "GetGrant": read_back_fails}


async def test_an_activation_nobody_can_confirm_keeps_its_certificate(world: World) -> None:
    outcome = await world.redeem(_activation_answer_lost(world))

    assert outcome == "UNAVAILABLE DEPENDENCY_UNAVAILABLE"
    grant = await world.grant_now()
    assert grant.status == grants_pb2.GRANT_STATUS_ACTIVE and grant.cert_serial == "5e0001"
    assert world.revoked == []  # the grant's current certificate stays valid
    assert await world.token_state() == "redeeming"  # not handed back: the claim lapses


async def test_a_definite_refusal_still_revokes_and_hands_the_token_back(world: World) -> None:
    async def refuse(request: Any) -> Any:
        raise rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "peer is suspended")

    outcome = await world.redeem({"ActivateGrantAndPeer": refuse})

    assert outcome.startswith("FAILED_PRECONDITION")
    assert world.revoked == ["5e0001"]
    assert await world.token_state() == "unused"
    assert (await world.grant_now()).status == grants_pb2.GRANT_STATUS_PENDING


def _grant_changed(world: World, change: Callable[[grants_pb2.GetGrantResponse], None]) -> Hook:
    """A GetGrant hook: grants-service's real answer, with ``change`` applied to it."""

    async def changed(request: Any) -> Any:
        reply = await world.grants.GetGrant(request, None)
        change(reply)
        return reply

    return changed


def _other_peer(reply: grants_pb2.GetGrantResponse) -> None:
    reply.grant.peer_id = reply.peer.id = str(uuid.uuid4())


def _other_grant(reply: grants_pb2.GetGrantResponse) -> None:
    reply.grant.id = str(uuid.uuid4())


@pytest.mark.parametrize("change", [_other_peer, _other_grant], ids=["other peer", "other grant"])
async def test_a_token_whose_grant_is_bound_elsewhere_is_refused_before_the_ca(
    world: World, change: Callable[[grants_pb2.GetGrantResponse], None]
) -> None:
    """The token is bound to its grant and that grant's peer: if grants-service reports
    the grant bound to another peer (or another grant altogether), nothing is issued and
    the token stays unused (TOKEN_BINDING_MISMATCH, SECURITY.md threat 4)."""
    outcome = await world.redeem({"GetGrant": _grant_changed(world, change)})

    assert outcome == "UNAUTHENTICATED TOKEN_BINDING_MISMATCH"
    assert world.issued == []
    assert await world.token_state() == "unused"
    assert (await world.grant_now()).status == grants_pb2.GRANT_STATUS_PENDING


async def test_a_grant_that_expires_during_the_redeem_is_not_activated_and_the_token_stays(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grant's expiry passes after the CA issued, and after grants-service's sweep of
    due grants (stood down here): the activation's own condition refuses it, the new
    certificate is revoked and the token stays unused."""
    monkeypatch.setattr(world.grants, "_expire", _no_sweep)

    async def expiry_passes(request: Any) -> None:
        async with world.grants._store._engine.begin() as conn:
            await conn.execute(
                update(federation_grants)
                .where(federation_grants.c.id == uuid.UUID(request.grant_id))
                .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
            )

    outcome = await world.redeem({"ActivateGrantAndPeer": expiry_passes})

    assert outcome.startswith("FAILED_PRECONDITION")  # GRANT_EXPIRED (lost in this transport)
    assert world.revoked == ["5e0001"]
    assert await world.token_state() == "unused"
    assert (await world.grant_now()).status != grants_pb2.GRANT_STATUS_ACTIVE


async def _no_sweep(grant_id: Any) -> None:
    return None


# ---- making a token --------------------------------------------------------------------


@pytest.mark.parametrize(("requested", "seconds"), [(900, 900), (1, 1), (0, domain.DEFAULT_TTL_S)])
def test_a_token_lives_at_most_900_seconds(requested: int, seconds: int) -> None:
    assert domain.token_ttl(requested) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("requested", [901, 100 * domain.MAX_TTL_S, -1])
async def test_a_token_for_longer_than_900_seconds_is_refused(world: World, requested: int) -> None:
    """DESIGN: token TTL <= 900 s. The CLI refuses such a --ttl itself; the admin API
    refuses it too, and makes no token."""
    with pytest.raises(domain.InvalidTTL):
        domain.token_ttl(requested)

    assert await world.create_token(requested) == "INVALID_ARGUMENT TOKEN_TTL_INVALID"
    assert await world.token_count() == 1  # the fixture's


def _outbound(reply: grants_pb2.GetGrantResponse) -> None:
    reply.peer.direction = grants_pb2.PEER_DIRECTION_OUTBOUND


def _not_the_grants(reply: grants_pb2.GetGrantResponse) -> None:
    reply.peer.id = str(uuid.uuid4())


@pytest.mark.parametrize("peer", ["suspended", "outbound", "not the grant's"])
async def test_no_token_for_a_grant_whose_peer_cannot_enroll(world: World, peer: str) -> None:
    """A token is made only for a pending grant bound to a pending or active inbound
    peer: for a suspended peer, a peer we query (outbound) or a peer row that is not the
    grant's, the admin API refuses (TOKEN_BINDING_MISMATCH) and no token is stored."""
    hooks: dict[str, Hook] = {}
    if peer == "suspended":
        # The peer enrolled, got a second (pending) grant, and was suspended.
        assert await world.redeem({}) == "OK 5e0001"
        second = await world.second_grant()
        await world.grants.SetPeerState(
            grants_pb2.SetPeerStateRequest(
                id=world.grant.peer_id, state=grants_pb2.PEER_STATE_SUSPENDED, reason="test"
            ),
            None,
        )
        world = replace(world, grant=second.grant)
        assert (await world.grant_now()).status == grants_pb2.GRANT_STATUS_PENDING
    else:
        change = _outbound if peer == "outbound" else _not_the_grants
        hooks["GetGrant"] = _grant_changed(world, change)
    before = await world.token_count()

    assert await world.create_token(hooks=hooks) == "FAILED_PRECONDITION TOKEN_BINDING_MISMATCH"
    assert await world.token_count() == before
    if hooks:  # the same grant as grants-service really reports it gets its token
        assert await world.create_token() == "OK"
        assert await world.token_count() == before + 1


# ---- a redeem repeated because its answer was lost ------------------------------------


async def test_a_lost_answer_is_given_again_to_the_same_key_and_nothing_is_issued(
    world: World,
) -> None:
    assert await world.redeem({}) == "OK 5e0001"

    assert await world.redeem({}) == "OK 5e0001 repeated"
    assert world.issued == ["5e0001"]
    assert await world.token_state() == "used"
    other = _csr_pem(ec.generate_private_key(ec.SECP256R1()))
    assert await world.redeem({}, other) == "UNAUTHENTICATED TOKEN_ALREADY_USED"
    assert await world.redeem({}, "junk") == "UNAUTHENTICATED TOKEN_ALREADY_USED"


async def test_an_activation_nobody_could_confirm_is_answered_when_repeated(world: World) -> None:
    """The first redeem could not tell whether the grant became active: the peer's repeat
    gets the certificate while the claim is held, and completes the token once it has
    lapsed (before, every retry was refused GRANT_NOT_PENDING or TOKEN_IN_USE)."""
    assert await world.redeem(_activation_answer_lost(world)) == (
        "UNAVAILABLE DEPENDENCY_UNAVAILABLE"
    )

    assert await world.redeem({}) == "OK 5e0001 repeated"  # the claim still held
    assert await world.token_state() == "redeeming"
    await world.set_token(claimed_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    assert await world.redeem({}) == "OK 5e0001 repeated"  # the claim taken over
    assert await world.token_state() == "used"
    assert world.issued == ["5e0001"] and world.revoked == []
    other = _csr_pem(ec.generate_private_key(ec.SECP256R1()))
    assert await world.redeem({}, other) == "UNAUTHENTICATED TOKEN_ALREADY_USED"


async def test_no_answer_again_once_the_grant_is_revoked_or_the_window_has_passed(
    world: World,
) -> None:
    assert await world.redeem({}) == "OK 5e0001"
    await world.set_token(
        expires_at=dt.datetime.now(dt.UTC) - domain.REPEAT_WINDOW + dt.timedelta(seconds=30)
    )
    assert await world.redeem({}) == "OK 5e0001 repeated"  # expired, still in the window
    await world.set_token(
        expires_at=dt.datetime.now(dt.UTC) - domain.REPEAT_WINDOW - dt.timedelta(seconds=1)
    )
    assert await world.redeem({}) == "UNAUTHENTICATED TOKEN_ALREADY_USED"

    await world.set_token(expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    await world.grants.RevokeGrant(
        grants_pb2.RevokeGrantRequest(id=world.grant.id, reason="test"), None
    )
    assert await world.redeem({}) == "UNAUTHENTICATED TOKEN_ALREADY_USED"


async def test_no_answer_again_for_a_suspended_peer_or_a_csr_whose_signature_fails(
    world: World,
) -> None:
    assert await world.redeem({}) == "OK 5e0001"
    # The right public key, but a signature that does not verify: no proof of possession.
    der = bytearray(
        x509.load_pem_x509_csr(world.csr_pem.encode()).public_bytes(serialization.Encoding.DER)
    )
    der[-3] ^= 0x01
    forged = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der)).decode()
        + "-----END CERTIFICATE REQUEST-----\n"
    )
    assert await world.redeem({}, forged) == "UNAUTHENTICATED TOKEN_ALREADY_USED"

    await world.grants.SetPeerState(
        grants_pb2.SetPeerStateRequest(
            id=world.grant.peer_id, state=grants_pb2.PEER_STATE_SUSPENDED, reason="test"
        ),
        None,
    )
    assert await world.redeem({}) == "UNAUTHENTICATED TOKEN_ALREADY_USED"


async def test_a_peer_that_enrolled_another_grant_since_still_gets_its_answer(
    world: World,
) -> None:
    """The peer's row holds its latest certificate, here another grant's: the repeat is
    answered with this grant's own certificate (before grants_0003 it got nothing)."""
    assert await world.redeem({}) == "OK 5e0001"
    second = await world.second_grant()
    assert second.grant.peer_id == world.grant.peer_id
    now = dt.datetime.now(dt.UTC)
    new = domain.new_token(now, dt.timedelta(minutes=15))
    await world.tokens.create(
        new,
        grant_id=uuid.UUID(second.grant.id),
        peer_id=uuid.UUID(second.grant.peer_id),
        now=now,
    )
    other = replace(
        world,
        grant=second.grant,
        token=new.token,
        csr_pem=_csr_pem(ec.generate_private_key(ec.SECP256R1())),
    )
    assert await other.redeem({}) == "OK 5e0002"
    peer = await world.grants.GetPeer(grants_pb2.GetPeerRequest(id=world.grant.peer_id), None)
    assert peer.peer.cert_serial == "5e0002"

    assert await world.redeem({}) == "OK 5e0001 repeated"
    assert await other.redeem({}) == "OK 5e0002 repeated"
    assert world.issued == ["5e0001", "5e0002"]


# ---- what a failed redeem costs the caller's per-address limit -----------------------


def _listener(tmp_path: Path, enrollment: EnrollmentServicer, limiter: LocalGcra) -> Any:
    """The gateway's enrollment listener in front of ``enrollment``, limited by
    ``limiter`` (the audit rows are another test's business)."""
    (tmp_path / "root.crt").write_text("ROOT")

    async def backend(name: str, request: Any) -> Any:
        try:
            return await getattr(enrollment, name)(request, None)
        except ServiceError as exc:
            raise service_rpc_error(exc) from None

    async def record(_row: Any) -> None:
        return None

    gateway = SimpleNamespace(
        runtime=SimpleNamespace(
            config=SimpleNamespace(federation_endpoint="b:7443", federation_pki_dir=tmp_path),
            channels=SimpleNamespace(get=lambda _name: FakeChannel(backend)),
        ),
        redeem_limiter=limiter,
        audit=SimpleNamespace(record=record, record_soon=lambda _row: None),
    )
    return PeerEnrollmentServicer(gateway)  # type: ignore[arg-type]


class _Peer:
    def peer(self) -> str:
        return "ipv4:192.0.2.7:50000"


async def _redeem_at(listener: Any, token: str, csr_pem: str) -> str:
    try:
        reply = await listener.Redeem(
            gateway_pb2.PeerRedeemRequest(token=token, csr_pem=csr_pem), _Peer()
        )
    except ServiceError as exc:
        return f"{exc.code.name} {exc.reason}"
    return f"OK {reply.serial}"


async def _ca_unavailable(_request: Any) -> Any:
    raise rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")


def _default_redeem_limit() -> LocalGcra:
    defaults = RateLimitConfig()
    return LocalGcra(defaults.redeem_per_second, defaults.redeem_burst)


def _other_token() -> str:
    return domain.new_token(dt.datetime.now(dt.UTC), dt.timedelta(minutes=15)).token


@pytest.mark.parametrize("failing", ["GetTrustBundle", "IssueCertificate"])
async def test_redeems_our_ca_could_not_serve_do_not_use_up_the_callers_limit(
    world: World, tmp_path: Path, failing: str
) -> None:
    """Two `peer add` runs while our CA is down (before the token is checked, or when
    issuing for the valid token), each redeeming four times as A does (at once, then
    after 1, 3 and 8 s): more than the default burst of 5, and none is RATE_LIMITED."""
    limiter = _default_redeem_limit()
    down = _listener(tmp_path, world.enrollment({}, {failing: _ca_unavailable}), limiter)

    outcomes = [await _redeem_at(down, world.token, world.csr_pem) for _ in range(8)]

    assert outcomes == ["UNAVAILABLE UNAVAILABLE"] * 8
    assert await world.token_state() == "unused"
    up = _listener(tmp_path, world.enrollment({}), limiter)
    assert await _redeem_at(up, world.token, world.csr_pem) == "OK 5e0001"


async def test_refused_tokens_are_charged_and_a_down_ca_tells_a_guesser_nothing(
    world: World, tmp_path: Path
) -> None:
    """The limit bounds token guessing. While our CA is down before the token is checked,
    the right token and a wrong one get the same answer (not charged, but it tells
    nothing); while it fails after the check, a wrong token is refused as always and
    charged, so making our CA fail buys a guesser no free answers."""
    limiter = _default_redeem_limit()
    before_check = _listener(
        tmp_path, world.enrollment({}, {"GetTrustBundle": _ca_unavailable}), limiter
    )
    right = await _redeem_at(before_check, world.token, world.csr_pem)
    wrong = await _redeem_at(before_check, _other_token(), world.csr_pem)
    assert right == wrong == "UNAVAILABLE UNAVAILABLE"

    after_check = _listener(
        tmp_path, world.enrollment({}, {"IssueCertificate": _ca_unavailable}), limiter
    )
    guesses = [await _redeem_at(after_check, _other_token(), world.csr_pem) for _ in range(6)]

    assert guesses == ["UNAUTHENTICATED TOKEN_UNKNOWN"] * 5 + ["RESOURCE_EXHAUSTED RATE_LIMITED"]
    assert await _redeem_at(after_check, world.token, world.csr_pem) == (
        "RESOURCE_EXHAUSTED RATE_LIMITED"  # the address's budget is spent, for any token
    )
