"""B's gateway while a service it depends on goes away and comes back, every service its
own process (as compose runs them): requests pass again within the RUNBOOK's "about 5 s
of the dependency coming back, however long it was away", health says SERVING only once
they do, and the requests refused meanwhile are in `audit list --peer`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mosaic.cli.commands_health import check_health
from mosaic.config import START_ORDER, InstanceConfig, load_config
from mosaic.errors import RemoteError
from mosaic.federation.v1 import gateway_pb2, grants_pb2
from tests.integration.test_federation import (
    MAIN_SCOPE,
    Peer,
    admin_call,
    grant_with_cert,
    import_rows,
    rows,
)
from tests.support.instances import Instance, ServiceProcesses
from tests.support.postgres import PostgresServer
from tests.support.procs import wait_until

pytestmark = pytest.mark.slow

RECOVERY_PROMISE_S = 5.0  # RUNBOOK.md, "Reading the doctor"
SLACK_S = 1.5  # a busy test machine: the bound is the promise, not a measurement
# Longer than any backoff (the watches' 5 s, gRPC's 4 s + 20 % jitter) and then some.
OUTAGE_S = 9.0


@pytest.fixture(scope="module")
def b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Instance, ServiceProcesses]]:
    inst = Instance(tmp_path_factory.mktemp("recovery"), "b")
    procs = ServiceProcesses(inst)
    procs.start(*START_ORDER)
    try:
        _wait_healthy(inst)
        asyncio.run(import_rows(inst.home, rows()))
        yield inst, procs
    finally:
        procs.stop_all()


def _wait_healthy(inst: Instance) -> None:
    code, doc, _ = inst.cli("gateway", "doctor", "--wait", "40", timeout=90)
    assert code == 0, doc


async def _health(config: InstanceConfig, service: str) -> str:
    try:
        status, _, _ = await check_health(config, service, 1.0)
    except grpc.aio.AioRpcError:
        return "UNREACHABLE"
    return status


async def _list(peer: Peer) -> tuple[RemoteError, str] | None:
    """None when a List passes; else the refusal and its request id."""
    try:
        await peer.stub.List(gateway_pb2.ListRequest(resource="tasks", page_size=1), timeout=3)
    except grpc.aio.AioRpcError as err:
        request_id = dict(err.trailing_metadata() or ()).get("x-request-id", "")
        return RemoteError.from_rpc_error(err), str(request_id)
    return None


async def _refused_for(peer: Peer, reason: str, timeout: float) -> str:
    """Poll until a List is refused with ``reason``; its request id."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        result = await _list(peer)
        if result is not None:
            error, request_id = result
            if error.reason == reason:
                return request_id
            seen.append(error.reason)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {reason} within {timeout} s; saw {sorted(set(seen))}")


def _audit_of_peer(inst: Instance, peer_id: str, timeout: float = 30) -> dict[str, dict]:
    """`audit list --peer`'s rows by request id (retried while grants-service starts)."""
    deadline = time.monotonic() + timeout
    while True:
        code, doc, err = inst.cli(
            "federation", "audit", "list", "--peer", peer_id, "--limit", "1000"
        )
        if code == 0:
            return {e["request_id"]: e for e in doc["entries"]}
        assert time.monotonic() < deadline, (doc, err)
        time.sleep(0.5)


async def test_refusals_before_the_gateway_knew_the_peer_are_listed_for_it(
    b: tuple[Instance, ServiceProcesses],
) -> None:
    """The gateway starts while grants-service is down: a request is refused before the
    gateway could learn which peer holds the grant; `audit list --peer` still lists it."""
    inst, procs = b
    cert = await grant_with_cert(inst, MAIN_SCOPE)
    procs.stop("federation-gateway")
    procs.stop("grants-service")
    procs.start("federation-gateway")
    try:
        async with Peer(inst, cert) as peer:
            request_id = await _refused_for(peer, "DEPENDENCY_UNAVAILABLE", timeout=60)
    finally:
        procs.start("grants-service")
    listed = _audit_of_peer(inst, cert.peer_id)
    assert request_id in listed, sorted(e["reason"] for e in listed.values())
    row = listed[request_id]
    assert (row["reason"], row["grant_id"], row["peer_id"]) == (
        "DEPENDENCY_UNAVAILABLE",
        cert.grant_id,
        None,
    )
    _wait_healthy(inst)


async def test_after_ca_service_comes_back_requests_pass_within_the_promise(
    b: tuple[Instance, ServiceProcesses],
) -> None:
    inst, procs = b
    _wait_healthy(inst)
    config = load_config(inst.home)
    cert = await grant_with_cert(inst, MAIN_SCOPE)
    async with Peer(inst, cert) as peer:
        assert await _list(peer) is None
        procs.kill("ca-service")
        killed = time.monotonic()
        refused_id = await _refused_for(peer, "REVOCATIONS_NOT_LOADED", timeout=10)
        await asyncio.sleep(max(0.0, killed + OUTAGE_S - time.monotonic()))
        procs.start("ca-service")
        deadline = time.monotonic() + 60
        while await _health(config, "ca-service") != "SERVING":
            assert time.monotonic() < deadline, "ca-service did not come back"
            await asyncio.sleep(0.05)
        ca_serving = time.monotonic()
        # Until a List passes: the gateway's health, asked first, must not say SERVING.
        serving_while_refused: list[str] = []
        while (result := await _list(peer)) is not None:
            assert result[0].reason == "REVOCATIONS_NOT_LOADED", result[0]
            assert time.monotonic() - ca_serving < 30, "the gateway did not recover"
            health = await _health(config, "federation-gateway")
            if health == "SERVING" and await _list(peer) is not None:
                serving_while_refused.append(f"{time.monotonic() - ca_serving:.2f} s")
            await asyncio.sleep(0.05)
        recovered_s = time.monotonic() - ca_serving
    assert recovered_s <= RECOVERY_PROMISE_S + SLACK_S, f"recovered after {recovered_s:.1f} s"
    assert serving_while_refused == [], "health said SERVING while requests were refused"
    # The refusal meanwhile names the peer (the gateway knew the grant's peer).
    listed = _audit_of_peer(inst, cert.peer_id)
    assert listed[refused_id]["reason"] == "REVOCATIONS_NOT_LOADED"
    assert listed[refused_id]["peer_id"] == cert.peer_id


