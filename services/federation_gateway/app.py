"""federation-gateway wiring: the admin, federation and enrollment listeners."""

from __future__ import annotations

from pathlib import Path

import grpc

from federation_gateway.admin.servicer import FederationAdminServicer
from federation_gateway.admin_auth import admin_token_authorizer
from federation_gateway.context import GatewayContext
from mosaic.config import GATEWAY, InstanceConfig
from mosaic.federation.v1 import gateway_pb2, gateway_pb2_grpc
from mosaic.rpc.server import Listener
from mosaic.runtime import ServiceRuntime

MIGRATIONS = Path(__file__).parent / "migrations"
_services = gateway_pb2.DESCRIPTOR.services_by_name
ADMIN_SERVICE = _services["FederationAdmin"].full_name
FEDERATION_SERVICE = _services["Federation"].full_name
PEER_ENROLLMENT_SERVICE = _services["PeerEnrollment"].full_name


def admin_listener(runtime: ServiceRuntime) -> Listener:
    """TLS with the gateway's internal certificate, on loopback; the admin token authenticates."""
    config = runtime.config
    pki = config.internal_pki_dir
    credentials = grpc.ssl_server_credentials(
        [((pki / f"{GATEWAY}.key").read_bytes(), (pki / f"{GATEWAY}.crt").read_bytes())]
    )
    listener = Listener(
        "admin",
        f"127.0.0.1:{config.ports.admin}",  # local only, whatever bind_host says
        credentials,
        authorize=admin_token_authorizer(config.admin_token_file),
    )
    runtime.add_diagnostics(listener)
    return listener


def federation_server_credentials(
    config: InstanceConfig, client_roots: bytes
) -> grpc.ServerCredentials:
    """Peer-facing mTLS: a client certificate chained to ``client_roots`` is required."""
    fed = config.federation_pki_dir
    return grpc.ssl_server_credentials(
        [((fed / "server.key").read_bytes(), (fed / "server.crt").read_bytes())],
        root_certificates=client_roots,
        require_client_auth=True,
    )


def enrollment_server_credentials(config: InstanceConfig) -> grpc.ServerCredentials:
    """Server TLS only: peers pin our federation root; the token authenticates them."""
    fed = config.federation_pki_dir
    return grpc.ssl_server_credentials(
        [((fed / "server.key").read_bytes(), (fed / "server.crt").read_bytes())]
    )


async def main(config: InstanceConfig) -> None:
    runtime = ServiceRuntime(config, GATEWAY, migrations_dir=MIGRATIONS)
    await runtime.migrate()
    gateway = GatewayContext.build(runtime)
    gateway.audit.start()
    admin = admin_listener(runtime)
    admin.add(
        gateway_pb2_grpc.add_FederationAdminServicer_to_server,
        FederationAdminServicer(gateway),  # type: ignore[abstract]  # areas still missing
        ADMIN_SERVICE,
    )
    federation = Listener(
        "federation",
        config.listen_address(config.ports.federation),
        federation_server_credentials(
            config, (config.federation_pki_dir / "root.crt").read_bytes()
        ),
        trust_request_id=False,
    )
    federation.add(
        gateway_pb2_grpc.add_FederationServicer_to_server,
        gateway_pb2_grpc.FederationServicer(),  # type: ignore[abstract]  # replaced by its issue
        FEDERATION_SERVICE,
    )
    enrollment = Listener(
        "enrollment",
        config.listen_address(config.ports.enrollment),
        enrollment_server_credentials(config),
        trust_request_id=False,
    )
    enrollment.add(
        gateway_pb2_grpc.add_PeerEnrollmentServicer_to_server,
        gateway_pb2_grpc.PeerEnrollmentServicer(),  # type: ignore[abstract]  # replaced by its issue
        PEER_ENROLLMENT_SERVICE,
    )
    await runtime.run([admin, federation, enrollment], on_stop=gateway.close)
