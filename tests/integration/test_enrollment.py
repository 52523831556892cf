"""Enrollment between two real gateways (flows 2 and 3): `grant token` on B, `peer add` on A.

Two instance homes, two `mosaic up` process trees on loopback, both on SQLite with the
local CA; everything goes through the real CLI, except where a test needs to speak to
B's enrollment listener itself (many concurrent redeems, a CSR A would never send).

B allows more redeem attempts per address than the default (one machine runs every
test from 127.0.0.1); the rate-limit test at the end exhausts that allowance, so it
runs last, followed by the checks over everything the module did (logs, A's files).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import secrets
import sqlite3
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mosaic.config import load_config
from mosaic.enrollment_url import parse_enrollment_url
from mosaic.errors import RemoteError
from mosaic.federation.v1 import gateway_pb2, gateway_pb2_grpc, grants_pb2, grants_pb2_grpc
from mosaic.x509ext import grant_identity, load_pem_certificates, verify_chain
from tests.support.instances import Instance, internal_channel_as
from tests.support.pki import csr_pem as _csr

pytestmark = pytest.mark.slow

REDEEM_BURST = 60
CONCURRENT_REDEEMS = 24
REFUSED_MESSAGE = "enrollment token is not valid"


@dataclass
class Pair:
    a: Instance
    b: Instance
    scope: Path
    tokens: list[str] = field(default_factory=list)
    added: int = 0

    def grant(self, user: str | None = None) -> dict[str, Any]:
        code, doc, err = self.b.cli(
            "federation",
            "grant",
            "create",
            "--user",
            user or str(uuid.uuid4()),
            "--peer-name",
            "a",
            "--scope",
            str(self.scope),
        )
        assert code == 0, (doc, err)
        return doc

    def token(self, grant_id: str, *ttl: str) -> dict[str, Any]:
        code, doc, err = self.b.cli("federation", "grant", "token", grant_id, *ttl)
        assert code == 0, (doc, err)
        self.tokens.append(doc["token"])
        return doc

    def add(self, url: str) -> tuple[int, dict[str, Any]]:
        """`peer add URL` on A, under a fresh local name each time."""
        self.added += 1
        code, doc, err = self.a.cli(
            "federation", "peer", "add", url, "--name", f"b-{self.added}", timeout=120
        )
        assert isinstance(doc, dict), (code, doc, err)
        return code, doc

    def grant_status(self, grant_id: str) -> str:
        code, doc, _ = self.b.cli("federation", "grant", "show", grant_id)
        assert code == 0, doc
        return str(doc["status"])


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("enroll")
    a = Instance(root, "a")
    b = Instance(root, "b")
    config_file = b.home / "instance.toml"
    doc = tomllib.loads(config_file.read_text())
    # Enough attempts for every test here, and (almost) no refill: the rate-limit test
    # can then exhaust the allowance and see it stay exhausted, however slow the machine.
    doc.setdefault("rate_limit", {}).update(redeem_burst=REDEEM_BURST, redeem_per_second=0.001)
    config_file.write_text(tomli_w.dumps(doc))
    scope = root / "scope.json"
    scope.write_text(json.dumps({"resources": ["tasks", "notes"]}))
    try:
        a.start()
        b.start()
        yield Pair(a, b, scope)
    finally:
        a.stop()
        b.stop()


# ---- helpers that speak to B's enrollment listener directly --------------------------------


def _enrollment_channel(b: Instance) -> grpc.aio.Channel:
    config = load_config(b.home)
    root = (config.federation_pki_dir / "root.crt").read_bytes()
    return grpc.aio.secure_channel(
        f"127.0.0.1:{config.ports.enrollment}",
        grpc.ssl_channel_credentials(root_certificates=root),
    )


async def _redeem(b: Instance, token: str, csr_pem: str) -> Any:
    """The RedeemResponse, or the RemoteError B answered with."""
    async with _enrollment_channel(b) as channel:
        stub = gateway_pb2_grpc.PeerEnrollmentStub(channel)
        try:
            return await stub.Redeem(
                gateway_pb2.PeerRedeemRequest(token=token, csr_pem=csr_pem), timeout=60
            )
        except grpc.aio.AioRpcError as err:
            return RemoteError.from_rpc_error(err)


def _audit_rows(b: Instance) -> list[dict[str, Any]]:
    path = b.home / "data" / "federation_gateway.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT * FROM federation_audit_log WHERE verb = 'redeem' ORDER BY created_at"
        ).fetchall()
    return [dict(r) for r in rows]


def _same_uuid(stored: Any, expected: str) -> bool:
    return stored is not None and uuid.UUID(str(stored)) == uuid.UUID(expected)


def _hint_rows(b: Instance, token: str) -> list[dict[str, Any]]:
    return [r for r in _audit_rows(b) if (r["detail"] or "").startswith(f"token {token[:8]}")]


def _assert_refused(doc: dict[str, Any], reason: str) -> None:
    assert doc["error"]["code"] == reason, doc
    assert REFUSED_MESSAGE in doc["error"]["message"], doc


def _assert_remote_refused(remote: RemoteError, reason: str) -> None:
    assert (remote.code, remote.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason), str(remote)
    assert REFUSED_MESSAGE in remote.message


# ---- flows ---------------------------------------------------------------------------------


def test_peer_add_enrolls_a_and_activates_bs_grant(pair: Pair) -> None:
    user = str(uuid.uuid4())
    grant = pair.grant(user)
    token = pair.token(grant["id"])
    assert token["grant_id"] == grant["id"]
    url = parse_enrollment_url(token["enrollment_url"])
    assert url.token == token["token"]
    assert url.ca_sha256 == pair.b.init_doc["federation_root_sha256"]
    assert url.endpoint == pair.b.init_doc["enrollment_endpoint"]
    expires = dt.datetime.fromisoformat(token["expires_at"].replace("Z", "+00:00"))
    assert (
        dt.timedelta(seconds=800) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=900)
    )

    code, peer = pair.add(token["enrollment_url"])
    assert code == 0, peer
    assert peer["state"] == "active"
    assert peer["direction"] == "outbound"
    assert peer["endpoint"] == pair.b.init_doc["federation_endpoint"]
    assert peer["cert_serial"]
    not_after = dt.datetime.fromisoformat(peer["cert_not_after"].replace("Z", "+00:00"))
    assert not_after > dt.datetime.now(dt.UTC)

    code, listed, _ = pair.a.cli("federation", "peer", "list")
    assert code == 0
    assert [p["id"] for p in listed["peers"] if p["name"] == peer["name"]] == [peer["id"]]
    code, shown, _ = pair.a.cli("federation", "peer", "show", peer["name"])
    assert code == 0
    assert (shown["state"], shown["cert_serial"]) == ("active", peer["cert_serial"])

    code, on_b, _ = pair.b.cli("federation", "grant", "show", grant["id"])
    assert code == 0
    assert on_b["status"] == "active"
    assert on_b["peer"]["state"] == "active"
    assert on_b["peer"]["cert_serial"] == peer["cert_serial"]

    # What A stored: a certificate for B's grant, chaining to B's pinned root, whose key
    # A holds (sealed); and B's root as the bundle to dial B with.
    creds = asyncio.run(_peer_credentials(pair.a, peer["id"]))
    certs = load_pem_certificates(creds.peer.cert_pem)
    identity = grant_identity(certs[0])
    assert (identity.grant_id, identity.subject_user_id) == (grant["id"], user)
    b_root = x509.load_pem_x509_certificate(
        (pair.b.home / "pki" / "federation" / "root.crt").read_bytes()
    )
    verify_chain(certs[0], certs[1:], [b_root])
    assert load_pem_certificates(creds.peer.ca_bundle_pem) == [b_root]
    key = serialization.load_pem_private_key(creds.client_key_pem.encode(), None)
    assert key.public_key() == certs[0].public_key()
    assert (creds.peer.remote_grant_id, creds.peer.remote_subject_user_id) == (grant["id"], user)

    rows = _hint_rows(pair.b, token["token"])
    assert [(r["outcome"], r["status"]) for r in rows] == [("allowed", "OK")]
    assert _same_uuid(rows[0]["grant_id"], grant["id"])
    assert _same_uuid(rows[0]["peer_id"], grant["peer_id"])
    assert rows[0]["source_address"] == "127.0.0.1"
    assert rows[0]["request_id"]


def test_enrollment_and_queries_reach_a_gateway_known_by_its_ipv6_address(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # B6 gives peers the address ::1 and listens on every address, IPv4 and IPv6 alike.
    monkeypatch.setenv("MOSAIC_BIND_HOST", "::")
    b6 = Instance(tmp_path, "b6", extra_init=("--host", "::1"))
    assert b6.init_doc["federation_endpoint"] == f"[::1]:{b6.port_base + 43}"
    try:
        b6.start()
        code, grant, err = b6.cli(
            "federation", "grant", "create", "--user", str(uuid.uuid4()),
            "--peer-name", "a", "--scope", str(pair.scope),
        )  # fmt: skip
        assert code == 0, (grant, err)
        code, token, err = b6.cli("federation", "grant", "token", grant["id"])
        assert code == 0, (token, err)
        assert parse_enrollment_url(token["enrollment_url"]).host == "::1"

        code, peer, err = pair.a.cli(
            "federation", "peer", "add", token["enrollment_url"], "--name", "b6", timeout=120
        )
        assert code == 0, (peer, err)
        assert (peer["state"], peer["endpoint"]) == ("active", b6.init_doc["federation_endpoint"])
        code, caps, err = pair.a.cli("federation", "query", "b6", "capabilities")
        assert code == 0, (caps, err)
        assert caps["capabilities"]["grant_id"] == grant["id"]
        assert caps["stale"] is False
        # The redeem's row names the address it came from (gRPC reports it as
        # ipv6:%5B::1%5D:PORT), which is also what the redeem limit counts by.
        [redeem] = _audit_rows(b6)
        assert redeem["source_address"] == "::1", redeem
    finally:
        b6.stop()
        pair.a.cli("federation", "peer", "remove", "b6")


async def _peer_credentials(a: Instance, peer_id: str) -> grants_pb2.GetPeerCredentialsResponse:
    async with internal_channel_as(a.home, "grants-service", "federation-gateway") as channel:
        reply: grants_pb2.GetPeerCredentialsResponse = await grants_pb2_grpc.GrantsStub(
            channel
        ).GetPeerCredentials(grants_pb2.GetPeerCredentialsRequest(id=peer_id), timeout=10)
        return reply


def test_the_same_url_a_second_time_is_refused(pair: Pair) -> None:
    grant = pair.grant()
    token = pair.token(grant["id"])
    code, _ = pair.add(token["enrollment_url"])
    assert code == 0
    code, doc = pair.add(token["enrollment_url"])
    assert code == 1
    _assert_refused(doc, "TOKEN_ALREADY_USED")
    rows = _hint_rows(pair.b, token["token"])
    assert [(r["outcome"], r["reason"]) for r in rows] == [
        ("allowed", None),
        ("denied", "TOKEN_ALREADY_USED"),
    ]
    assert _same_uuid(rows[1]["grant_id"], grant["id"])


def test_a_wrong_ca_fingerprint_is_refused_before_anything_is_sent(pair: Pair) -> None:
    grant = pair.grant()
    token = pair.token(grant["id"])
    url = token["enrollment_url"]
    real = parse_enrollment_url(url).ca_sha256
    wrong = url.replace(real, secrets.token_hex(32))
    code, doc = pair.add(wrong)
    assert code == 1
    assert doc["error"]["code"] == "CA_PIN_MISMATCH", doc
    assert token["token"] not in json.dumps(doc)
    # Nothing reached B: no redeem attempt, the grant is still pending...
    assert _hint_rows(pair.b, token["token"]) == []
    assert pair.grant_status(grant["id"]) == "pending"
    # ...and the right URL still works.
    code, peer = pair.add(url)
    assert code == 0, peer
    assert peer["state"] == "active"
    assert pair.grant_status(grant["id"]) == "active"


def test_an_expired_token_is_refused(pair: Pair) -> None:
    grant = pair.grant()
    token = pair.token(grant["id"], "--ttl", "1")
    time.sleep(2)
    code, doc = pair.add(token["enrollment_url"])
    assert code == 1
    _assert_refused(doc, "TOKEN_EXPIRED")
    # It says the token expired, and when, never the token.
    expired = dt.datetime.fromisoformat(token["expires_at"].replace("Z", "+00:00"))
    when = expired.isoformat(timespec="seconds").replace("+00:00", "Z")
    assert f"it expired at {when}" in doc["error"]["message"], doc
    assert token["token"] not in json.dumps(doc)
    assert "new enrollment URL" in doc["error"]["remediation"]
    assert pair.grant_status(grant["id"]) == "pending"


def test_grant_token_tells_the_other_admin_to_read_the_url_from_standard_input(
    pair: Pair,
) -> None:
    """The human view of `grant token` used to tell A's administrator to run `peer add URL`,
    which puts the token in the process list and the shell history."""
    grant = pair.grant()
    code, out, err = pair.b.cli("federation", "grant", "token", grant["id"], json_out=False)
    assert code == 0, (out, err)
    flat = " ".join(out.split())  # the console wraps long lines
    assert "mosaic federation peer add - < url.txt" in flat, out
    assert "peer add URL" not in flat


def test_an_unknown_token_is_refused_like_any_other(pair: Pair) -> None:
    grant = pair.grant()
    real = pair.token(grant["id"])
    parsed = parse_enrollment_url(real["enrollment_url"])
    unknown = secrets.token_urlsafe(32)
    url = real["enrollment_url"].replace(parsed.token, unknown)
    code, doc = pair.add(url)
    assert code == 1
    _assert_refused(doc, "TOKEN_UNKNOWN")
    # The refusal says nothing about the real token of this grant (or any other).
    assert real["token"][:8] not in json.dumps(doc)
    assert grant["id"] not in json.dumps(doc)
    rows = _hint_rows(pair.b, unknown)
    assert [(r["outcome"], r["reason"], r["grant_id"]) for r in rows] == [
        ("denied", "TOKEN_UNKNOWN", None)
    ]


def test_a_token_for_a_revoked_grant_is_refused(pair: Pair) -> None:
    grant = pair.grant()
    token = pair.token(grant["id"])
    code, _, _ = pair.b.cli("federation", "grant", "revoke", grant["id"], "--reason", "test")
    assert code == 0
    code, doc = pair.add(token["enrollment_url"])
    assert code == 1
    assert doc["error"]["code"] == "GRANT_NOT_PENDING", doc
    assert pair.grant_status(grant["id"]) == "revoked"


def test_no_token_for_a_grant_that_is_not_pending(pair: Pair) -> None:
    grant = pair.grant()
    pair.b.cli("federation", "grant", "revoke", grant["id"], check=True)
    code, doc, _ = pair.b.cli("federation", "grant", "token", grant["id"])
    assert code == 1
    assert doc["error"]["code"] == "GRANT_NOT_PENDING"


def test_concurrent_redeems_of_one_token_have_exactly_one_winner(pair: Pair) -> None:
    grant = pair.grant()
    token = pair.token(grant["id"])
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(CONCURRENT_REDEEMS)]

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(*(_redeem(pair.b, token["token"], _csr(k)) for k in keys))

    results = asyncio.run(all_at_once())
    winners = [r for r in results if not isinstance(r, RemoteError)]
    losers = [r for r in results if isinstance(r, RemoteError)]
    assert len(winners) == 1, [str(r) for r in losers]
    assert {r.reason for r in losers} <= {"TOKEN_IN_USE", "TOKEN_ALREADY_USED"}, [
        str(r) for r in losers
    ]
    assert all(REFUSED_MESSAGE in r.message for r in losers)
    assert winners[0].grant_id == grant["id"]
    assert pair.grant_status(grant["id"]) == "active"
    rows = _hint_rows(pair.b, token["token"])
    assert sorted(r["outcome"] for r in rows) == ["allowed"] + ["denied"] * len(losers)


def test_a_failure_at_the_ca_leaves_the_token_usable(pair: Pair) -> None:
    grant = pair.grant()
    token = pair.token(grant["id"])
    weak = ec.generate_private_key(ec.SECP521R1())  # not a curve the CA signs
    failed = asyncio.run(_redeem(pair.b, token["token"], _csr(weak)))
    assert isinstance(failed, RemoteError)
    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.reason == "CSR_WEAK_KEY"
    # Nothing half-active on B.
    code, on_b, _ = pair.b.cli("federation", "grant", "show", grant["id"])
    assert on_b["status"] == "pending"
    # The same token now enrolls A.
    code, peer = pair.add(token["enrollment_url"])
    assert code == 0, peer
    assert pair.grant_status(grant["id"]) == "active"
    rows = _hint_rows(pair.b, token["token"])
    assert [(r["outcome"], r["reason"]) for r in rows] == [
        ("denied", "CSR_WEAK_KEY"),
        ("allowed", None),
    ]


def test_a_redeem_repeated_with_the_same_key_gets_the_same_answer_again(pair: Pair) -> None:
    """A peer that lost B's answer repeats the redeem with the same key and CSR: B answers
    with the certificate the token was spent on, issuing nothing; another key is refused."""
    grant = pair.grant()
    token = pair.token(grant["id"])
    csr = _csr(ec.generate_private_key(ec.SECP256R1()))

    first = asyncio.run(_redeem(pair.b, token["token"], csr))
    again = asyncio.run(_redeem(pair.b, token["token"], csr))
    other = asyncio.run(
        _redeem(pair.b, token["token"], _csr(ec.generate_private_key(ec.SECP256R1())))
    )

    assert not isinstance(first, RemoteError), str(first)
    assert not isinstance(again, RemoteError), str(again)
    assert (first.repeated, again.repeated) == (False, True)
    assert (again.serial, again.certificate_pem, again.grant_id) == (
        first.serial,
        first.certificate_pem,
        grant["id"],
    )
    # What A checks before storing it: the chain to B's pinned root.
    b_root = x509.load_pem_x509_certificate(
        (pair.b.home / "pki" / "federation" / "root.crt").read_bytes()
    )
    leaf = x509.load_pem_x509_certificate(again.certificate_pem.encode())
    verify_chain(leaf, load_pem_certificates("".join(again.chain_pem)), [b_root])
    assert isinstance(other, RemoteError)
    _assert_remote_refused(other, "TOKEN_ALREADY_USED")
    with sqlite3.connect(pair.b.home / "data" / "ca_service.db") as conn:
        issued = conn.execute(
            "SELECT serial FROM issued_certificates WHERE grant_id = ?",
            (uuid.UUID(grant["id"]).hex,),
        ).fetchall()
    assert [row[0] for row in issued] == [first.serial]
    rows = _hint_rows(pair.b, token["token"])
    assert [(r["outcome"], r["reason"]) for r in rows] == [
        ("allowed", None),
        ("allowed", "REDEEM_REPEATED"),
        ("denied", "TOKEN_ALREADY_USED"),
    ]


def test_malformed_urls_are_refused_by_the_cli(pair: Pair) -> None:
    grant = pair.grant()
    token = pair.token(grant["id"])
    broken = token["enrollment_url"].replace("/v1/redeem", "/v1/other")
    code, doc, _ = pair.a.cli("federation", "peer", "add", broken)
    assert code == 1
    assert doc["error"]["code"] == "ENROLLMENT_URL_INVALID"
    assert "path" in doc["error"]["message"]
    assert token["token"] not in json.dumps(doc)
    code, _, _ = pair.a.cli("federation", "peer", "add")
    assert code == 2
    # The same through standard input (`-`), and nothing there at all.
    code, doc, _ = pair.a.cli("federation", "peer", "add", "-", stdin=broken + "\n")
    assert code == 1 and doc["error"]["code"] == "ENROLLMENT_URL_INVALID", doc
    assert token["token"] not in json.dumps(doc)
    code, doc, _ = pair.a.cli("federation", "peer", "add", "-", stdin="")
    assert code == 1 and doc["error"]["code"] == "ENROLLMENT_URL_INVALID", doc
    assert "standard input" in doc["error"]["message"]
    assert pair.grant_status(grant["id"]) == "pending"


def test_a_bad_local_name_is_refused_before_the_token_is_spent(pair: Pair) -> None:
    grant = pair.grant()
    token = pair.token(grant["id"])
    code, doc, _ = pair.a.cli(
        "federation", "peer", "add", token["enrollment_url"], "--name", "bad name!" * 100
    )
    assert code == 1 and doc["error"]["code"] == "PEER_NAME_INVALID", doc
    assert doc["error"]["remediation"] and len(doc["error"]["message"]) < 200
    assert pair.grant_status(grant["id"]) == "pending"


def test_a_bad_ttl_or_grant_id_is_bad_usage(pair: Pair) -> None:
    grant = pair.grant()
    for ttl in ("901", "0", "-1"):
        code, doc, _ = pair.b.cli("federation", "grant", "token", grant["id"], "--ttl", ttl)
        assert code == 2 and doc["error"]["code"] == "USAGE", (ttl, doc)
    code, doc, _ = pair.b.cli("federation", "grant", "token", "1234")
    assert code == 2 and doc["error"]["code"] == "USAGE", doc
    assert pair.grant_status(grant["id"]) == "pending"


def test_redeems_are_rate_limited_per_source_address(pair: Pair) -> None:
    """Exhausts B's allowance for 127.0.0.1: keep this the last test that redeems."""

    async def until_limited() -> RemoteError | None:
        async with _enrollment_channel(pair.b) as channel:
            stub = gateway_pb2_grpc.PeerEnrollmentStub(channel)
            for _ in range(REDEEM_BURST + 10):
                try:
                    await stub.Redeem(
                        gateway_pb2.PeerRedeemRequest(token=secrets.token_urlsafe(32), csr_pem="x"),
                        timeout=10,
                    )
                except grpc.aio.AioRpcError as err:
                    remote = RemoteError.from_rpc_error(err)
                    if remote.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        return remote
        return None

    grant = pair.grant()
    token = pair.token(grant["id"])
    limited = asyncio.run(until_limited())
    assert limited is not None, "no attempt was refused for the rate"
    assert limited.reason == "RATE_LIMITED"
    assert limited.retry_after_s is not None and limited.retry_after_s > 0
    # A real enrollment from the same address is refused too, and audited as such.
    code, doc = pair.add(token["enrollment_url"])
    assert code == 1
    assert doc["error"]["code"] == "RATE_LIMITED"
    assert pair.grant_status(grant["id"]) == "pending"
    rows = _hint_rows(pair.b, token["token"])
    assert [(r["outcome"], r["reason"], r["status"]) for r in rows] == [
        ("denied", "RATE_LIMITED", "RESOURCE_EXHAUSTED")
    ]


