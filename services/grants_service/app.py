"""grants-service wiring: config, store, servicer, server."""

from __future__ import annotations

from pathlib import Path

from grants_service.servicer import ChangeNotifier, GrantsServicer
from grants_service.store import GrantsStore
from mosaic.config import ENROLLMENT, GATEWAY, GRANTS, InstanceConfig
from mosaic.federation.v1 import grants_pb2, grants_pb2_grpc
from mosaic.rpc.acl import methods
from mosaic.runtime import ServiceRuntime, load_sealer

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = grants_pb2.DESCRIPTOR.services_by_name["Grants"].full_name

_GATEWAY_ONLY = [
    "CreateGrant",
    "ListGrants",
    "RevokeGrant",
    "ListPeers",
    "SetPeerState",
    "RemovePeer",
    "ReserveOutboundPeer",
    "ReleaseOutboundPeer",
    "RegisterOutboundPeer",
    "GetPeerCredentials",
    "RotatePeerCertificate",
    "UpdateOutboundPeerCredentials",
    "Reseal",
    "WatchChanges",
]
ACL: dict[str, set[str]] = {
    **{m: {GATEWAY} for m in methods(SERVICE_NAME, _GATEWAY_ONLY)},
    **{m: {GATEWAY, ENROLLMENT} for m in methods(SERVICE_NAME, ["GetGrant", "GetPeer"])},
    **{m: {ENROLLMENT} for m in methods(SERVICE_NAME, ["ActivateGrantAndPeer"])},
}


async def main(config: InstanceConfig) -> None:
    runtime = ServiceRuntime(config, GRANTS, migrations_dir=MIGRATIONS)
    await runtime.migrate()
    assert runtime.db is not None
    notifier = ChangeNotifier()
    listener = runtime.internal_listener(ACL)
    listener.add(
        grants_pb2_grpc.add_GrantsServicer_to_server,
        GrantsServicer(
            GrantsStore(runtime.db),
            runtime.sealer,
            notifier,
            sealer_on_disk=lambda: load_sealer(config),
        ),
        SERVICE_NAME,
    )
    # Cancelled first at shutdown: ends open WatchChanges streams before the listener drains.
    await runtime.run([listener], background=[notifier.close_when_cancelled])
