"""Grants, peers, scope and sealed secrets, through the real CLI and the real services.

Every test runs against real process trees (`mosaic init` + `mosaic up`), on SQLite and
on a real PostgreSQL. Tests that share the module's instance use their own peer names,
so they do not see each other's rows.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import timestamp_pb2

from mosaic.cli.admin import admin_channel, admin_metadata
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
from mosaic.runtime import load_sealer
from mosaic.sealing import Sealer, SealError, parse_secret, seal_context
from tests.support.instances import Instance, cli, internal_channel_as
from tests.support.pki import self_signed_pem

pytestmark = pytest.mark.slow

GATEWAY = "federation-gateway"
ENROLLMENT = "enrollment-service"
GRANTS = "grants-service"
CA = "ca-service"
USER = "3f2a1c9e-8b10-4f7c-9d55-0d5e7b0e5c2a"
TEAM = "7b0e5c2a-0d5e-4f7c-9d55-3f2a1c9e8b10"
CONCURRENT_CALLERS = 16
ENGINES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


# ---- fixtures and helpers --------------------------------------------------------------


def _database(request: pytest.FixtureRequest, engine: str, label: str) -> str:
    if engine != "postgres":
        return ""
    server = request.getfixturevalue("postgres_server")
    return str(server.create_database(f"{label}_{uuid.uuid4().hex[:10]}"))


@pytest.fixture(scope="module", params=ENGINES)
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    db = _database(request, request.param, "grants")
    inst = Instance(tmp_path_factory.mktemp(f"grants-{request.param}"), "b", db=db)
    inst.db_url = db  # type: ignore[attr-defined]
    inst.start()
    yield inst
    inst.stop()


@pytest.fixture
def scope_file(tmp_path: Path) -> Any:
    def write(doc: Any, name: str = "scope.json") -> str:
        path = tmp_path / name
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return str(path)

    return write


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def reason_of(err: grpc.aio.AioRpcError) -> str:
    return RemoteError.from_rpc_error(err).reason


def timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


class Grants:
    """The Grants API as a given internal identity sees it."""

    def __init__(self, home: Path, identity: str) -> None:
        self.channel = internal_channel_as(home, GRANTS, identity)
        self.stub = grants_pb2_grpc.GrantsStub(self.channel)

    async def __aenter__(self) -> grants_pb2_grpc.GrantsStub:
        return self.stub

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()


async def create_grant(
    stub: grants_pb2_grpc.GrantsStub,
    peer_name: str,
    *,
    expires_at: dt.datetime | None = None,
    resources: tuple[str, ...] = ("tasks",),
) -> grants_pb2.CreateGrantResponse:
    request = grants_pb2.CreateGrantRequest(
        subject_user_id=USER,
        peer_name=peer_name,
        scope_json=json.dumps({"resources": list(resources)}),
    )
    if expires_at is not None:
        request.expires_at.CopyFrom(timestamp(expires_at))
    return await stub.CreateGrant(request, timeout=10)


def activation(
    grant: grants_pb2.Grant, serial: str = "1a2b"
) -> grants_pb2.ActivateGrantAndPeerRequest:
    return grants_pb2.ActivateGrantAndPeerRequest(
        grant_id=grant.id,
        peer_id=grant.peer_id,
        cert_serial=serial,
        cert_pem="-----BEGIN CERTIFICATE-----\n(issued by the CA)\n-----END CERTIFICATE-----\n",
        cert_not_after=timestamp(dt.datetime.now(dt.UTC) + dt.timedelta(hours=24)),
        token_id=str(uuid.uuid4()),
    )


async def expect_refusal(call: Any, code: grpc.StatusCode, reason: str) -> RemoteError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    remote = RemoteError.from_rpc_error(caught.value)
    assert (remote.code, remote.reason) == (code, reason), remote
    return remote


def client_credentials(common_name: str) -> tuple[str, str]:
    """A throw-away client key and self-signed certificate, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return key_pem, self_signed_pem(key, common_name)


def key_fingerprints(key_pem: str) -> list[bytes]:
    """Byte strings that would show a clear-text key: PEM header, base64 body lines, raw DER."""
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    body = [line.encode() for line in key_pem.splitlines() if line and "-----" not in line]
    return [b"PRIVATE KEY", der, scalar, *body]


async def register_outbound(
    stub: grants_pb2_grpc.GrantsStub, name: str
) -> tuple[grants_pb2.Peer, str]:
    key_pem, cert_pem = client_credentials(name)
    reply = await stub.RegisterOutboundPeer(
        grants_pb2.RegisterOutboundPeerRequest(
            name=name,
            endpoint="a.example:7443",
            cert_pem=cert_pem,
            ca_bundle_pem=cert_pem,
            client_key_pem=key_pem,
            remote_grant_id=str(uuid.uuid4()),
            remote_subject_user_id=USER,
        ),
        timeout=10,
    )
    return reply.peer, key_pem