# ---- over everything the module did ------------------------------------------------------


def test_every_redeem_left_an_audit_row(pair: Pair) -> None:
    rows = _audit_rows(pair.b)
    outcomes = {r["outcome"] for r in rows}
    assert outcomes == {"allowed", "denied"}
    reasons = {r["reason"] for r in rows if r["outcome"] == "denied"}
    assert {
        "TOKEN_ALREADY_USED",
        "TOKEN_EXPIRED",
        "TOKEN_UNKNOWN",
        "GRANT_NOT_PENDING",
        "CSR_WEAK_KEY",
        "RATE_LIMITED",
    } <= reasons
    assert all(r["source_address"] == "127.0.0.1" for r in rows)


def test_no_full_token_in_either_gateways_log(pair: Pair) -> None:
    assert len(pair.tokens) >= 10
    logs = pair.a.log_text() + pair.b.log_text()
    for token in pair.tokens:
        assert token not in logs
        assert token[8:] not in logs
    # The loggable hint is there (B logs the token it made by its first 8 characters).
    assert any(token[:8] in pair.b.log_text() for token in pair.tokens)


def test_a_holds_no_private_key_in_clear(pair: Pair) -> None:
    code, doc, _ = pair.a.cli("federation", "peer", "list", "--direction", "outbound")
    assert code == 0
    peers = doc["peers"]
    assert len(peers) >= 4
    needles: list[bytes] = [b"PRIVATE KEY"]
    for peer in peers:
        creds = asyncio.run(_peer_credentials(pair.a, peer["id"]))
        key = serialization.load_pem_private_key(creds.client_key_pem.encode(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        raw = key.private_numbers().private_value.to_bytes(32, "big")
        needles += [der, raw, raw.hex().encode(), base64.b64encode(der)[:48]]
    data_files = [p for p in (pair.a.home / "data").rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in data_files)
    for path in data_files:
        content = path.read_bytes()
        for needle in needles:
            assert needle not in content, f"{path.name} holds key material"
    logs = (pair.a.log_text()).encode()
    for needle in needles:
        assert needle not in logs


def test_b_holds_no_enrollment_token_in_clear(pair: Pair) -> None:
    """Database theft yields no usable token: enrollment-service keeps the SHA-256 of each
    token (and its first 8 characters as a hint), never the token itself."""
    assert len(pair.tokens) >= 10
    path = pair.b.home / "data" / "enrollment_service.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        stored = dict(
            conn.execute("SELECT token_hash, token_hint FROM federation_enrollment_tokens")
        )
    for token in pair.tokens:
        digest = hashlib.sha256(token.encode()).hexdigest()
        assert stored.get(digest) == token[:8]
    files = [p for p in (pair.b.home / "data").rglob("*") if p.is_file()]
    assert path in files
    for file in files:
        content = file.read_bytes()
        for token in pair.tokens:
            assert token.encode() not in content, f"{file.name} holds a token"
            assert token[8:].encode() not in content, f"{file.name} holds a token's secret part"
