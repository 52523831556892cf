"""federation-gateway wiring: the admin, federation and enrollment listeners."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from federation_gateway.admin.servicer import FederationAdminServicer
from federation_gateway.admin_auth import admin_token_authorizer
from federation_gateway.context import GatewayContext
from federation_gateway.federation import FederationServicer
from federation_gateway.peer_enrollment import PeerEnrollmentServicer
from mosaic.config import CA, GATEWAY, ConfigError, InstanceConfig
from mosaic.federation.v1 import ca_pb2, ca_pb2_grpc, common_pb2, gateway_pb2, gateway_pb2_grpc
from mosaic.pki import INTERMEDIATE_CERT, ROOT_CERT, SERVER_CERT, SERVER_KEY
from mosaic.rpc.server import Listener
from mosaic.runtime import ServiceRuntime, expiry_check

log = logging.getLogger("mosaic.gateway")

MIGRATIONS = Path(__file__).parent / "migrations"
TRUST_BUNDLE_WAIT_S = 60.0
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


def server_key_pair(config: InstanceConfig) -> tuple[bytes, bytes]:
    """The gateway's TLS server key and certificate chain (PEM), checked to belong together,
    so a broken pair stops the gateway with a remediation rather than a TLS error."""
    fed = config.federation_pki_dir
    remediation = "run `mosaic init --renew-federation-server`, then start federation-gateway"
    try:
        key_pem = (fed / SERVER_KEY).read_bytes()
        chain_pem = (fed / SERVER_CERT).read_bytes()
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert = x509.load_pem_x509_certificate(chain_pem)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"the federation server certificate or key in {fed} cannot be read "
            f"({type(exc).__name__})",
            remediation=remediation,
        ) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise ConfigError(
            f"the federation server key in {fed} does not belong to its certificate",
            remediation=remediation,
        )
    return key_pem, chain_pem


def federation_server_credentials(
    key_pair: tuple[bytes, bytes], client_roots: bytes
) -> grpc.ServerCredentials:
    """Peer-facing mTLS: a client certificate chained to ``client_roots`` is required."""
    return grpc.ssl_server_credentials(
        [key_pair], root_certificates=client_roots, require_client_auth=True
    )


async def server_certificate_check(
    config: InstanceConfig, serving_chain_pem: bytes
) -> common_pb2.Check:
    """For `gateway doctor`: the TLS server certificate peers see, which is the one loaded
    at start-up (a renewed file takes a restart)."""
    path = config.federation_pki_dir / SERVER_CERT
    try:
        on_disk: bytes | None = path.read_bytes()
    except OSError:
        on_disk = None  # _expiry says it is unreadable
    if on_disk is not None and on_disk != serving_chain_pem:
        serving = x509.load_pem_x509_certificate(serving_chain_pem).not_valid_after_utc
        return common_pb2.Check(
            name="federation_certificate",
            ok=False,
            detail=f"serving the one that expires {serving:%Y-%m-%d}; {path} was replaced "
            "since the gateway started",
            remediation="restart federation-gateway to serve it",
        )
    return _expiry(
        config,
        "federation_certificate",
        [SERVER_CERT],
        "renew with `mosaic init --renew-federation-server`, then restart federation-gateway "
        "(peers pin the root: nothing changes for them)",
    )


async def federation_ca_check(config: InstanceConfig) -> common_pb2.Check:
    """For `gateway doctor`: the federation root and intermediate, whichever expires first."""
    return _expiry(
        config,
        "federation_ca",
        [INTERMEDIATE_CERT, ROOT_CERT],
        "the federation CA cannot be rotated in place, because peers pin its root: before "
        "it expires, set up a new instance and have every peer enroll with it",
    )


def _expiry(
    config: InstanceConfig, name: str, files: list[str], remediation: str
) -> common_pb2.Check:
    fed = config.federation_pki_dir
    try:
        not_after = min(
            x509.load_pem_x509_certificate((fed / f).read_bytes()).not_valid_after_utc
            for f in files
        )
    except (OSError, ValueError) as exc:
        return common_pb2.Check(
            name=name,
            ok=False,
            detail=f"unreadable ({type(exc).__name__}) in {fed}",
            remediation="restore pki/federation/ from the backup of this home",
        )
    return expiry_check(name, not_after, remediation)


async def advertised_endpoints_check(config: InstanceConfig) -> common_pb2.Check:
    """For `gateway doctor`: the endpoints this gateway process tells peers (in enrollment
    URLs, and as the federation endpoint they store), next to the ports it listens on.

    Always ok: the doctor cannot tell a load balancer's port from a mistake. A replica that
    listens on ports of its own (MOSAIC_FEDERATION_PORT, MOSAIC_ENROLLMENT_PORT) and has no
    public port to advertise instead gets a remediation, since every peer enrolled through
    it would be pinned to it.
    """
    ports = config.ports
    detail = (
        f"peers are told federation {config.federation_endpoint}, "
        f"enrollment {config.enrollment_endpoint}"
    )
    listening = (ports.federation, ports.enrollment)
    if (config.advertised_federation_port, config.advertised_enrollment_port) != listening:
        detail += f" (this gateway listens on {ports.federation} and {ports.enrollment})"
    own_port = [
        f"MOSAIC_{listener.upper()}_PORT"
        for listener, public in (
            ("federation", config.public_federation_port),
            ("enrollment", config.public_enrollment_port),
        )
        if listener in config.port_overrides and public is None
    ]
    remediation = (
        f"this replica advertises its own {' and '.join(own_port)}: set "
        "public_federation_port and public_enrollment_port to the load balancer's ports "
        '(docs/SETUP.md, "Running gateway replicas")'
        if own_port
        else ""
    )
    return common_pb2.Check(
        name="advertised_endpoints", ok=True, detail=detail, remediation=remediation
    )


async def federation_client_roots(runtime: ServiceRuntime) -> bytes:
    """The roots peer client certificates must chain to, from ca-service GetTrustBundle
    (retried until ca-service answers, for at most TRUST_BUNDLE_WAIT_S).

    Root and intermediates are both trusted, so a peer sending only its leaf still verifies.
    """
    ca = ca_pb2_grpc.CertificateAuthorityStub(runtime.channels.get(CA))
    deadline = time.monotonic() + TRUST_BUNDLE_WAIT_S
    delay = 0.1
    while True:
        try:
            bundle = await ca.GetTrustBundle(ca_pb2.GetTrustBundleRequest(), timeout=2.0)
        except grpc.aio.AioRpcError as err:
            if time.monotonic() + delay > deadline:
                raise ConfigError(
                    f"ca-service did not hand out the federation trust bundle ({err.code().name})",
                    remediation="start ca-service first (`mosaic up` starts every service)",
                ) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        if not bundle.root_pem:
            raise ConfigError(
                "ca-service returned an empty trust bundle",
                remediation="check the CA backend with `mosaic gateway doctor`",
            )
        log.info("federation client trust loaded", extra={"backend": bundle.backend})
        return "".join([bundle.root_pem, *bundle.intermediates_pem]).encode()


def enrollment_server_credentials(
    config: InstanceConfig, key_pair: tuple[bytes, bytes]
) -> grpc.ServerCredentials:
    """Server TLS only: peers pin our federation root; the token authenticates them.

    The chain sent here ends with the root itself: a peer holding only the root's
    fingerprint (from the enrollment URL) takes the root from this handshake, checks it
    against the pin, and only then trusts it (federation_gateway.admin.enrollment).
    """
    key_pem, chain_pem = key_pair
    root = (config.federation_pki_dir / ROOT_CERT).read_bytes()
    return grpc.ssl_server_credentials([(key_pem, chain_pem.rstrip(b"\n") + b"\n" + root)])


async def main(config: InstanceConfig) -> None:
    key_pair = server_key_pair(config)  # before anything waits: a broken pair stops us now
    runtime = ServiceRuntime(config, GATEWAY, migrations_dir=MIGRATIONS)
    runtime.extra_checks.append(lambda: server_certificate_check(config, key_pair[1]))
    runtime.extra_checks.append(lambda: federation_ca_check(config))
    runtime.extra_checks.append(lambda: advertised_endpoints_check(config))
    await runtime.migrate()
    gateway = GatewayContext.build(runtime)
    if config.valkey_url:
        # Every federation request and redeem is refused while Valkey is down (the limits
        # fail closed): health says so too, and the doctor names it.
        runtime.extra_dependencies["valkey"] = gateway.grant_limiter.ping
    # Every federation request is refused while the revoked set is not loaded: health
    # says so too (after a ca-service outage, until the new snapshot has arrived).
    runtime.readiness_checks.append(gateway.revoked.problem)
    runtime.extra_checks.append(gateway.revoked.check)
    # Likewise while audit rows cannot be committed (the database full or down), which
    # `SELECT 1` (the doctor's database row) does not show.
    runtime.readiness_checks.append(gateway.audit.problem)
    runtime.extra_checks.append(gateway.audit.check)
    admin = admin_listener(runtime)
    admin.add(
        gateway_pb2_grpc.add_FederationAdminServicer_to_server,
        FederationAdminServicer(gateway),
        ADMIN_SERVICE,
    )
    federation = Listener(
        "federation",
        config.listen_address(config.ports.federation),
        federation_server_credentials(key_pair, await federation_client_roots(runtime)),
        trust_request_id=False,
        # Undecodable requests are audited and rate-limited by these handlers, then refused.
        take_malformed=frozenset(
            f"/{FEDERATION_SERVICE}/{m.name}" for m in _services["Federation"].methods
        ),
    )
    federation.add(
        gateway_pb2_grpc.add_FederationServicer_to_server,
        FederationServicer(gateway),
        FEDERATION_SERVICE,
    )
    enrollment = Listener(
        "enrollment",
        config.listen_address(config.ports.enrollment),
        enrollment_server_credentials(config, key_pair),
        trust_request_id=False,
        take_malformed=frozenset({f"/{PEER_ENROLLMENT_SERVICE}/Redeem"}),
    )
    enrollment.add(
        gateway_pb2_grpc.add_PeerEnrollmentServicer_to_server,
        PeerEnrollmentServicer(gateway),
        PEER_ENROLLMENT_SERVICE,
    )
    await runtime.run(
        [admin, federation, enrollment],
        background=[gateway.follow_revocations, gateway.follow_grant_changes],
        finish=gateway.unfinished.finish,
        on_stop=gateway.close,
    )
