"""resource-service wiring: config, store, servicer, server."""

from __future__ import annotations

from pathlib import Path

from mosaic.config import GATEWAY, RESOURCES, InstanceConfig
from mosaic.federation.v1 import resources_pb2, resources_pb2_grpc
from mosaic.rpc.acl import methods
from mosaic.runtime import ServiceRuntime
from resource_service.servicer import ResourceSourceServicer
from resource_service.store import ResourceStore

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
    assert runtime.db is not None
    listener = runtime.internal_listener(ACL)
    listener.add(
        resources_pb2_grpc.add_ResourceSourceServicer_to_server,
        ResourceSourceServicer(ResourceStore(runtime.db)),
        SERVICE_NAME,
    )
    await runtime.run([listener])
