"""enrollment-service wiring: config, store, servicer, server."""

from __future__ import annotations

from pathlib import Path

from enrollment_service.servicer import EnrollmentServicer
from enrollment_service.store import TokenStore
from mosaic.config import CA, ENROLLMENT, GATEWAY, GRANTS, InstanceConfig
from mosaic.federation.v1 import ca_pb2_grpc, enrollment_pb2, enrollment_pb2_grpc, grants_pb2_grpc
from mosaic.rpc.acl import methods
from mosaic.runtime import ServiceRuntime

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = enrollment_pb2.DESCRIPTOR.services_by_name["Enrollment"].full_name

ACL: dict[str, set[str]] = {m: {GATEWAY} for m in methods(SERVICE_NAME, ["CreateToken", "Redeem"])}


async def main(config: InstanceConfig) -> None:
    runtime = ServiceRuntime(config, ENROLLMENT, migrations_dir=MIGRATIONS)
    await runtime.migrate()
    assert runtime.db is not None
    listener = runtime.internal_listener(ACL)
    listener.add(
        enrollment_pb2_grpc.add_EnrollmentServicer_to_server,
        EnrollmentServicer(
            TokenStore(runtime.db),
            grants_pb2_grpc.GrantsStub(runtime.channels.get(GRANTS)),
            ca_pb2_grpc.CertificateAuthorityStub(runtime.channels.get(CA)),
        ),
        SERVICE_NAME,
    )
    await runtime.run([listener])