async def _refusal(call: Any) -> RemoteError | None:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return RemoteError.from_rpc_error(err)
    return None


async def test_revokes_while_ca_service_is_down_say_so_and_their_retries_finish_them(
    b: tuple[Instance, ServiceProcesses],
) -> None:
    """`grant revoke` and a peer revoke (SetPeerState) with ca-service down: the grant or
    peer is revoked, but the operator is told the certificates are not (exit 1,
    DEPENDENCY_UNAVAILABLE). The retry, once ca-service is back, revokes them: the peer's
    next request is refused for its certificate, not only for its grant."""
    inst, procs = b
    _wait_healthy(inst)
    by_grant = await grant_with_cert(inst, MAIN_SCOPE)
    by_peer = await grant_with_cert(inst, MAIN_SCOPE)
    revoke_peer = grants_pb2.SetPeerStateRequest(
        id=by_peer.peer_id, state=grants_pb2.PEER_STATE_REVOKED
    )
    procs.stop("ca-service")
    try:
        code, doc, _ = inst.cli("federation", "grant", "revoke", by_grant.grant_id)
        assert code == 1 and doc["error"]["code"] == "DEPENDENCY_UNAVAILABLE", doc
        assert "the grant is revoked, but" in doc["error"]["message"]
        refused = await _refusal(admin_call(inst, "SetPeerState", revoke_peer))
        assert refused is not None and refused.reason == "DEPENDENCY_UNAVAILABLE", refused
        assert "the peer is revoked, but" in refused.message
    finally:
        procs.start("ca-service")
    _wait_healthy(inst)

    code, doc, _ = inst.cli("federation", "grant", "revoke", by_grant.grant_id)
    assert code == 0 and doc["status"] == "revoked", doc
    refused = await _refusal(admin_call(inst, "SetPeerState", revoke_peer))
    assert refused is not None and refused.reason == "PEER_ALREADY_REVOKED", refused
    for cert in (by_grant, by_peer):
        async with Peer(inst, cert) as peer:
            deadline = time.monotonic() + 10  # the revocation feed reaches the gateway
            while (result := await _list(peer)) is None or result[0].reason != "CERT_REVOKED":
                assert time.monotonic() < deadline, result
                await asyncio.sleep(0.1)


# ---- a database server that is down when the instance starts ---------------------------


def _waiting_services(inst: Instance) -> set[str]:
    """The services whose log says they are waiting for their database."""
    return {
        json.loads(line)["service"]
        for line in inst.log_text().splitlines()
        if line.startswith("{") and '"msg":"waiting for the database"' in line
    }


def _launch_until_every_service_waits(inst: Instance) -> None:
    inst.launch()
    wait_until(
        lambda: _waiting_services(inst) == set(START_ORDER),
        60,
        what="every service waiting for the database",
        abort=lambda: None if inst.proc is None or inst.proc.poll() is None else "up ended",
    )


@pytest.mark.postgres
def test_services_wait_for_a_postgres_that_is_down_at_start(tmp_path: Path) -> None:
    """A host that boots Postgres after the instance, or a database failing over: each
    service waits for the database rather than exiting (which `up` would end up giving up
    on), stops cleanly while it waits, and serves once the database answers. The cluster is
    this test's own: stopping the session's would fail other tests."""
    server = PostgresServer().start_or_skip()
    try:
        if server.backend != "local":
            pytest.skip("stopping the database needs the local PostgreSQL backend")
        inst = Instance(tmp_path, "bwait", db=server.create_database("mosaic_wait"))
        server.pause("fast")

        # Stopped while waiting: a clean stop, exit 0, nothing restarted meanwhile.
        _launch_until_every_service_waits(inst)
        waiting = [
            json.loads(line)
            for line in inst.log_text().splitlines()
            if '"msg":"waiting for the database"' in line
        ]
        assert {w["problem"] for w in waiting} == {"database unreachable (DatabaseUnreachable)"}
        inst.stop()
        assert inst.proc is not None and inst.proc.returncode == 0, inst.log_tail()
        assert inst.log_text().count('"msg":"stopped while waiting for the database"') == 5
        assert '"service":"mosaic-up"' not in inst.log_text(), inst.log_tail()

        # Started again, still down; then the database comes up and every service serves,
        # none of them having exited.
        inst.log_path.unlink()
        _launch_until_every_service_waits(inst)
        time.sleep(2.5)  # a few more attempts, so that each has had time to fail
        server.resume()
        try:
            _wait_healthy(inst)
            assert inst.proc is not None and inst.proc.poll() is None
            assert '"service":"mosaic-up"' not in inst.log_text(), inst.log_tail()
            assert server.password not in inst.log_text()
        finally:
            inst.stop()
        assert inst.proc.returncode == 0, inst.log_tail()
    finally:
        server.stop()
