"""Two gateway replicas of one instance draw on one per-grant limit kept in a real
redis-server (`mosaic init --valkey URL`).

Each service runs with `mosaic serve`; the gateway twice, the second replica on its own
admin, federation, enrollment and metrics ports (MOSAIC_*_PORT environment overrides).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mosaic.config import START_ORDER, load_config
from mosaic.errors import RemoteError
from mosaic.federation.v1 import gateway_pb2
from tests.integration.test_federation import (
    MAIN_SCOPE,
    Peer,
    audit_rows,
    grant_with_cert,
    import_rows,
    rows,
    set_rate_limit,
)
from tests.support.instances import MOSAIC, Instance
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture
def replicas(
    redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[Instance, dict[str, str]]]:
    inst = Instance(tmp_path, "rl", extra_init=("--valkey", redis_server.url))
    set_rate_limit(inst, per_second=0.1, burst=5)  # 5 now, then one every 10 s
    base = inst.port_base
    second = {
        "MOSAIC_ADMIN_PORT": str(base + 90),
        "MOSAIC_FEDERATION_PORT": str(base + 91),
        "MOSAIC_ENROLLMENT_PORT": str(base + 92),
        "MOSAIC_METRICS_PORT": str(base + 93),
    }
    procs: list[subprocess.Popen[bytes]] = []
    log = (tmp_path / "serve.log").open("ab")

    def serve(service: str, env: dict[str, str] | None = None) -> None:
        procs.append(
            subprocess.Popen(
                [*MOSAIC, "--home", str(inst.home), "serve", service],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        )

    try:
        for service in START_ORDER:
            serve(service)
        serve("federation-gateway", second)
        for env in ({}, second):
            code, doc, _ = inst.cli("gateway", "doctor", "--wait", "40", timeout=90, env=env)
            assert code == 0, doc
            # The doctor says which replica answered.
            port = env.get("MOSAIC_ADMIN_PORT", str(load_config(inst.home).ports.admin))
            [reachable] = [
                c["detail"]
                for c in doc["checks"]
                if (c["service"], c["name"]) == ("federation-gateway", "reachable")
            ]
            assert reachable.endswith(f":{port}"), reachable
        asyncio.run(import_rows(inst.home, rows()))
        yield inst, second
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def test_two_replicas_share_one_limit(replicas: tuple[Instance, dict[str, str]]) -> None:
    inst, second = replicas
    asyncio.run(_two_replicas_share_one_limit(inst, int(second["MOSAIC_FEDERATION_PORT"])))


async def _two_replicas_share_one_limit(inst: Instance, second_port: int) -> None:
    cert = await grant_with_cert(inst, MAIN_SCOPE)
    first_port = load_config(inst.home).ports.federation
    outcomes: list[tuple[int, RemoteError | None]] = []
    async with Peer(inst, cert, port=first_port) as one, Peer(inst, cert, port=second_port) as two:
        for index in range(12):
            port, peer = (first_port, one) if index % 2 == 0 else (second_port, two)
            try:
                await peer.stub.Capabilities(gateway_pb2.CapabilitiesRequest(), timeout=10)
                outcomes.append((port, None))
            except grpc.aio.AioRpcError as err:
                outcomes.append((port, RemoteError.from_rpc_error(err)))
    allowed = [port for port, err in outcomes if err is None]
    refused = [err for _, err in outcomes if err is not None]
    assert len(allowed) == 5  # the burst, once, across both replicas
    assert set(allowed) == {first_port, second_port}
    assert len(refused) == 7
    for refusal in refused:
        assert refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refusal.reason == "RATE_LIMITED"
        assert refusal.retry_after_s is not None and refusal.retry_after_s > 0
    entries = await audit_rows(inst, cert.peer_id)
    assert len(entries) == 12
    assert sum(e.reason == "RATE_LIMITED" for e in entries) == 7


def test_replica_port_overrides_are_read_from_the_environment(tmp_path: Path) -> None:
    inst = Instance(tmp_path, "ports")
    code = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mosaic.config import load_config; p = load_config().ports; "
            "print(p.admin, p.federation, p.enrollment)",
        ],
        env={
            **os.environ,
            "MOSAIC_HOME": str(inst.home),
            "MOSAIC_FEDERATION_PORT": "41001",
            "MOSAIC_ADMIN_PORT": "41002",
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    base = inst.port_base
    assert code == ["41002", "41001", str(base + 44)]


def test_with_valkey_down_the_gateway_says_so_and_refuses(tmp_path: Path) -> None:
    """The limits fail closed without Valkey: every request is refused (UNAVAILABLE
    RATE_LIMITER_UNAVAILABLE, audited), so health must not say SERVING, and the doctor
    must name Valkey rather than report all is well."""
    valkey = RedisServer(use_docker=False)
    valkey.start()
    inst = Instance(tmp_path, "vk", extra_init=("--valkey", valkey.url))
    try:
        inst.start()
        asyncio.run(import_rows(inst.home, rows()))
        cert = asyncio.run(grant_with_cert(inst, MAIN_SCOPE))
        code, doc, _ = inst.cli("gateway", "health", "federation-gateway")
        assert code == 0 and doc["serving"], doc

        valkey.stop()
        err = asyncio.run(_capabilities_refusal(inst, cert))
        assert err.code == grpc.StatusCode.UNAVAILABLE
        assert err.reason == "RATE_LIMITER_UNAVAILABLE"
        assert err.retry_after_s
        for _ in range(50):  # health is re-evaluated about once a second
            code, doc, _ = inst.cli("gateway", "health", "federation-gateway")
            if doc.get("status") == "NOT_SERVING":
                break
            time.sleep(0.2)
        assert code == 1 and doc["status"] == "NOT_SERVING", doc
        code, doc, _ = inst.cli("gateway", "doctor")
        assert code == 1
        [row] = [
            c
            for c in doc["checks"]
            if c["service"] == "federation-gateway" and c["name"] == "dependencies"
        ]
        assert not row["ok"] and "valkey" in row["detail"], row
        refusals = asyncio.run(audit_rows(inst, cert.peer_id))
        assert any(r.reason == "RATE_LIMITER_UNAVAILABLE" for r in refusals)
    finally:
        inst.stop()
        valkey.stop()


async def _capabilities_refusal(inst: Instance, cert: Any) -> RemoteError:
    async with Peer(inst, cert) as peer:
        try:
            await peer.stub.Capabilities(gateway_pb2.CapabilitiesRequest(), timeout=10)
        except grpc.aio.AioRpcError as err:
            return RemoteError.from_rpc_error(err)
    raise AssertionError("served without Valkey")