async def postgres_fetch(db_url: str, query: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


# ---- the issue's "must show", through the real CLI ---------------------------------------


def test_invalid_scope_fails_naming_every_offending_field(
    instance: Instance, scope_file: Any
) -> None:
    bad = scope_file(
        {
            "resources": ["tasks", "tasks", "bogus"],
            "excluded_resources": ["tasks"],
            "filters": {"notes": {"include_teams": ["not-a-uuid"]}},
            "max_rows_per_query": 0,
            "surprise": True,
        }
    )
    code, doc, _ = instance.cli(
        "federation", "grant", "create", "--user", USER, "--peer-name", unique("p"), "--scope", bad
    )
    assert code == 1, doc
    assert doc["error"]["code"] == "SCOPE_INVALID"
    named = {v.split(":", 1)[0] for v in doc["error"]["violations"]}
    assert named == {
        "scope.resources[1]",
        "scope.resources[2]",
        "scope.excluded_resources[0]",
        "scope.filters.notes",
        "scope.filters.notes.include_teams[0]",
        "scope.max_rows_per_query",
        "scope.surprise",
    }
    # The human view lists them too, one per line, and exits 1 as well.
    code, _, err = instance.cli(
        "federation",
        "grant",
        "create",
        "--user",
        USER,
        "--peer-name",
        unique("p"),
        "--scope",
        bad,
        json_out=False,
    )
    assert code == 1
    for field in ("scope.resources[2]", "scope.max_rows_per_query", "scope.surprise"):
        assert f"- {field}:" in err
    # Nothing was created by the refused requests.
    _, listed, _ = instance.cli("federation", "grant", "list")
    assert all(g["scope"]["resources"] != ["bogus"] for g in listed["grants"])


def test_a_scope_with_hundreds_of_problems_is_still_refused_readably(
    instance: Instance, scope_file: Any
) -> None:
    """Team names instead of UUIDs, 400 of them: the refusal used to outgrow gRPC's
    trailer limit on its way back and reach the operator as RESOURCE_EXHAUSTED."""
    teams = [f"the team formerly known as number {i}" for i in range(400)]
    bad = scope_file({"resources": ["tasks"], "filters": {"tasks": {"include_teams": teams}}})
    code, doc, err = instance.cli(
        "federation", "grant", "create", "--user", USER, "--peer-name", unique("p"), "--scope", bad
    )
    assert code == 1, (doc, err)
    assert doc["error"]["code"] == "SCOPE_INVALID"
    violations = doc["error"]["violations"]
    assert violations[0].startswith("scope.filters.tasks.include_teams[0]:")
    assert violations[-1].startswith("...:") and violations[-1].endswith(" more")


def test_sensitive_resource_needs_allow_sensitive(instance: Instance, scope_file: Any) -> None:
    scope = scope_file({"resources": ["notes", "credentials", "api_keys"]})
    peer = unique("sens")
    code, doc, _ = instance.cli(
        "federation", "grant", "create", "--user", USER, "--peer-name", peer, "--scope", scope
    )
    assert code == 1, doc
    assert doc["error"]["code"] == "SENSITIVE_NOT_ALLOWED"
    assert "--allow-sensitive" in doc["error"]["remediation"]
    assert any("credentials" in v for v in doc["error"]["violations"])
    assert any("api_keys" in v for v in doc["error"]["violations"])
    code, peers, _ = instance.cli("federation", "peer", "list")
    assert peer not in {p["name"] for p in peers["peers"]}, "a refused grant left a peer behind"

    code, grant, _ = instance.cli(
        "federation",
        "grant",
        "create",
        "--user",
        USER,
        "--peer-name",
        peer,
        "--scope",
        scope,
        "--allow-sensitive",
    )
    assert code == 0, grant
    assert grant["status"] == "pending"
    assert grant["sensitive"] is True
    warnings = [
        json.loads(line)
        for line in instance.log_text().splitlines()
        if grant["id"] in line and line.startswith("{")
    ]
    logged = [w for w in warnings if w.get("msg") == "sensitive grant created"]
    assert logged and logged[0]["level"] == "warning"
    assert logged[0]["sensitive_resources"] == "api_keys,credentials"


async def test_valid_grant_is_pending_shown_listed_and_revoked_for_good(
    instance: Instance, scope_file: Any
) -> None:
    scope = scope_file(
        {
            "resources": ["tasks", "notes"],
            "filters": {"tasks": {"include_teams": [TEAM.upper()], "include_personal": False}},
            "max_rows_per_query": 50,
        }
    )
    peer = unique("alpha")
    code, grant, _ = instance.cli(
        "federation", "grant", "create", "--user", USER, "--peer-name", peer, "--scope", scope
    )
    assert code == 0, grant
    for field in (
        "id",
        "peer_id",
        "subject_user_id",
        "status",
        "scope",
        "created_at",
        "activated_at",
        "revoked_at",
    ):
        assert field in grant
    assert grant["status"] == "pending"
    assert grant["subject_user_id"] == USER
    assert grant["scope"]["resources"] == ["notes", "tasks"]
    assert grant["scope"]["filters"]["tasks"] == {
        "include_teams": [TEAM],
        "include_personal": False,
    }
    assert grant["scope"]["max_rows_per_query"] == 50
    assert grant["created_at"].endswith("Z")
    assert grant["activated_at"] is None and grant["revoked_at"] is None
    assert grant["peer"]["name"] == peer and grant["peer"]["state"] == "pending"

    code, shown, _ = instance.cli("federation", "grant", "show", grant["id"])
    assert code == 0
    assert {k: shown[k] for k in ("id", "status", "scope", "peer_id")} == {
        k: grant[k] for k in ("id", "status", "scope", "peer_id")
    }
    code, pending, _ = instance.cli("federation", "grant", "list", "--status", "pending")
    assert code == 0
    assert grant["id"] in {g["id"] for g in pending["grants"]}
    code, by_peer, _ = instance.cli("federation", "grant", "list", "--peer", peer)
    assert [g["id"] for g in by_peer["grants"]] == [grant["id"]]
    code, human, _ = instance.cli("federation", "grant", "show", grant["id"], json_out=False)
    assert code == 0 and grant["id"] in human and "pending" in human

    code, revoked, _ = instance.cli(
        "federation", "grant", "revoke", grant["id"], "--reason", "no longer needed"
    )
    assert code == 0, revoked
    assert revoked["status"] == "revoked"
    assert revoked["revoked_at"] is not None
    assert revoked["revoke_reason"] == "no longer needed"

    # Nothing brings it back: not a second revoke (which succeeds: the grant is revoked,
    # as asked, and keeps its first revocation), not enrollment.
    code, again, err = instance.cli("federation", "grant", "revoke", grant["id"])
    assert code == 0, (again, err)
    assert again["status"] == "revoked"
    assert again["revoked_at"] == revoked["revoked_at"]
    assert again["revoke_reason"] == "no longer needed"
    code, _, err = instance.cli("federation", "grant", "revoke", grant["id"], json_out=False)
    assert code == 0 and err == "", err
    async with Grants(instance.home, ENROLLMENT) as enrollment:
        got = await enrollment.GetGrant(grants_pb2.GetGrantRequest(id=grant["id"]), timeout=10)
        await expect_refusal(
            enrollment.ActivateGrantAndPeer(activation(got.grant), timeout=10),
            grpc.StatusCode.FAILED_PRECONDITION,
            "GRANT_REVOKED",
        )
    code, shown, _ = instance.cli("federation", "grant", "show", grant["id"])
    assert shown["status"] == "revoked"
    code, pending, _ = instance.cli("federation", "grant", "list", "--status", "pending")
    assert grant["id"] not in {g["id"] for g in pending["grants"]}


def test_a_reason_holding_markup_is_kept_and_shown_as_text(
    instance: Instance, scope_file: Any
) -> None:
    """`grant revoke --reason` with rich markup in it used to revoke and then crash
    printing the result (MarkupError), and `grant show` crashed on that grant for good."""
    code, grant, _ = instance.cli(
        "federation", "grant", "create", "--user", USER,
        "--peer-name", unique("markup"), "--scope", scope_file({"resources": ["tasks"]}),
    )  # fmt: skip
    assert code == 0, grant
    reason = "[/] ended [link=https://evil.example]click[/link] [bold]"
    code, out, err = instance.cli(
        "federation", "grant", "revoke", grant["id"], "--reason", reason, json_out=False
    )
    assert (code, err) == (0, ""), out
    assert reason in out
    code, out, err = instance.cli("federation", "grant", "show", grant["id"], json_out=False)
    assert (code, err) == (0, ""), out
    assert reason in out and "revoked" in out
    code, shown, _ = instance.cli("federation", "grant", "show", grant["id"])
    assert code == 0 and shown["revoke_reason"] == reason


async def _issue_for(instance: Instance, grant_id: str, subject: str, peer_id: str) -> str:
    """A certificate for a grant from ca-service, as enrollment-service has one issued."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a")]))
        .sign(key, hashes.SHA256())
    )
    async with internal_channel_as(instance.home, CA, ENROLLMENT) as channel:
        issued = await ca_pb2_grpc.CertificateAuthorityStub(channel).IssueCertificate(
            ca_pb2.IssueCertificateRequest(
                csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(),
                grant_id=grant_id,
                subject_user_id=subject,
                peer_id=peer_id,
            ),
            timeout=20,
        )
    return str(issued.serial)


async def _revocations(instance: Instance) -> dict[str, str]:
    async with internal_channel_as(instance.home, CA, GATEWAY) as channel:
        listed = await ca_pb2_grpc.CertificateAuthorityStub(channel).ListRevocations(
            ca_pb2.ListRevocationsRequest(), timeout=10
        )
    return {r.serial: r.reason for r in listed.revocations}


async def test_revoking_a_grant_revokes_its_certificates_whatever_the_reason_and_on_retry(
    instance: Instance, scope_file: Any
) -> None:
    """A reason longer than the CA records used to make the CA refuse, and the revoke of
    the certificates was skipped with a warning; revoking again then stopped at
    GRANT_ALREADY_REVOKED, so nothing could ever revoke them."""
    code, grant, _ = instance.cli(
        "federation", "grant", "create", "--user", USER,
        "--peer-name", unique("long"), "--scope", scope_file({"resources": ["tasks"]}),
    )  # fmt: skip
    assert code == 0, grant
    ids = (grant["id"], grant["subject_user_id"], grant["peer_id"])
    first = await _issue_for(instance, *ids)
    reason = "the partner's contract ended\n" + "and everything goes " * 20
    code, revoked, err = instance.cli(
        "federation", "grant", "revoke", grant["id"], "--reason", reason
    )
    assert code == 0, (revoked, err)
    assert revoked["revoke_reason"] == reason.strip()
    at_ca = await _revocations(instance)
    assert first in at_ca
    assert len(at_ca[first]) == 256
    assert at_ca[first].startswith("the partner's contract ended and everything goes")
    assert at_ca[first].endswith("…")

    # A certificate the CA did not revoke then (it was down, say): revoking again says the
    # grant was revoked already, and revokes it.
    missed = await _issue_for(instance, *ids)
    code, again, _ = instance.cli("federation", "grant", "revoke", grant["id"])
    assert code == 0 and again["status"] == "revoked", again
    assert missed in await _revocations(instance)


def test_cli_usage_errors_exit_2_and_failures_exit_1(instance: Instance, scope_file: Any) -> None:
    scope = scope_file({"resources": ["tasks"]})
    create = ("federation", "grant", "create", "--peer-name", unique("u"))
    code, doc, _ = instance.cli(*create, "--user", "not-a-uuid", "--scope", scope)
    assert code == 2 and doc["error"]["code"] == "USAGE"
    code, _, _ = instance.cli(*create, "--scope", scope)  # --user missing
    assert code == 2
    code, doc, _ = instance.cli(*create, "--user", USER, "--scope", "/nonexistent/scope.json")
    assert code == 2 and "cannot read scope file" in doc["error"]["message"]
    code, doc, _ = instance.cli(*create, "--user", USER, "--scope", scope, "--expires-at", "soon")
    assert code == 2 and "--expires-at" in doc["error"]["message"]
    code, doc, _ = instance.cli(
        *create, "--user", USER, "--scope", scope_file("{not json", "b.json")
    )
    assert code == 1
    assert doc["error"]["code"] == "SCOPE_INVALID"
    assert any("invalid JSON" in v for v in doc["error"]["violations"])
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    code, doc, _ = instance.cli(*create, "--user", USER, "--scope", scope, "--expires-at", past)
    assert code == 1 and doc["error"]["code"] == "GRANT_REQUEST_INVALID"
    assert any(v.startswith("expires_at:") for v in doc["error"]["violations"])
    code, doc, _ = instance.cli("federation", "grant", "list", "--status", "bogus")
    assert code == 2
    code, doc, _ = instance.cli("federation", "grant", "show", "123")
    assert code == 2
    code, doc, _ = instance.cli("federation", "grant", "show", str(uuid.uuid4()))
    assert code == 1 and doc["error"]["code"] == "GRANT_NOT_FOUND"
    assert "grant list" in doc["error"]["remediation"]  # DESIGN: a remediation line
    code, doc, _ = instance.cli("federation", "peer", "show", unique("nobody"))
    assert code == 1 and doc["error"]["code"] == "PEER_NOT_FOUND"
    assert "peer list" in doc["error"]["remediation"]
    # A key of any length is named cut short: a whole one would pass gRPC's 8 KiB of
    # trailers and come back as RESOURCE_EXHAUSTED instead of NOT_FOUND.
    code, doc, _ = instance.cli("federation", "peer", "show", "x" * 20_000)
    assert code == 1 and doc["error"]["code"] == "PEER_NOT_FOUND", doc
    assert len(doc["error"]["message"]) < 200
    code, doc, _ = instance.cli("federation", "query", "y" * 20_000, "capabilities")
    assert code == 1 and doc["error"]["code"] == "PEER_NOT_FOUND", doc
    assert len(doc["error"]["message"]) < 200


def test_grant_with_cli_expiry_is_kept(instance: Instance, scope_file: Any) -> None:
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=7)).replace(microsecond=0)
    code, grant, _ = instance.cli(
        "federation",
        "grant",
        "create",
        "--user",
        USER,
        "--peer-name",
        unique("exp"),
        "--scope",
        scope_file({"resources": ["memory"]}),
        "--expires-at",
        expires.isoformat().replace("+00:00", "Z"),
    )
    assert code == 0, grant
    assert grant["expires_at"] == expires.isoformat().replace("+00:00", "Z")


# ---- the admin API ------------------------------------------------------------------------


def _timestamp_raw(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    """A Timestamp as any client may send it, in range or not."""
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


# Outside years 1-9999, or nanos outside 0..999999999: no datetime can hold them.
BAD_TIMESTAMPS = [(2**40, 0), (-(2**40), 0), (253402300800, 0), (2_000_000_000, -5)]


async def test_timestamps_outside_what_a_datetime_holds_are_invalid_arguments(
    instance: Instance,
) -> None:
    """CreateGrant.expires_at and ListAudit.since out of range used to be INTERNAL."""
    config = load_config(instance.home)
    md = admin_metadata(config)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    async with admin_channel(config) as channel:
        admin = gateway_pb2_grpc.FederationAdminStub(channel)
        name = unique("ts")
        for seconds, nanos in BAD_TIMESTAMPS:
            request = grants_pb2.CreateGrantRequest(
                subject_user_id=USER,
                peer_name=name,
                scope_json=json.dumps({"resources": ["tasks"]}),
                expires_at=_timestamp_raw(seconds, nanos),
            )
            refused = await expect_refusal(
                admin.CreateGrant(request, metadata=md, timeout=10),
                invalid,
                "GRANT_REQUEST_INVALID",
            )
            assert [field for field, _ in refused.violations] == ["expires_at"]
            refused = await expect_refusal(
                admin.ListAudit(
                    gateway_pb2.ListAuditRequest(since=_timestamp_raw(seconds, nanos)),
                    metadata=md,
                    timeout=10,
                ),
                invalid,
                "SINCE_INVALID",
            )
            assert [field for field, _ in refused.violations] == ["since"]
        # Nothing was created by the refused requests; the last second of 9999 is fine.
        await expect_refusal(
            admin.GetPeer(grants_pb2.GetPeerRequest(id=name), metadata=md, timeout=10),
            grpc.StatusCode.NOT_FOUND,
            "PEER_NOT_FOUND",
        )
        await admin.ListAudit(
            gateway_pb2.ListAuditRequest(since=_timestamp_raw(253402300799, 999_999_999)),
            metadata=md,
            timeout=10,
        )


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
async def test_admin_api_refuses_a_missing_or_wrong_token(
    instance: Instance, token: str | None
) -> None:
    config = load_config(instance.home)
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    async with admin_channel(config) as channel:
        stub = gateway_pb2_grpc.FederationAdminStub(channel)
        for call in (
            stub.ListGrants(grants_pb2.ListGrantsRequest(), metadata=metadata, timeout=10),
            stub.RevokeGrant(
                grants_pb2.RevokeGrantRequest(id=str(uuid.uuid4())), metadata=metadata, timeout=10
            ),
        ):
            await expect_refusal(call, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


# Text no operator means to store: NUL, other C0 controls, an escape sequence, DEL, C1 CSI.
CONTROL_REASONS = ["bad\x00reason", "ctl\x01", "\x1b[31mred\x1b[0m", "cr\r", "del\x7f", "\x9b2J"]
# Peer keys that name no peer: no UUID, and no peer has such a name.
IMPOSSIBLE_PEER_KEYS = ["\x00", "a\x00b", "%", "x" * 200]


async def test_control_characters_in_reasons_and_peer_keys_are_refused_alike_on_both_engines(
    instance: Instance,
) -> None:
    """A NUL in an operator's reason or in a peer key failed on Postgres (INTERNAL; RenewPeer
    and Query even said grants-service was not answering) and was stored on SQLite, and
    other control characters were stored on both. Now a reason with one is INVALID_ARGUMENT
    before anything changes, and a key no peer can have is NOT_FOUND, on both engines."""
    config = load_config(instance.home)
    md = admin_metadata(config)
    invalid, missing = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    async with Grants(instance.home, GATEWAY) as gw, Grants(instance.home, ENROLLMENT) as enr:
        grant = (await create_grant(gw, unique("ctl"))).grant
        await enr.ActivateGrantAndPeer(activation(grant), timeout=10)
    async with admin_channel(config) as channel:
        admin = gateway_pb2_grpc.FederationAdminStub(channel)
        for reason in CONTROL_REASONS:
            refused = await expect_refusal(
                admin.RevokeGrant(
                    grants_pb2.RevokeGrantRequest(id=grant.id, reason=reason),
                    metadata=md,
                    timeout=10,
                ),
                invalid,
                "REASON_INVALID",
            )
            assert refused.violations and refused.violations[0][0] == "reason"
            await expect_refusal(
                admin.SetPeerState(
                    grants_pb2.SetPeerStateRequest(
                        id=grant.peer_id, state=grants_pb2.PEER_STATE_SUSPENDED, reason=reason
                    ),
                    metadata=md,
                    timeout=10,
                ),
                invalid,
                "REASON_INVALID",
            )
        got = await admin.GetGrant(grants_pb2.GetGrantRequest(id=grant.id), metadata=md, timeout=10)
        assert got.grant.status == grants_pb2.GRANT_STATUS_ACTIVE
        assert got.peer.state == grants_pb2.PEER_STATE_ACTIVE

        for key in IMPOSSIBLE_PEER_KEYS:
            for call in (
                admin.GetPeer(grants_pb2.GetPeerRequest(id=key), metadata=md, timeout=10),
                admin.SetPeerState(
                    grants_pb2.SetPeerStateRequest(id=key, state=grants_pb2.PEER_STATE_REVOKED),
                    metadata=md,
                    timeout=10,
                ),
                admin.RemovePeer(grants_pb2.RemovePeerRequest(id=key), metadata=md, timeout=10),
                admin.ListAudit(gateway_pb2.ListAuditRequest(peer_id=key), metadata=md, timeout=10),
                admin.RenewPeer(gateway_pb2.RenewPeerRequest(id=key), metadata=md, timeout=10),
                admin.Query(
                    gateway_pb2.QueryRequest(
                        peer=key, capabilities=gateway_pb2.CapabilitiesRequest()
                    ),
                    metadata=md,
                    timeout=10,
                ),
            ):
                await expect_refusal(call, missing, "PEER_NOT_FOUND")

        # Tab and line feed are text; the CA gets the reason on one line.
        revoked = await admin.RevokeGrant(
            grants_pb2.RevokeGrantRequest(id=grant.id, reason="ended:\n\tcontract over"),
            metadata=md,
            timeout=10,
        )
        assert revoked.grant.revoke_reason == "ended:\n\tcontract over"

    serial = await _issue_for(instance, grant.id, grant.subject_user_id, grant.peer_id)
    async with internal_channel_as(instance.home, CA, GATEWAY) as channel:
        ca = ca_pb2_grpc.CertificateAuthorityStub(channel)
        for reason in CONTROL_REASONS:
            await expect_refusal(
                ca.RevokeCertificate(
                    ca_pb2.RevokeCertificateRequest(serial=serial, reason=reason), timeout=10
                ),
                invalid,
                "INVALID_REASON",
            )
        assert serial not in await _revocations(instance)
        await ca.RevokeCertificate(
            ca_pb2.RevokeCertificateRequest(serial=serial, reason="ended:\n\tcontract over"),
            timeout=10,
        )
    assert (await _revocations(instance))[serial] == "ended: contract over"


# ---- transitions --------------------------------------------------------------------------


async def test_grant_and_peer_transitions_and_their_refusals(instance: Instance) -> None:
    home = instance.home
    failed = grpc.StatusCode.FAILED_PRECONDITION
    async with Grants(home, GATEWAY) as gw, Grants(home, ENROLLMENT) as enr:
        peer_name = unique("t")
        first = (await create_grant(gw, peer_name)).grant
        peer_id = first.peer_id

        # A pending peer is not suspended or resumed; only enrollment activates it.
        for target, reason in (
            (grants_pb2.PEER_STATE_SUSPENDED, "PEER_PENDING"),
            (grants_pb2.PEER_STATE_ACTIVE, "PEER_PENDING"),
        ):
            await expect_refusal(
                gw.SetPeerState(grants_pb2.SetPeerStateRequest(id=peer_id, state=target)),
                failed,
                reason,
            )
        await expect_refusal(
            gw.SetPeerState(
                grants_pb2.SetPeerStateRequest(id=peer_id, state=grants_pb2.PEER_STATE_PENDING)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "PEER_STATE_INVALID",
        )

        # Enrollment: grant and peer become active together.
        activated = await enr.ActivateGrantAndPeer(activation(first, "aa01"), timeout=10)
        assert activated.grant.status == grants_pb2.GRANT_STATUS_ACTIVE
        assert activated.grant.HasField("activated_at")
        assert activated.peer.state == grants_pb2.PEER_STATE_ACTIVE
        assert activated.peer.cert_serial == "aa01"
        await expect_refusal(
            enr.ActivateGrantAndPeer(activation(first)), failed, "GRANT_ALREADY_ACTIVE"
        )

        # A second grant for the same (already active) peer reuses it and can be enrolled;
        # each grant keeps its own certificate (the peer shows the latest).
        second = (await create_grant(gw, peer_name, resources=("notes",))).grant
        assert second.peer_id == peer_id
        other = (await create_grant(gw, unique("other"))).grant
        mismatched = activation(second)
        mismatched.peer_id = other.peer_id
        await expect_refusal(enr.ActivateGrantAndPeer(mismatched), failed, "GRANT_PEER_MISMATCH")
        again = await enr.ActivateGrantAndPeer(activation(second, "aa02"), timeout=10)
        assert (again.peer.cert_serial, again.grant.cert_serial) == ("aa02", "aa02")
        kept = await gw.GetGrant(grants_pb2.GetGrantRequest(id=first.id), timeout=10)
        assert kept.grant.cert_serial == "aa01"

        # Peer: active ↔ suspended, with "already" refusals naming the state.
        code, doc, _ = instance.cli("federation", "peer", "suspend", peer_name, "--reason", "audit")
        assert code == 0 and doc["state"] == "suspended", doc
        # The reason is kept with the peer and shown; each grant's own serial is shown too,
        # not only the newest one the peer carries.
        assert doc["state_reason"] == "audit"
        code, doc, _ = instance.cli("federation", "peer", "show", peer_name)
        assert code == 0 and doc["state_reason"] == "audit", doc
        assert doc["cert_serial"] == "aa02"
        assert {g["id"]: (g["status"], g["cert_serial"]) for g in doc["grants"]} == {
            first.id: ("active", "aa01"),
            second.id: ("active", "aa02"),
        }
        code, out, _ = instance.cli("federation", "peer", "show", peer_name, json_out=False)
        assert code == 0 and "aa01" in out and "audit" in out and "newest grant" in out, out
        code, doc, _ = instance.cli("federation", "peer", "list", "--state", "suspended")
        assert code == 0
        assert [p["state_reason"] for p in doc["peers"] if p["name"] == peer_name] == ["audit"]
        # Suspending it again has nothing to do and succeeds (as resume and revoke do).
        code, doc, _ = instance.cli("federation", "peer", "suspend", peer_name)
        assert code == 0 and doc["state"] == "suspended", doc
        code, out, err = instance.cli("federation", "peer", "suspend", peer_name, json_out=False)
        assert code == 0 and "was suspended already: nothing to do" in out, (out, err)
        # A suspended peer takes no new grant until it is resumed.
        await expect_refusal(create_grant(gw, peer_name), failed, "PEER_SUSPENDED")
        # Enrollment of a pending grant of a suspended peer is refused and changes nothing.
        code, doc, _ = instance.cli("federation", "peer", "resume", peer_name)
        assert code == 0 and doc["state"] == "active" and doc["state_reason"] is None, doc
        third = (await create_grant(gw, peer_name)).grant
        code, doc, _ = instance.cli("federation", "peer", "suspend", peer_name)
        assert code == 0
        await expect_refusal(enr.ActivateGrantAndPeer(activation(third)), failed, "PEER_SUSPENDED")
        unchanged = await gw.GetGrant(grants_pb2.GetGrantRequest(id=third.id), timeout=10)
        assert unchanged.grant.status == grants_pb2.GRANT_STATUS_PENDING, "not rolled back"
        code, doc, _ = instance.cli("federation", "peer", "resume", peer_name)
        assert code == 0 and doc["state"] == "active"
        code, doc, _ = instance.cli("federation", "peer", "resume", peer_name)
        assert code == 0 and doc["state"] == "active", doc

        # Revoking a peer revokes its live grants; revoked is terminal for both.
        revoked = await gw.SetPeerState(
            grants_pb2.SetPeerStateRequest(
                id=peer_id, state=grants_pb2.PEER_STATE_REVOKED, reason="compromised"
            ),
            timeout=10,
        )
        assert revoked.peer.state == grants_pb2.PEER_STATE_REVOKED
        listed = await gw.ListGrants(grants_pb2.ListGrantsRequest(peer_id=peer_id), timeout=10)
        assert {g.id for g in listed.grants} == {first.id, second.id, third.id}
        assert {g.status for g in listed.grants} == {grants_pb2.GRANT_STATUS_REVOKED}
        for target in (grants_pb2.PEER_STATE_ACTIVE, grants_pb2.PEER_STATE_SUSPENDED):
            await expect_refusal(
                gw.SetPeerState(grants_pb2.SetPeerStateRequest(id=peer_id, state=target)),
                failed,
                "PEER_REVOKED",
            )
        await expect_refusal(
            gw.SetPeerState(
                grants_pb2.SetPeerStateRequest(id=peer_id, state=grants_pb2.PEER_STATE_REVOKED)
            ),
            failed,
            "PEER_ALREADY_REVOKED",
        )
        await expect_refusal(
            gw.RevokeGrant(grants_pb2.RevokeGrantRequest(id=first.id)),
            failed,
            "GRANT_ALREADY_REVOKED",
        )
        await expect_refusal(create_grant(gw, peer_name), failed, "PEER_REVOKED")
        await expect_refusal(
            gw.GetGrant(grants_pb2.GetGrantRequest(id=str(uuid.uuid4()))),
            grpc.StatusCode.NOT_FOUND,
            "GRANT_NOT_FOUND",
        )
        await expect_refusal(
            gw.GetGrant(grants_pb2.GetGrantRequest(id="nope")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ID_INVALID",
        )


async def test_expired_grant_is_never_served(instance: Instance) -> None:
    async with Grants(instance.home, GATEWAY) as gw, Grants(instance.home, ENROLLMENT) as enr:
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
        active = (await create_grant(gw, unique("e1"), expires_at=soon)).grant
        pending = (await create_grant(gw, unique("e2"), expires_at=soon)).grant
        got = await enr.ActivateGrantAndPeer(activation(active), timeout=10)
        assert got.grant.status == grants_pb2.GRANT_STATUS_ACTIVE

        while dt.datetime.now(dt.UTC) <= soon + dt.timedelta(milliseconds=200):
            await asyncio.sleep(0.2)

        read = await enr.GetGrant(grants_pb2.GetGrantRequest(id=active.id), timeout=10)
        assert read.grant.status == grants_pb2.GRANT_STATUS_EXPIRED
        listed = await gw.ListGrants(
            grants_pb2.ListGrantsRequest(status=grants_pb2.GRANT_STATUS_ACTIVE), timeout=10
        )
        assert active.id not in {g.id for g in listed.grants}
        # A pending grant past its expiry can no longer be enrolled, nor revoked.
        await expect_refusal(
            enr.ActivateGrantAndPeer(activation(pending)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "GRANT_EXPIRED",
        )
        await expect_refusal(
            gw.RevokeGrant(grants_pb2.RevokeGrantRequest(id=active.id)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "GRANT_EXPIRED",
        )
    code, shown, _ = instance.cli("federation", "grant", "show", pending.id)
    assert code == 0 and shown["status"] == "expired"


# ---- concurrency: exactly one winner --------------------------------------------------------


async def _race(calls: list[Any]) -> tuple[int, list[str]]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    wins = sum(1 for r in results if not isinstance(r, BaseException))
    reasons = [reason_of(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
    unexpected = [
        r
        for r in results
        if isinstance(r, BaseException) and not isinstance(r, grpc.aio.AioRpcError)
    ]
    assert not unexpected, unexpected
    return wins, reasons


async def test_concurrent_revocations_have_exactly_one_winner(instance: Instance) -> None:
    async with Grants(instance.home, GATEWAY) as setup:
        grant = (await create_grant(setup, unique("race"))).grant
    # One channel per caller: separate connections, so the calls really overlap.
    callers = [Grants(instance.home, GATEWAY) for _ in range(CONCURRENT_CALLERS)]
    try:
        wins, reasons = await _race(
            [
                c.stub.RevokeGrant(grants_pb2.RevokeGrantRequest(id=grant.id), timeout=30)
                for c in callers
            ]
        )
    finally:
        await asyncio.gather(*(c.channel.close() for c in callers))
    assert wins == 1
    assert reasons == ["GRANT_ALREADY_REVOKED"] * (CONCURRENT_CALLERS - 1)


async def test_concurrent_peer_suspensions_and_activations_have_one_winner(
    instance: Instance,
) -> None:
    async with Grants(instance.home, GATEWAY) as gw:
        grant = (await create_grant(gw, unique("race-peer"))).grant
    enrollers = [Grants(instance.home, ENROLLMENT) for _ in range(CONCURRENT_CALLERS)]
    gateways = [Grants(instance.home, GATEWAY) for _ in range(CONCURRENT_CALLERS)]
    try:
        wins, reasons = await _race(
            [e.stub.ActivateGrantAndPeer(activation(grant), timeout=30) for e in enrollers]
        )
        assert wins == 1
        assert reasons == ["GRANT_ALREADY_ACTIVE"] * (CONCURRENT_CALLERS - 1)
        suspend = grants_pb2.SetPeerStateRequest(
            id=grant.peer_id, state=grants_pb2.PEER_STATE_SUSPENDED
        )
        wins, reasons = await _race([g.stub.SetPeerState(suspend, timeout=30) for g in gateways])
        assert wins == 1
        assert reasons == ["PEER_ALREADY_SUSPENDED"] * (CONCURRENT_CALLERS - 1)
    finally:
        await asyncio.gather(*(c.channel.close() for c in [*enrollers, *gateways]))


# ---- peers: removal, outbound peers, sealed keys, change stream ------------------------------


async def test_removing_a_peer_removes_its_grants(instance: Instance) -> None:
    peer_name = unique("gone")
    async with Grants(instance.home, GATEWAY) as gw:
        first = (await create_grant(gw, peer_name)).grant
        second = (await create_grant(gw, peer_name, resources=("notes",))).grant
        kept = (await create_grant(gw, unique("kept"))).grant
    issued = await _issue_for(instance, first.id, first.subject_user_id, first.peer_id)
    code, doc, _ = instance.cli("federation", "peer", "remove", peer_name)
    assert code == 0, doc
    assert sorted(doc["removed_grant_ids"]) == sorted([first.id, second.id])
    # The certificates of its grants are revoked at the CA too.
    assert (await _revocations(instance)).get(issued) == "peer removed"
    assert doc["peer"]["name"] == peer_name
    for grant_id in (first.id, second.id):
        code, doc, _ = instance.cli("federation", "grant", "show", grant_id)
        assert code == 1 and doc["error"]["code"] == "GRANT_NOT_FOUND"
    code, doc, _ = instance.cli("federation", "grant", "show", kept.id)
    assert code == 0
    code, doc, _ = instance.cli("federation", "peer", "show", peer_name)
    assert code == 1 and doc["error"]["code"] == "PEER_NOT_FOUND"
    code, doc, _ = instance.cli("federation", "peer", "remove", peer_name)
    assert code == 1 and doc["error"]["code"] == "PEER_NOT_FOUND"


async def test_outbound_peer_key_is_sealed_at_rest(instance: Instance) -> None:
    name = unique("outbound")
    async with Grants(instance.home, GATEWAY) as gw:
        peer, key_pem = await register_outbound(gw, name)
        assert peer.state == grants_pb2.PEER_STATE_ACTIVE
        assert peer.direction == grants_pb2.PEER_DIRECTION_OUTBOUND
        assert peer.has_client_key
        creds = await gw.GetPeerCredentials(
            grants_pb2.GetPeerCredentialsRequest(id=peer.id), timeout=10
        )
        assert creds.client_key_pem == key_pem
        await expect_refusal(
            register_outbound(gw, name), grpc.StatusCode.ALREADY_EXISTS, "PEER_NAME_TAKEN"
        )
        # An outbound name is not reused for a grant to a gateway we serve.
        await expect_refusal(
            create_grant(gw, name), grpc.StatusCode.FAILED_PRECONDITION, "PEER_NAME_TAKEN"
        )
    async with Grants(instance.home, ENROLLMENT) as enr:
        await expect_refusal(
            enr.GetPeerCredentials(grants_pb2.GetPeerCredentialsRequest(id=peer.id)),
            grpc.StatusCode.PERMISSION_DENIED,
            "CALLER_NOT_ALLOWED",
        )
    code, doc, _ = instance.cli("federation", "peer", "show", name)
    assert code == 0 and doc["direction"] == "outbound" and doc["cert_serial"] == peer.cert_serial
    assert "key" not in json.dumps(doc).lower()

    needles = key_fingerprints(key_pem)
    db_url: str = instance.db_url  # type: ignore[attr-defined]
    if not db_url:
        data = b"".join(p.read_bytes() for p in (instance.home / "data").glob("grants_service.db*"))
        assert name.encode() in data, "the scan does not see the peer's row"
    else:
        rows = await postgres_fetch(db_url, "SELECT t::text AS row FROM grants.federation_peers t")
        data = "\n".join(r["row"] for r in rows).encode()
        assert name.encode() in data
        blobs = await postgres_fetch(
            db_url, "SELECT sealed_client_key FROM grants.federation_peers WHERE name = $1", name
        )
        data += bytes(blobs[0]["sealed_client_key"])
    for needle in needles:
        assert needle not in data
    # The CA's sealed key files hold no clear text either.
    for sealed in (instance.home / "pki" / "federation").glob("*.sealed"):
        assert b"PRIVATE KEY" not in sealed.read_bytes()


async def test_a_reserved_outbound_name_is_held_until_registered_or_released(
    instance: Instance,
) -> None:
    """`peer add` reserves its name before spending a token (a pending outbound peer):
    the reservation refuses every other use of the name, becomes the peer when registered
    under its id, and only a reservation is let go."""
    name = unique("reserved")
    key_pem, cert_pem = client_credentials(name)
    async with Grants(instance.home, GATEWAY) as gw:
        reserved = await gw.ReserveOutboundPeer(
            grants_pb2.ReserveOutboundPeerRequest(name=name), timeout=10
        )
        assert reserved.peer.state == grants_pb2.PEER_STATE_PENDING
        assert reserved.peer.direction == grants_pb2.PEER_DIRECTION_OUTBOUND
        # Nothing to query it with yet: not mistaken for a peer we serve.
        await expect_refusal(
            gw.GetPeerCredentials(grants_pb2.GetPeerCredentialsRequest(id=name)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "PEER_PENDING",
        )
        refusal = await expect_refusal(
            gw.ReserveOutboundPeer(grants_pb2.ReserveOutboundPeerRequest(name=name)),
            grpc.StatusCode.ALREADY_EXISTS,
            "PEER_NAME_TAKEN",
        )
        assert refusal.metadata["current_state"] == "pending"
        assert "being added right now" in refusal.message
        await expect_refusal(
            register_outbound(gw, name), grpc.StatusCode.ALREADY_EXISTS, "PEER_NAME_TAKEN"
        )
        await expect_refusal(
            create_grant(gw, name), grpc.StatusCode.FAILED_PRECONDITION, "PEER_NAME_TAKEN"
        )
        registered = await gw.RegisterOutboundPeer(
            grants_pb2.RegisterOutboundPeerRequest(
                name=name,
                endpoint="a.example:7443",
                cert_pem=cert_pem,
                ca_bundle_pem=cert_pem,
                client_key_pem=key_pem,
                reservation_id=reserved.peer.id,
            ),
            timeout=10,
        )
        assert registered.peer.id == reserved.peer.id
        assert registered.peer.state == grants_pb2.PEER_STATE_ACTIVE
        creds = await gw.GetPeerCredentials(
            grants_pb2.GetPeerCredentialsRequest(id=name), timeout=10
        )
        assert creds.client_key_pem == key_pem
        released = await gw.ReleaseOutboundPeer(
            grants_pb2.ReleaseOutboundPeerRequest(reservation_id=reserved.peer.id), timeout=10
        )
        assert not released.released  # a registered peer is not a reservation any more
        other = await gw.ReserveOutboundPeer(
            grants_pb2.ReserveOutboundPeerRequest(name=unique("reserved")), timeout=10
        )
        released = await gw.ReleaseOutboundPeer(
            grants_pb2.ReleaseOutboundPeerRequest(reservation_id=other.peer.id), timeout=10
        )
        assert released.released
    async with Grants(instance.home, ENROLLMENT) as enr:
        await expect_refusal(
            enr.ReserveOutboundPeer(grants_pb2.ReserveOutboundPeerRequest(name=unique("x"))),
            grpc.StatusCode.PERMISSION_DENIED,
            "CALLER_NOT_ALLOWED",
        )


async def test_watch_changes_reports_changed_grants_and_peers(instance: Instance) -> None:
    async with Grants(instance.home, GATEWAY) as gw:
        grant = (await create_grant(gw, unique("watched"))).grant
        stream = gw.WatchChanges(grants_pb2.WatchChangesRequest(), timeout=30)
        subscribed = await stream.read()
        assert not subscribed.grant_ids and not subscribed.peer_ids
        await gw.RevokeGrant(grants_pb2.RevokeGrantRequest(id=grant.id), timeout=10)
        seen: set[str] = set()
        while grant.id not in seen:
            change = await stream.read()
            seen.update(change.grant_ids)
        await gw.SetPeerState(
            grants_pb2.SetPeerStateRequest(id=grant.peer_id, state=grants_pb2.PEER_STATE_REVOKED),
            timeout=10,
        )
        peers: set[str] = set()
        while grant.peer_id not in peers:
            change = await stream.read()
            peers.update(change.peer_ids)
        stream.cancel()


# ---- sealing: start-up refusal and rotation end to end ---------------------------------------


@pytest.mark.parametrize(
    "secret",
    ["password" * 8, None],
    ids=["weak", "missing"],
)
def test_bad_seal_secret_stops_serve_and_up_with_a_remediation(
    tmp_path: Path, secret: str | None
) -> None:
    inst = Instance(tmp_path, "weak")
    seal_file = inst.home / "secrets" / "seal.key"
    if secret is None:
        seal_file.unlink()
    else:
        seal_file.write_text(secret + "\n")
    code, doc, _ = inst.cli("serve", GRANTS)
    assert code == 1, doc
    assert doc["error"]["code"] == "CONFIG"
    assert "seal secret" in doc["error"]["message"]
    assert doc["error"]["remediation"]
    if secret is not None:
        assert secret not in json.dumps(doc)
    code, _, err = inst.cli("serve", GRANTS, json_out=False)
    assert code == 1
    assert "what to do" in err
    code, _, err = inst.cli("up", json_out=False, timeout=60)
    assert code != 0
    assert "what to do" in err


@pytest.mark.parametrize("engine", ENGINES)
async def test_seal_rotation_end_to_end(
    request: pytest.FixtureRequest, tmp_path: Path, engine: str
) -> None:
    inst = Instance(tmp_path, "rot", db=_database(request, engine, "rotate"))
    home = inst.home
    secrets_dir = home / "secrets"
    old_secret = parse_secret((secrets_dir / "seal.key").read_text())
    inst.start()
    try:
        async with Grants(home, GATEWAY) as gw:
            peer, key_pem = await register_outbound(gw, "outbound-a")

        # Step 1 while the services still run with the old secret.
        code, doc, _ = cli(home, "seal", "rotate", "--generate")
        assert code == 0, doc
        assert (secrets_dir / "seal.previous.key").is_file()
        assert doc["key_id"] != doc["previous_key_id"]
        code, doc, _ = cli(home, "seal", "rotate", "--generate")
        assert code == 1 and doc["error"]["code"] == "SEAL_ROTATION_IN_PROGRESS"
        # Re-sealing before a restart would seal under the old secret again: refused.
        code, doc, _ = cli(home, "seal", "rotate")
        assert code == 1 and doc["error"]["code"] == "SEAL_RESTART_NEEDED", doc
        new_key_id = load_sealer(load_config(home)).key_id
        # The doctor says what the services run with: the old secret, until restarted.
        code, doc, _ = cli(home, "gateway", "doctor")
        seal_rows = [c for c in doc["checks"] if c["name"] == "seal_secret"]
        assert code == 1 and len(seal_rows) == 5, doc
        assert all(not c["ok"] and "restart" in c["remediation"] for c in seal_rows), seal_rows
        inst.stop()

        inst.start()  # loads the new secret and the previous one
        code, doc, _ = cli(home, "gateway", "doctor")
        seal_rows = [c for c in doc["checks"] if c["name"] == "seal_secret"]
        assert code == 0 and {c["detail"] for c in seal_rows} == {f"key id {new_key_id}"}, doc
        async with Grants(home, GATEWAY) as gw:
            creds = await gw.GetPeerCredentials(
                grants_pb2.GetPeerCredentialsRequest(id=peer.id), timeout=10
            )
            assert creds.client_key_pem == key_pem
        code, doc, _ = cli(home, "seal", "rotate")
        assert code == 0, doc
        assert doc["resealed"] == {GRANTS: 1, "files": 2}
        assert doc["previous_seal_secret_file"] == str(secrets_dir / "seal.previous.key")
        code, doc, _ = cli(home, "seal", "rotate")
        assert code == 0 and doc["resealed"] == {GRANTS: 0, "files": 0}
        code, human, _ = cli(home, "seal", "rotate", json_out=False)
        assert code == 0
        assert "remove" in human and "seal.previous.key" in human
        inst.stop()

        os.unlink(secrets_dir / "seal.previous.key")
        config = load_config(home)
        new_only = load_sealer(config)
        old_only = Sealer(old_secret)
        for name in ("root.key.sealed", "intermediate.key.sealed"):
            blob = (config.federation_pki_dir / name).read_bytes()
            assert b"PRIVATE KEY" in new_only.open(
                blob, seal_context("files", "pki-federation", name)
            )
            assert not new_only.needs_reseal(blob)
            with pytest.raises(SealError, match="SEAL_UNKNOWN_KEY"):
                old_only.open(blob, seal_context("files", "pki-federation", name))

        inst.start()  # only the new secret now
        async with Grants(home, GATEWAY) as gw:
            creds = await gw.GetPeerCredentials(
                grants_pb2.GetPeerCredentialsRequest(id=peer.id), timeout=10
            )
            assert creds.client_key_pem == key_pem
        code, doc, _ = cli(home, "gateway", "doctor")
        assert code == 0, doc
    finally:
        inst.stop()
