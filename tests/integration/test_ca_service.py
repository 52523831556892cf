"""ca-service with the embedded (local) CA, through its real internal mTLS listener.

Each module instance is a real process tree (`mosaic init` + `mosaic up`), on SQLite
and on a real PostgreSQL. Callers present the internal certificates `mosaic init`
made for them, so the ACL is exercised exactly as in production.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from mosaic.config import ENROLLMENT, GATEWAY, GRANTS, RESOURCES
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

pytestmark = pytest.mark.slow

CA = "ca-service"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    db = ""
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        db = server.create_database(f"ca_service_{uuid.uuid4().hex[:8]}")
    inst = Instance(tmp_path_factory.mktemp(f"ca-{request.param}"), "b", db=db)
    inst.start()
    yield inst
    inst.stop()


@pytest.fixture
async def as_enrollment(instance: Instance) -> AsyncIterator[ca_pb2_grpc.CertificateAuthorityStub]:
    async with internal_channel_as(instance.home, CA, ENROLLMENT) as channel:
        yield ca_pb2_grpc.CertificateAuthorityStub(channel)


@pytest.fixture
async def as_gateway(instance: Instance) -> AsyncIterator[ca_pb2_grpc.CertificateAuthorityStub]:
    async with internal_channel_as(instance.home, CA, GATEWAY) as channel:
        yield ca_pb2_grpc.CertificateAuthorityStub(channel)


# ---- helpers ----------------------------------------------------------------------


def make_csr(
    common_name: str = "peer-a",
    *,
    key: Any = None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    subject: x509.Name | None = None,
) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def ids() -> dict[str, str]:
    return {
        "grant_id": str(uuid.uuid4()),
        "subject_user_id": str(uuid.uuid4()),
        "peer_id": str(uuid.uuid4()),
    }


async def issue(
    stub: ca_pb2_grpc.CertificateAuthorityStub, csr_pem: str, **fields: Any
) -> ca_pb2.IssueCertificateResponse:
    request = ca_pb2.IssueCertificateRequest(csr_pem=csr_pem, **{**ids(), **fields})
    return await stub.IssueCertificate(request, timeout=15)


async def rpc_error(call: Any) -> RemoteError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return RemoteError.from_rpc_error(info.value)


def query_issued(instance: Instance, serial: str) -> dict[str, Any] | None:
    """Read ca-service's own row the way an operator would (SQLite file or Postgres schema)."""
    if instance.init_doc["database"] == "sqlite":
        with sqlite3.connect(instance.home / "data" / "ca_service.db") as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute(
                "SELECT * FROM issued_certificates WHERE serial = ?", (serial,)
            ).fetchone()
            return dict(row) if row else None

    async def fetch(conn: Any) -> dict[str, Any] | None:
        row = await conn.fetchrow("SELECT * FROM ca.issued_certificates WHERE serial = $1", serial)
        return dict(row) if row else None

    return _on_postgres(instance, fetch)


def _on_postgres(instance: Instance, action: Any) -> Any:
    import asyncpg

    from mosaic.config import load_config

    dsn = load_config(instance.home).db_url.replace("postgresql+asyncpg://", "postgresql://")

    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await action(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


# ---- issuance -----------------------------------------------------------------------


async def test_certificate_carries_the_requested_grant(
    instance: Instance, as_enrollment: ca_pb2_grpc.CertificateAuthorityStub
) -> None:
    wanted = ids()
    reply = await issue(as_enrollment, make_csr("peer-a"), lifetime_seconds=3600, **wanted)

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
        assert ext.value.value[:2] == b"\x0c\x24"  # type: ignore[attr-defined]
    assert reply.backend == "local"
    assert reply.serial == format(cert.serial_number, "x")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(hours=1, minutes=2)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is False

    bundle = await as_enrollment.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=5)
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in reply.chain_pem]
    verify_chain(cert, chain, load_pem_certificates(bundle.root_pem))


