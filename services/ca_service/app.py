"""ca-service wiring: config, store, servicer, server."""

from __future__ import annotations

from pathlib import Path

from mosaic.config import CA, ENROLLMENT, GATEWAY, GRANTS, InstanceConfig
from mosaic.federation.v1 import ca_pb2, ca_pb2_grpc
from mosaic.rpc.acl import methods
from mosaic.runtime import ServiceRuntime

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = ca_pb2.DESCRIPTOR.services_by_name["CertificateAuthority"].full_name

ACL: dict[str, set[str]] = {
    **{
        m: {ENROLLMENT, GATEWAY}
        for m in methods(SERVICE_NAME, ["IssueCertificate", "GetTrustBundle"])
    },
    **{m: {GATEWAY, GRANTS} for m in methods(SERVICE_NAME, ["RevokeCertificate"])},
    **{m: {GATEWAY} for m in methods(SERVICE_NAME, ["ListRevocations", "WatchRevocations"])},
}


async def main(config: InstanceConfig) -> None:
    runtime = ServiceRuntime(config, CA, migrations_dir=MIGRATIONS)
    await runtime.migrate()
    listener = runtime.internal_listener(ACL)
    listener.add(
        ca_pb2_grpc.add_CertificateAuthorityServicer_to_server,
        ca_pb2_grpc.CertificateAuthorityServicer(),  # type: ignore[abstract]  # replaced by its issue
        SERVICE_NAME,
    )
    await runtime.run([listener])
