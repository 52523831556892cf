"""ca-service wiring: config, store, servicer, server."""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_service.backends.base import CABackend
from ca_service.keys import load_backend
from ca_service.revocations import RevocationFeed
from ca_service.servicer import CertificateAuthorityServicer
from mosaic.config import CA, ENROLLMENT, GATEWAY, InstanceConfig
from mosaic.federation.v1 import ca_pb2, ca_pb2_grpc, common_pb2
from mosaic.pki import ROOT_CERT
from mosaic.rpc.acl import methods
from mosaic.runtime import ServiceRuntime
from mosaic.x509ext import sha256_fingerprint

log = logging.getLogger("ca_service")

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = ca_pb2.DESCRIPTOR.services_by_name["CertificateAuthority"].full_name

ACL: dict[str, set[str]] = {
    **{
        m: {ENROLLMENT, GATEWAY}
        for m in methods(SERVICE_NAME, ["IssueCertificate", "GetTrustBundle"])
    },
    # enrollment-service revokes the certificate of an enrollment whose activation was
    # refused; it may issue certificates anyway, so this widens nothing that matters.
    **{m: {ENROLLMENT, GATEWAY} for m in methods(SERVICE_NAME, ["RevokeCertificate"])},
    **{m: {GATEWAY} for m in methods(SERVICE_NAME, ["ListRevocations", "WatchRevocations"])},
}


async def main(config: InstanceConfig) -> None:
    runtime = ServiceRuntime(config, CA, migrations_dir=MIGRATIONS)
    backend = load_backend(config, runtime.sealer)
    await runtime.migrate()
    if runtime.db is None:  # pragma: no cover - MIGRATIONS is always given
        raise RuntimeError("ca-service needs its database")
    feed = RevocationFeed(runtime.db.engine)
    server_root = x509.load_pem_x509_certificate(
        (config.federation_pki_dir / ROOT_CERT).read_bytes()
    )
    runtime.extra_checks.append(lambda: backend_check(config, backend))
    listener = runtime.internal_listener(ACL)
    listener.add(
        ca_pb2_grpc.add_CertificateAuthorityServicer_to_server,
        CertificateAuthorityServicer(
            config=config,
            engine=runtime.db.engine,
            backend=backend,
            feed=feed,
            server_root=server_root,
        ),
        SERVICE_NAME,
    )
    log.info("CA backend ready", extra={"backend": backend.name})
    await runtime.run([listener], background=[feed.run])


async def backend_check(config: InstanceConfig, backend: CABackend) -> common_pb2.Check:
    """For `mosaic gateway doctor`: which backend signs, its root, and (step-ca) its health."""
    root = sha256_fingerprint(backend.trust_roots()[0])
    detail = f"{backend.name}, root sha256 {root[:16]}…"
    if config.ca_backend != "step-ca" or config.step_ca is None:
        return common_pb2.Check(name="ca_backend", ok=True, detail=detail)
    url = config.step_ca.url.rstrip("/")
    started = time.perf_counter()
    try:
        context = ssl.create_default_context(cadata=_pem(backend.trust_roots()[0]))
        async with httpx.AsyncClient(verify=context, timeout=2.0, trust_env=False) as client:
            response = await client.get(f"{url}/health")
        healthy = response.status_code == 200
        problem = "" if healthy else f"HTTP {response.status_code}"
    except (httpx.HTTPError, ssl.SSLError) as exc:
        healthy, problem = False, type(exc).__name__
    latency = (time.perf_counter() - started) * 1000
    return common_pb2.Check(
        name="ca_backend",
        ok=healthy,
        detail=f"{detail}, {url} " + ("healthy" if healthy else f"not healthy ({problem})"),
        remediation=""
        if healthy
        else f"start step-ca at {url} or fix [ca.step_ca] url/root_file in instance.toml",
        latency_ms=latency,
    )


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