async def test_lifetime_is_capped_to_the_configured_maximum(
    as_enrollment: ca_pb2_grpc.CertificateAuthorityStub,
) -> None:
    reply = await issue(as_enrollment, make_csr(), lifetime_seconds=30 * 24 * 3600)
    cert = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    assert cert.not_valid_after_utc <= datetime.now(UTC) + timedelta(hours=24, minutes=2)


async def test_forged_grant_extensions_in_the_csr_are_never_copied(
    as_enrollment: ca_pb2_grpc.CertificateAuthorityStub,
) -> None:
    forged_grant, forged_subject = str(uuid.uuid4()), str(uuid.uuid4())
    csr = make_csr(
        extensions=[
            (x509.UnrecognizedExtension(GRANT_ID_OID, encode_uuid_utf8string(forged_grant)), False),
            (
                x509.UnrecognizedExtension(
                    SUBJECT_USER_ID_OID, encode_uuid_utf8string(forged_subject)
                ),
                False,
            ),
            (x509.BasicConstraints(ca=True, path_length=None), True),
        ]
    )
    wanted = ids()
    reply = await issue(as_enrollment, csr, **wanted)

    cert = x509.load_pem_x509_certificate(reply.certificate_pem.encode())
    identity = grant_identity(cert)  # also refuses duplicates of either OID
    assert identity.grant_id == wanted["grant_id"]
    assert identity.subject_user_id == wanted["subject_user_id"]
    der = cert.public_bytes(serialization.Encoding.DER)
    assert forged_grant.encode() not in der
    assert forged_subject.encode() not in der
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def _bad_signature_csr() -> str:
    """A CSR whose self-signature does not verify (one signature byte flipped)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    der = bytearray(
        x509.load_pem_x509_csr(make_csr(key=key).encode()).public_bytes(serialization.Encoding.DER)
    )
    der[-1] ^= 0x01  # RSA signature bytes are the DER's tail
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


BAD_CSRS = {
    "CSR_MALFORMED": lambda: (
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n"
    ),
    "CSR_BAD_SIGNATURE": _bad_signature_csr,
    "CSR_WEAK_KEY": lambda: make_csr(key=rsa.generate_private_key(65537, 2048)),
    "CSR_BAD_NAMES": lambda: make_csr("Peer A!"),
    "CSR_TOO_LARGE": lambda: make_csr() + "\n" * (16 * 1024),
}


@pytest.mark.parametrize("reason", sorted(BAD_CSRS))
async def test_bad_csr_is_refused_with_its_reason(
    reason: str, as_enrollment: ca_pb2_grpc.CertificateAuthorityStub
) -> None:
    err = await rpc_error(issue(as_enrollment, BAD_CSRS[reason]()))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == reason
    assert "csr_pem" in [field for field, _ in err.violations], err


@pytest.mark.parametrize(
    "wrap",
    [
        lambda pem: pem + "junk\x00\n<script>",
        lambda pem: "hello\n" + pem,
        lambda pem: pem + make_csr("peer-b"),
    ],
    ids=["trailing-junk", "leading-text", "two-blocks"],
)
async def test_a_csr_with_anything_around_it_is_not_signed(
    wrap: Any, as_enrollment: ca_pb2_grpc.CertificateAuthorityStub
) -> None:
    """The CA signed the first CSR block of whatever it was sent."""
    err = await rpc_error(issue(as_enrollment, wrap(make_csr())))
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CSR_MALFORMED")
    assert "csr_pem" in [field for field, _ in err.violations], err


async def test_csr_with_an_ip_address_san_is_refused(
    as_enrollment: ca_pb2_grpc.CertificateAuthorityStub,
) -> None:
    import ipaddress

    csr = make_csr(
        extensions=[
            (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]), False)
        ]
    )
    err = await rpc_error(issue(as_enrollment, csr))
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CSR_BAD_NAMES")


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("grant_id", "INVALID_GRANT_ID"),
        ("subject_user_id", "INVALID_SUBJECT_USER_ID"),
        ("peer_id", "INVALID_PEER_ID"),
    ],
)
async def test_bad_identifiers_are_refused(
    field: str, reason: str, as_enrollment: ca_pb2_grpc.CertificateAuthorityStub
) -> None:
    err = await rpc_error(issue(as_enrollment, make_csr(), **{field: "not-a-uuid"}))
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert [f for f, _ in err.violations] == [field]


async def test_negative_lifetime_is_refused(
    as_enrollment: ca_pb2_grpc.CertificateAuthorityStub,
) -> None:
    err = await rpc_error(issue(as_enrollment, make_csr(), lifetime_seconds=-1))
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_LIFETIME")


@pytest.mark.parametrize("caller", [RESOURCES, GRANTS, "operator"])
async def test_callers_off_the_acl_may_not_issue(instance: Instance, caller: str) -> None:
    async with internal_channel_as(instance.home, CA, caller) as channel:
        stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
        err = await rpc_error(issue(stub, make_csr()))
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")


@pytest.mark.parametrize("caller", [RESOURCES, GRANTS, "operator"])
async def test_callers_off_the_acl_may_not_revoke(instance: Instance, caller: str) -> None:
    async with internal_channel_as(instance.home, CA, caller) as channel:
        stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
        err = await rpc_error(
            stub.RevokeCertificate(ca_pb2.RevokeCertificateRequest(serial="ab"), timeout=5)
        )
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED")


async def test_only_the_gateway_may_read_revocations(instance: Instance) -> None:
    async with internal_channel_as(instance.home, CA, ENROLLMENT) as channel:
        stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
        err = await rpc_error(stub.ListRevocations(ca_pb2.ListRevocationsRequest(), timeout=5))
        assert err.code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("request_fields", "reason"),
    [
        ({"page_size": -1}, "PAGE_SIZE_INVALID"),
        ({"page_token": "not-a-serial"}, "PAGE_TOKEN_INVALID"),
        ({"page_token": "AB"}, "PAGE_TOKEN_INVALID"),
        ({"page_token": "a" * 65}, "PAGE_TOKEN_INVALID"),
        ({"page_token": "' OR 1=1 --"}, "PAGE_TOKEN_INVALID"),
    ],
)
async def test_bad_revocation_pages_are_refused(
    as_gateway: ca_pb2_grpc.CertificateAuthorityStub, request_fields: dict[str, Any], reason: str
) -> None:
    err = await rpc_error(
        as_gateway.ListRevocations(ca_pb2.ListRevocationsRequest(**request_fields), timeout=5)
    )
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)


async def test_enrollment_may_revoke_what_it_had_issued(
    as_enrollment: ca_pb2_grpc.CertificateAuthorityStub,
    as_gateway: ca_pb2_grpc.CertificateAuthorityStub,
) -> None:
    """An enrollment whose activation is refused revokes the certificate it just had
    issued (enrollment_service._undo_issuance): the CA must let it, and the gateway's
    revoked set must then hold the serial."""
    reply = await issue(as_enrollment, make_csr())
    await as_enrollment.RevokeCertificate(
        ca_pb2.RevokeCertificateRequest(serial=reply.serial, reason="enrollment aborted"),
        timeout=5,
    )
    listed = await as_gateway.ListRevocations(ca_pb2.ListRevocationsRequest(), timeout=5)
    assert reply.serial in {r.serial for r in listed.revocations}


async def test_every_certificate_is_recorded(
    instance: Instance, as_enrollment: ca_pb2_grpc.CertificateAuthorityStub
) -> None:
    wanted = ids()
    reply = await issue(as_enrollment, make_csr(), **wanted)
    cert = x509.load_pem_x509_certificate(reply.certificate_pem.encode())

    row = await asyncio.to_thread(query_issued, instance, reply.serial)
    assert row is not None
    assert str(row["grant_id"]).replace("-", "") == wanted["grant_id"].replace("-", "")
    assert str(row["subject_user_id"]).replace("-", "") == wanted["subject_user_id"].replace(
        "-", ""
    )
    assert str(row["peer_id"]).replace("-", "") == wanted["peer_id"].replace("-", "")
    assert row["backend"] == "local"
    assert row["fingerprint_sha256"] == sha256_fingerprint(cert)
    assert row["revoked_at"] is None


# ---- trust bundle -------------------------------------------------------------------


async def test_trust_bundle_root_is_the_pinned_federation_root(
    instance: Instance, as_gateway: ca_pb2_grpc.CertificateAuthorityStub
) -> None:
    bundle = await as_gateway.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=5)
    pinned = instance.init_doc["federation_root_sha256"]
    assert bundle.root_sha256 == pinned
    assert sha256_fingerprint(load_pem_certificates(bundle.root_pem)[0]) == pinned
    assert bundle.server_root_sha256 == pinned
    assert bundle.server_root_pem == bundle.root_pem
    assert bundle.backend == "local"
    assert len(bundle.intermediates_pem) == 1
    on_disk = (instance.home / "pki" / "federation" / "root.crt").read_text()
    assert bundle.root_pem == on_disk


# ---- revocation ---------------------------------------------------------------------


async def _revoke(
    stub: ca_pb2_grpc.CertificateAuthorityStub, **fields: str
) -> ca_pb2.RevokeCertificateResponse:
    return await stub.RevokeCertificate(ca_pb2.RevokeCertificateRequest(**fields), timeout=10)


async def test_revocation_reaches_list_and_a_watch_opened_before_it(
    instance: Instance,
    as_enrollment: ca_pb2_grpc.CertificateAuthorityStub,
    as_gateway: ca_pb2_grpc.CertificateAuthorityStub,
) -> None:
    issued = await issue(as_enrollment, make_csr())
    watch = as_gateway.WatchRevocations(ca_pb2.WatchRevocationsRequest(), timeout=60)
    stream = watch.__aiter__()
    try:
        first = await stream.__anext__()
        assert first.snapshot is True
        assert issued.serial not in {r.serial for r in first.revocations}

        # enrollment-service revokes (it is on the RevokeCertificate ACL, like the gateway).
        async with internal_channel_as(instance.home, CA, ENROLLMENT) as channel:
            reply = await _revoke(
                ca_pb2_grpc.CertificateAuthorityStub(channel),
                serial=issued.serial,
                reason="key compromise",
            )
        assert [r.serial for r in reply.revocations] == [issued.serial]
        assert reply.revocations[0].reason == "key compromise"
        assert reply.revoked_at_backend is True  # local: our table is the record

        update = await asyncio.wait_for(stream.__anext__(), 30)
        assert update.snapshot is False
        assert [r.serial for r in update.revocations] == [issued.serial]
        assert update.revocations[0].reason == "key compromise"
        assert update.revocations[0].revoked_at == reply.revocations[0].revoked_at
    finally:
        watch.cancel()

    listed = await as_gateway.ListRevocations(ca_pb2.ListRevocationsRequest(), timeout=5)
    assert issued.serial in {r.serial for r in listed.revocations}

    # A new watcher gets it in its snapshot.
    again = as_gateway.WatchRevocations(ca_pb2.WatchRevocationsRequest(), timeout=60)
    try:
        snapshot = await again.__aiter__().__anext__()
        assert snapshot.snapshot is True
        assert issued.serial in {r.serial for r in snapshot.revocations}
    finally:
        again.cancel()

    row = await asyncio.to_thread(query_issued, instance, issued.serial)
    assert row is not None and row["revoked_at"] is not None
    assert row["revoke_reason"] == "key compromise"


async def test_revoking_again_returns_the_first_revocation(
    as_enrollment: ca_pb2_grpc.CertificateAuthorityStub,
    as_gateway: ca_pb2_grpc.CertificateAuthorityStub,
) -> None:
    issued = await issue(as_enrollment, make_csr())
    first = await _revoke(as_gateway, serial=issued.serial, reason="first")
    second = await _revoke(as_gateway, serial=issued.serial.upper(), reason="second")
    assert second.revocations == first.revocations
    assert second.revocations[0].reason == "first"


async def test_revoking_a_grant_revokes_each_of_its_certificates(
    as_enrollment: ca_pb2_grpc.CertificateAuthorityStub,
    as_gateway: ca_pb2_grpc.CertificateAuthorityStub,
) -> None:
    wanted = ids()
    serials = {(await issue(as_enrollment, make_csr(), **wanted)).serial for _ in range(2)}
    other = await issue(as_enrollment, make_csr())

    reply = await _revoke(as_gateway, grant_id=wanted["grant_id"].upper(), reason="grant revoked")
    assert {r.serial for r in reply.revocations} == serials
    assert {r.grant_id for r in reply.revocations} == {wanted["grant_id"]}
    assert {r.peer_id for r in reply.revocations} == {wanted["peer_id"]}

    listed = await as_gateway.ListRevocations(ca_pb2.ListRevocationsRequest(), timeout=5)
    revoked = {r.serial for r in listed.revocations}
    assert serials <= revoked
    assert other.serial not in revoked

    # A grant that never had a certificate: nothing to revoke, not an error.
    empty = await _revoke(as_gateway, grant_id=str(uuid.uuid4()))
    assert list(empty.revocations) == []


async def test_revocation_written_by_another_replica_reaches_the_watch(
    instance: Instance,
    as_enrollment: ca_pb2_grpc.CertificateAuthorityStub,
    as_gateway: ca_pb2_grpc.CertificateAuthorityStub,
) -> None:
    """Another ca-service replica shares the table; we play it by writing the row directly
    (exactly what its RevokeCertificate commits), so only the table poll can deliver it."""
    issued = await issue(as_enrollment, make_csr())
    watch = as_gateway.WatchRevocations(ca_pb2.WatchRevocationsRequest(), timeout=60)
    stream = watch.__aiter__()
    try:
        assert (await stream.__anext__()).snapshot is True
        await asyncio.to_thread(_revoke_in_table, instance, issued.serial)
        update = await asyncio.wait_for(stream.__anext__(), 30)
        assert [r.serial for r in update.revocations] == [issued.serial]
        assert update.revocations[0].reason == "revoked by replica 2"
    finally:
        watch.cancel()


def _revoke_in_table(instance: Instance, serial: str) -> None:
    now = datetime.now(UTC)
    reason = "revoked by replica 2"
    if instance.init_doc["database"] == "sqlite":
        with sqlite3.connect(instance.home / "data" / "ca_service.db") as conn:
            conn.execute(
                "UPDATE issued_certificates SET revoked_at = ?, revoke_reason = ? WHERE serial = ?",
                (now.strftime("%Y-%m-%d %H:%M:%S.%f"), reason, serial),
            )
        return

    async def write(conn: Any) -> None:
        await conn.execute(
            "UPDATE ca.issued_certificates SET revoked_at = $1, revoke_reason = $2 "
            "WHERE serial = $3",
            now,
            reason,
            serial,
        )

    _on_postgres(instance, write)


MANY_REVOKED = 30_000  # about 4.5 MB of Revocation messages: over the 4 MiB message cap


async def _table_rows(instance: Instance, rows: list[dict[str, Any]] | None) -> None:
    """Add ``rows`` to ca-service's own table, as other replicas' history would; or, with
    None, remove the rows added that way."""
    from sqlalchemy import delete, insert

    from ca_service.store import issued_certificates
    from mosaic.config import CA, load_config
    from mosaic.db import Database

    db = Database(
        load_config(instance.home).database_url(CA), schema="ca", migrations_dir=Path("unused")
    )
    try:
        async with db.engine.begin() as conn:
            table = issued_certificates
            if rows is None:
                await conn.execute(delete(table).where(table.c.backend == "history"))
            else:
                await conn.execute(insert(table), rows)
    finally:
        await db.engine.dispose()


async def test_a_snapshot_larger_than_a_message_arrives_in_parts_without_expired_ones(
    instance: Instance,
    as_enrollment: ca_pb2_grpc.CertificateAuthorityStub,
    as_gateway: ca_pb2_grpc.CertificateAuthorityStub,
) -> None:
    """Every renewal revokes the certificate it replaces, so revocations pile up. The
    snapshot must not outgrow gRPC's message cap (every gateway would then refuse every
    request for good), and certificates past their not_after need no listing: the TLS
    handshake refuses them."""
    now = datetime.now(UTC)

    def row(i: int, *, expired: bool) -> dict[str, Any]:
        return {
            "serial": f"{'e' if expired else 'a'}{i:039x}",
            "grant_id": uuid.uuid4(),
            "subject_user_id": uuid.uuid4(),
            "peer_id": uuid.uuid4(),
            "backend": "history",
            "fingerprint_sha256": "0" * 64,
            "not_before": now - timedelta(days=2),
            # Expired for longer than the hour of grace for clocks behind ours.
            "not_after": now - timedelta(hours=2) if expired else now + timedelta(hours=1),
            "created_at": now - timedelta(days=2),
            "revoked_at": now - timedelta(days=1),
            "revoke_reason": "superseded by renewal",
        }

    valid = [row(i, expired=False) for i in range(MANY_REVOKED)]
    expired = [row(i, expired=True) for i in range(500)]
    await _table_rows(instance, valid + expired)
    try:
        recent = await issue(as_enrollment, make_csr())
        await _revoke(as_gateway, serial=recent.serial, reason="key compromise")

        watch = as_gateway.WatchRevocations(ca_pb2.WatchRevocationsRequest(), timeout=60)
        parts: list[ca_pb2.WatchRevocationsResponse] = []
        try:
            async for message in watch:
                parts.append(message)
                if not message.more:
                    break
        finally:
            watch.cancel()
        assert len(parts) >= 2
        # Only the first part says snapshot: a gateway that predates `more` adds the later
        # parts to its set rather than replacing the set with each part in turn.
        assert [p.snapshot for p in parts] == [True] + [False] * (len(parts) - 1)
        assert [p.more for p in parts] == [True] * (len(parts) - 1) + [False]
        assert all(p.ByteSize() < 4 * 1024 * 1024 for p in parts)
        serials = [r.serial for p in parts for r in p.revocations]
        assert len(serials) == len(set(serials))
        expected = {r["serial"] for r in valid} | {recent.serial}
        assert expected <= set(serials)
        assert not {r["serial"] for r in expired} & set(serials)

        listed: list[str] = []
        token = ""
        while True:
            page = await as_gateway.ListRevocations(
                ca_pb2.ListRevocationsRequest(page_size=7000, page_token=token), timeout=10
            )
            assert 0 < len(page.revocations) <= 5000  # clamped to the largest page
            listed += [r.serial for r in page.revocations]
            token = page.next_page_token
            if not token:
                break
        assert listed == sorted(set(listed))
        assert expected <= set(listed)
        assert not {r["serial"] for r in expired} & set(listed)
    finally:
        await _table_rows(instance, None)


@pytest.mark.parametrize(
    ("fields", "code", "reason"),
    [
        ({}, grpc.StatusCode.INVALID_ARGUMENT, "SERIAL_OR_GRANT_REQUIRED"),
        (
            {"serial": "ab", "grant_id": str(uuid.uuid4())},
            grpc.StatusCode.INVALID_ARGUMENT,
            "SERIAL_OR_GRANT_REQUIRED",
        ),
        ({"serial": "0x12"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SERIAL"),
        ({"grant_id": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_GRANT_ID"),
        ({"serial": "abcdef12"}, grpc.StatusCode.NOT_FOUND, "CERTIFICATE_NOT_FOUND"),
        (
            {"serial": "ab", "reason": "x" * 300},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REASON",
        ),
    ],
)
async def test_bad_revocation_requests(
    fields: dict[str, str],
    code: grpc.StatusCode,
    reason: str,
    as_gateway: ca_pb2_grpc.CertificateAuthorityStub,
) -> None:
    err = await rpc_error(_revoke(as_gateway, **fields))
    assert (err.code, err.reason) == (code, reason)


def test_log_holds_no_key_material(instance: Instance) -> None:
    text = instance.log_text()
    assert "certificate issued" in text
    assert "PRIVATE KEY" not in text
    seal_secret = (instance.home / "secrets" / "seal.key").read_text().strip()
    assert seal_secret not in text
