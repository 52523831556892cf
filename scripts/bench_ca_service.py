"""Print how many IssueCertificate calls per second ca-service answers over internal mTLS.

Makes a throw-away instance (``mosaic init``, local CA backend, SQLite), runs
``mosaic serve ca-service`` as its own process, and calls it as enrollment-service
over the real internal mTLS listener at a fixed concurrency. CSRs are made before
timing starts, so a figure covers: TLS + gRPC, CSR validation, signing, the re-parse
check, the issued_certificates insert and the reply. A benchmark, not a test: it
prints figures and asserts nothing.

    .venv/bin/python scripts/bench_ca_service.py -n 2000 -c 8 [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mosaic.config import CA, ENROLLMENT, load_config
from mosaic.federation.v1 import ca_pb2, ca_pb2_grpc
from mosaic.rpc.channels import internal_client_credentials, secure_channel

MOSAIC = [sys.executable, "-m", "mosaic.cli"]


def _free_port_base() -> int:
    from mosaic.config import find_free_port_base

    return find_free_port_base()


def _make_csrs(count: int) -> list[str]:
    csrs = []
    for index in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"peer-{index}")]))
            .sign(key, hashes.SHA256())
        )
        csrs.append(csr.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    return csrs


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


async def _wait_serving(channel: grpc.aio.Channel, within_s: float) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + within_s
    while True:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("ca-service did not become SERVING")
        await asyncio.sleep(0.1)


async def _measure(home: Path, count: int, warmup: int, concurrency: int) -> dict[str, Any]:
    config = load_config(home)
    channel = secure_channel(
        config.internal_address(CA),
        internal_client_credentials(config, ENROLLMENT),
        server_name=CA,
    )
    async with channel:
        await _wait_serving(channel, 30.0)
        stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
        csrs = _make_csrs(count + warmup)
        grant_id, subject_user_id, peer_id = (str(uuid.uuid4()) for _ in range(3))

        async def issue(csr: str) -> float:
            started = time.perf_counter()
            await stub.IssueCertificate(
                ca_pb2.IssueCertificateRequest(
                    csr_pem=csr,
                    grant_id=grant_id,
                    subject_user_id=subject_user_id,
                    peer_id=peer_id,
                ),
                timeout=30.0,
            )
            return time.perf_counter() - started

        async def worker(queue: list[str], latencies: list[float]) -> None:
            while queue:
                latencies.append(await issue(queue.pop()))

        warm: list[float] = []
        await asyncio.gather(*(worker(csrs[:warmup], warm) for _ in range(concurrency)))
        todo = csrs[warmup:]
        latencies: list[float] = []
        wall_start = time.perf_counter()
        await asyncio.gather(*(worker(todo, latencies) for _ in range(concurrency)))
        wall = time.perf_counter() - wall_start

    latencies.sort()
    return {
        "calls": count,
        "concurrency": concurrency,
        "seconds": round(wall, 4),
        "calls_per_second": round(count / wall, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1e3, 3),
        "p90_ms": round(_percentile(latencies, 0.90) * 1e3, 3),
        "p99_ms": round(_percentile(latencies, 0.99) * 1e3, 3),
        "max_ms": round(latencies[-1] * 1e3, 3),
        "backend": "local",
        "database": "sqlite",
        "transport": "internal mTLS, one channel, server in its own process",
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "cpus": os.cpu_count(),
    }


def run(count: int = 2000, warmup: int = 50, concurrency: int = 8) -> dict[str, Any]:
    """Start a throw-away ca-service, measure, stop it, and return the figures."""
    root = Path(tempfile.mkdtemp(prefix="mosaic-bench-ca-"))
    home = root / "bench"
    server: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [
                *MOSAIC,
                "--home",
                str(home),
                "--json",
                "init",
                "--name",
                "bench",
                "--port-base",
                str(_free_port_base()),
            ],
            check=True,
            capture_output=True,
        )
        with (root / "ca-service.log").open("wb") as log:
            server = subprocess.Popen(
                [*MOSAIC, "--home", str(home), "serve", CA],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return asyncio.run(_measure(home, count, warmup, concurrency))
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=2000, help="timed calls")
    parser.add_argument("-c", "--concurrency", type=int, default=8, help="calls in flight")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls first")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.count < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--count and --concurrency must be at least 1, --warmup at least 0")

    result = run(args.count, args.warmup, args.concurrency)
    rows = [
        ("calls", f"{result['calls']}"),
        ("concurrency", f"{result['concurrency']}"),
        ("wall time", f"{result['seconds']:.3f} s"),
        ("IssueCertificate calls/s", f"{result['calls_per_second']:.0f}"),
        ("latency p50", f"{result['p50_ms']:.2f} ms"),
        ("latency p90", f"{result['p90_ms']:.2f} ms"),
        ("latency p99", f"{result['p99_ms']:.2f} ms"),
        ("latency max", f"{result['max_ms']:.2f} ms"),
    ]
    width = max(len(name) for name, _ in rows)
    print(
        f"ca-service IssueCertificate over internal mTLS ({result['backend']} backend, "
        f"{result['database']}, {result['cpus']} CPUs)"
    )
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>12}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
