"""resource-service wiring: config, store, servicer, server."""

from __future__ import annotations

from pathlib import Path

from mosaic.config import GATEWAY, RESOURCES, InstanceConfig
from mosaic.federation.v1 import resources_pb2, resources_pb2_grpc
from mosaic.rpc.acl import methods
from mosaic.runtime import ServiceRuntime

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = resources_pb2.DESCRIPTOR.services_by_name["ResourceSource"].full_name

ACL: dict[str, set[str]] = {
    m: {GATEWAY}
    for m in methods(
        SERVICE_NAME, ["ListResources", "GetResource", "SearchResources", "ImportResources"]
    )
}


async def main(config: InstanceConfig) -> None:
    runtime = ServiceRuntime(config, RESOURCES, migrations_dir=MIGRATIONS)
    await runtime.migrate()
    listener = runtime.internal_listener(ACL)
    listener.add(
        resources_pb2_grpc.add_ResourceSourceServicer_to_server,
        resources_pb2_grpc.ResourceSourceServicer(),  # type: ignore[abstract]  # replaced by its issue
        SERVICE_NAME,
    )
    await runtime.run([listener])
