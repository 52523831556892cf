"""Print how fast LocalCABackend.sign issues peer client certificates.

Keys and CSRs are made (and validated) before timing starts, so only signing is
measured. A benchmark, not a test: it prints figures and asserts nothing.

    PYTHONPATH=libs:services .venv/bin/python scripts/bench_issuance.py -n 500 [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
import uuid
from datetime import timedelta
from pathlib import Path

import cryptography
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca_service.backends.local import LocalCABackend, create_local_ca
from ca_service.domain import validate_csr


def _make_csrs(count: int) -> list[x509.CertificateSigningRequest]:
    csrs = []
    for index in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        pem = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"peer-{index}")]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
        csrs.append(validate_csr(pem))
    return csrs


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


async def _thread_handoff_us(rounds: int) -> float:
    """Median cost of one asyncio.to_thread round trip of a no-op, for comparison."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await asyncio.to_thread(int)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


async def run(count: int, warmup: int) -> dict[str, object]:
    material = create_local_ca("bench")
    backend = LocalCABackend(
        material.root_certificate, material.intermediate_certificate, material.intermediate_key
    )
    csrs = _make_csrs(count + warmup)
    grant_id, subject_user_id, peer_id = (str(uuid.uuid4()) for _ in range(3))
    lifetime = timedelta(hours=24)

    async def sign(csr: x509.CertificateSigningRequest) -> None:
        await backend.sign(
            csr,
            grant_id=grant_id,
            subject_user_id=subject_user_id,
            peer_id=peer_id,
            lifetime=lifetime,
        )

    for csr in csrs[:warmup]:
        await sign(csr)

    per_cert: list[float] = []
    wall_start = time.perf_counter()
    for csr in csrs[warmup:]:
        start = time.perf_counter()
        await sign(csr)
        per_cert.append(time.perf_counter() - start)
    wall = time.perf_counter() - wall_start

    per_cert.sort()
    return {
        "certificates": count,
        "seconds": round(wall, 6),
        "certificates_per_second": round(count / wall, 1),
        "p50_us": round(_percentile(per_cert, 0.50) * 1e6, 1),
        "p99_us": round(_percentile(per_cert, 0.99) * 1e6, 1),
        "max_us": round(per_cert[-1] * 1e6, 1),
        "thread_handoff_p50_us": round(await _thread_handoff_us(200), 1),
        "intermediate_key": "EC P-256, ecdsa-with-SHA256",
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "machine": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=500, help="certificates to sign")
    parser.add_argument("--warmup", type=int, default=20, help="untimed signatures first")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.count < 1 or args.warmup < 0:
        parser.error("--count must be at least 1 and --warmup at least 0")

    result = asyncio.run(run(args.count, args.warmup))
    print(
        f"LocalCABackend.sign: {result['certificates']} certificates in {result['seconds']:.3f} s"
        f" = {result['certificates_per_second']:.0f} certificates/s"
    )
    print(
        f"per certificate: p50 {result['p50_us']:.0f} us, p99 {result['p99_us']:.0f} us,"
        f" max {result['max_us']:.0f} us"
    )
    print(
        f"for comparison, one asyncio.to_thread hand-off: {result['thread_handoff_p50_us']:.0f} us"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
