"""What every service process does the same way: logging, seal secret, database, channels,
internal listener, diagnostics and the run loop."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mosaic import __version__
from mosaic.config import SERVICES, ConfigError, InstanceConfig, host_port, read_home_file
from mosaic.db import Database, database_failure_kind, database_unavailable
from mosaic.federation.v1 import common_pb2, common_pb2_grpc
from mosaic.logs import configure_logging
from mosaic.metrics import MetricsListener
from mosaic.pki import certificate_not_after
from mosaic.rpc.acl import acl_authorizer
from mosaic.rpc.channels import InternalChannels, internal_server_credentials
from mosaic.rpc.server import Listener, ServiceHost
from mosaic.sealing import Sealer, WeakSecretError, parse_secret

log = logging.getLogger("mosaic.runtime")

CERT_EXPIRY_WARNING = dt.timedelta(days=14)
# A database server that does not answer at start is waited for, trying again after 1 s,
# then twice as long each time up to this.
DATABASE_WAIT_MAX_S = 10.0
# How long one look at a database server that does not answer takes (a host that drops
# packets would hold a connect attempt for a minute).
DATABASE_PING_TIMEOUT_S = 5.0
DIAGNOSTICS_SERVICE = common_pb2.DESCRIPTOR.services_by_name["Diagnostics"].full_name

ExtraCheck = Callable[[], Awaitable[common_pb2.Check]]


def load_sealer(config: InstanceConfig) -> Sealer:
    """The instance's sealer; a missing or weak secret is a ConfigError with a remediation."""
    path = config.seal_secret_file
    if not path.is_file():
        raise ConfigError(
            f"seal secret missing at {path}",
            remediation="restore it from backup, or for a new instance run `mosaic init`",
        )
    previous: bytes | None = None
    try:
        current = parse_secret(_secret_text(path))
        prev_path = config.previous_seal_secret_file
        if prev_path.is_file():
            previous = parse_secret(_secret_text(prev_path))
    except WeakSecretError as exc:
        raise ConfigError(f"seal secret is too weak: {exc}", remediation=exc.remediation) from exc
    return Sealer(current, previous)


def _secret_text(path: Path) -> str:
    """A seal secret file's text. A file that is not UTF-8 is refused without the decoder's
    message, which would quote a byte of the secret."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"the seal secret file {path} is not text",
            remediation="write the secret as hex or base64 text (`mosaic init` writes base64url)",
        ) from None


def ensure_ports_free(host: str, ports: Mapping[str, int]) -> None:
    """Refuse to start when another process listens on one of ``ports`` (bound and closed
    again at once, with the SO_REUSEADDR gRPC sets, so a port in TIME_WAIT passes)."""
    for name, port in ports.items():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {host_port(host, port)} ({name}): {exc.strerror or exc}",
                    remediation=(
                        "another process holds the port: stop it if it is this service "
                        "already running (an older version included), or choose another "
                        "port base for this instance"
                    ),
                ) from None


def expiry_check(name: str, not_after: dt.datetime, remediation: str) -> common_pb2.Check:
    """A doctor row for a certificate: failing once fewer than 14 days are left."""
    left = not_after - dt.datetime.now(dt.UTC)
    ok = left > CERT_EXPIRY_WARNING
    return common_pb2.Check(
        name=name,
        ok=ok,
        detail=f"expires {not_after.isoformat()} ({left.days} days)",
        remediation="" if ok else remediation,
    )


class StopRequested(Exception):
    """The service was asked to stop before it served (a clean stop: exit 0)."""


class ServiceRuntime:
    """Wiring shared by all five services; each app adds its own servicers and stores."""

    def __init__(
        self, config: InstanceConfig, service: str, *, migrations_dir: Path | None
    ) -> None:
        configure_logging(service)
        self.config = config
        self.service = service
        self.spec = SERVICES[service]
        self.sealer = load_sealer(config)
        self.channels = InternalChannels(config, service)
        self.db: Database | None = None
        if migrations_dir is not None:
            self.db = Database(
                config.database_url(service), schema=self.spec.schema, migrations_dir=migrations_dir
            )
        self.extra_checks: list[ExtraCheck] = []
        # What this process loaded, so the doctor reports it rather than what is on disk
        # (a renewed file or a new secret needs a restart first).
        self._internal_cert_loaded = read_home_file(self._internal_cert_path())
        # Other things this service cannot serve without, by name: each a ping that raises
        # when it does not answer (the gateway's Valkey). Part of readiness, like
        # ``spec.depends_on``.
        self.extra_dependencies: dict[str, Callable[[], Awaitable[object]]] = {}
        # States of this service's own in which it refuses every request (the gateway's
        # revocation list not loaded, its audit log not committing): each returns a problem
        # or None. Part of readiness; the doctor shows them through ``extra_checks``. Async,
        # so a check may look again at what it reports (the audit log tries a write while
        # commits fail), but it is awaited once a second: it must return within a second.
        self.readiness_checks: list[Callable[[], Awaitable[str | None]]] = []

    async def migrate(self) -> None:
        """Bring the database to head, once this service's ports are known to be free: a
        second copy of a running service (or an older version of it) is refused before it
        changes the schema under the running one."""
        ensure_ports_free(self.config.bind_host, self.config.ports.of_service(self.service))
        if self.db is not None:
            if not self.db.is_sqlite:
                await self._wait_for_database()
            await self.db.migrate()
            current, _ = await self.db.revisions()
            log.info("migrations at head", extra={"revision": current})

    async def _wait_for_database(self) -> None:
        """Until the database server answers: it may start after this service (a host
        that boots), or be failing over. Only unavailability is waited for; a refusal
        (a wrong password, no such database) goes on to fail the migration at once.
        SIGTERM or Ctrl-C meanwhile ends the wait at once, a ping in progress included:
        StopRequested."""
        assert self.db is not None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = [signal.SIGTERM]
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signals.append(signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            delay = 1.0
            while True:
                ping = asyncio.ensure_future(self.db.ping_ms())
                await asyncio.wait(
                    [ping, stopping], timeout=DATABASE_PING_TIMEOUT_S, return_when="FIRST_COMPLETED"
                )
                if not ping.done():
                    ping.cancel()
                    problem = f"no answer within {DATABASE_PING_TIMEOUT_S:g} s"
                elif ping.cancelled() or ping.exception() is None:
                    problem = ""
                elif database_unavailable(ping.exception()):  # type: ignore[arg-type]
                    problem = database_failure_kind(ping.exception())  # type: ignore[arg-type]
                else:
                    problem = ""  # a refusal: the migration says what is wrong
                if not stop.is_set() and not problem:
                    return
                if not stop.is_set():
                    log.warning(
                        "waiting for the database", extra={"problem": problem, "retry_in_s": delay}
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stopping), delay)
                if stop.is_set():
                    log.info("stopped while waiting for the database")
                    await self.db.dispose()
                    raise StopRequested
                delay = min(delay * 2, DATABASE_WAIT_MAX_S)
        finally:
            stopping.cancel()
            for sig in signals:
                loop.remove_signal_handler(sig)

    def internal_listener(self, acl: Mapping[str, Iterable[str]]) -> Listener:
        """The service's mTLS listener, where every RPC checks the caller's identity."""
        listener = Listener(
            "internal",
            self.config.listen_address(self.config.ports.internal[self.service]),
            internal_server_credentials(self.config, self.service),
            authorize=acl_authorizer(self.config, acl),
        )
        self.add_diagnostics(listener)
        return listener

    def add_diagnostics(self, listener: Listener) -> None:
        listener.add(
            common_pb2_grpc.add_DiagnosticsServicer_to_server,
            DiagnosticsServicer(self),
            DIAGNOSTICS_SERVICE,
        )

    async def dependency_problems(self) -> list[str]:
        """Names of dependencies that do not answer SERVING right now."""

        async def check(dep: str) -> str | None:
            stub = health_pb2_grpc.HealthStub(self.channels.get(dep))
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            except grpc.aio.AioRpcError as err:
                return f"{dep}: {err.code().name}"
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                return f"{dep}: not serving"
            return None

        async def ping(name: str, probe: Callable[[], Awaitable[object]]) -> str | None:
            try:
                await asyncio.wait_for(probe(), 1.0)
            except Exception as exc:
                return f"{name}: {type(exc).__name__}"
            return None

        results = await asyncio.gather(
            *(check(d) for d in self.spec.depends_on),
            *(ping(name, probe) for name, probe in self.extra_dependencies.items()),
        )
        return [r for r in results if r]

    async def readiness_problems(self) -> list[str]:
        """What keeps health from saying SERVING: dependencies, then readiness_checks."""
        problems = await self.dependency_problems()
        own = await asyncio.gather(*(check() for check in self.readiness_checks))
        return problems + [p for p in own if p]

    async def run(
        self,
        listeners: Sequence[Listener],
        *,
        background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
        finish: Callable[[float], Awaitable[None]] | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Serve ``listeners`` until SIGTERM (ServiceHost.run says in which order it stops);
        ``on_stop`` runs before the internal channels and the database are closed."""
        host = ServiceHost(self.service, listeners)
        metrics = MetricsListener(
            self.service, self.config.bind_host, self.config.ports.metrics[self.service]
        )
        metrics.start()
        log.info("listening", extra={"listener": "metrics", "address": metrics.address})

        async def stop() -> None:
            if on_stop is not None:
                await on_stop()
            await self.channels.close()
            if self.db is not None:
                await self.db.dispose()

        try:
            await host.run(
                self.readiness_problems, background=background, finish=finish, on_stop=stop
            )
        finally:
            await metrics.stop()

    # ---- self checks for `mosaic gateway doctor` ------------------------------
    async def self_checks(self) -> list[common_pb2.Check]:
        checks = [await self._database_check(), *await self._migration_check()]
        checks.append(self._certificate_check())
        checks.append(self._seal_check())
        deps = await self.dependency_problems()
        checks.append(
            common_pb2.Check(
                name="dependencies",
                ok=not deps,
                detail="; ".join(deps)
                or ", ".join([*self.spec.depends_on, *self.extra_dependencies])
                or "none",
                remediation="start the services named here (`mosaic up` starts them all; "
                "Valkey is the one configured with `mosaic init --valkey`)"
                if deps
                else "",
            )
        )
        for extra in self.extra_checks:
            checks.append(await extra())
        return checks

    async def _database_check(self) -> common_pb2.Check:
        if self.db is None:
            return common_pb2.Check(name="database", ok=True, detail="no tables")
        try:
            latency = await self.db.ping_ms()
        except Exception as exc:
            return common_pb2.Check(
                name="database",
                ok=False,
                detail=f"unreachable ({type(exc).__name__})",
                remediation="check that the database server is running and --db is right",
            )
        engine = "sqlite" if self.db.is_sqlite else "postgresql"
        return common_pb2.Check(
            name="database",
            ok=True,
            detail=f"{engine}, schema {self.db.schema}",
            latency_ms=latency,
        )

    async def _migration_check(self) -> list[common_pb2.Check]:
        if self.db is None:
            return []
        try:
            current, head = await self.db.revisions()
        except Exception as exc:
            return [
                common_pb2.Check(
                    name="migrations",
                    ok=False,
                    detail=f"cannot read revision ({type(exc).__name__})",
                    # It ran its migrations when it started; now the database does not answer.
                    remediation="see the database row: once the database answers, this "
                    "clears by itself",
                )
            ]
        ok = current == head
        return [
            common_pb2.Check(
                name="migrations",
                ok=ok,
                detail=f"at {current}" + ("" if ok else f", head is {head}"),
                remediation="" if ok else "restart the service; it migrates at start-up",
            )
        ]

    def _internal_cert_path(self) -> Path:
        return self.config.internal_pki_dir / f"{self.service}.crt"

    def _certificate_check(self) -> common_pb2.Check:
        """The internal certificate this process serves with, and whether the home holds a
        newer one it has not loaded yet."""
        path = self._internal_cert_path()
        try:
            on_disk = path.read_bytes()
            not_after = certificate_not_after(self._internal_cert_loaded)
        except (OSError, ValueError):
            return common_pb2.Check(
                name="internal_certificate",
                ok=False,
                detail=f"unreadable: {path}",
                remediation="re-run `mosaic init --renew-internal` for this home",
            )
        if on_disk != self._internal_cert_loaded:
            return common_pb2.Check(
                name="internal_certificate",
                ok=False,
                detail=f"serving the one that expires {not_after:%Y-%m-%d}; {path} was "
                "replaced since this service started",
                remediation=f"restart {self.service} to load it",
            )
        return expiry_check(
            "internal_certificate", not_after, "renew with `mosaic init --renew-internal`"
        )

    def _seal_check(self) -> common_pb2.Check:
        """The seal secret this process runs with, and whether the home's differs (a
        rotation not yet followed by a restart)."""
        loaded = self.sealer
        try:
            on_disk = load_sealer(self.config)
        except ConfigError as exc:
            return common_pb2.Check(
                name="seal_secret",
                ok=False,
                detail=f"running with key id {loaded.key_id}; the home's: {exc.message}",
                remediation=exc.remediation,
            )
        if (on_disk.key_id, on_disk.previous_key_id) != (loaded.key_id, loaded.previous_key_id):
            return common_pb2.Check(
                name="seal_secret",
                ok=False,
                detail=f"running with key id {loaded.key_id} (previous "
                f"{loaded.previous_key_id or 'none'}); the home now has {on_disk.key_id} "
                f"(previous {on_disk.previous_key_id or 'none'})",
                remediation=f"restart {self.service} to load the home's seal secrets",
            )
        return common_pb2.Check(name="seal_secret", ok=True, detail=f"key id {loaded.key_id}")


class DiagnosticsServicer(common_pb2_grpc.DiagnosticsServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime

    async def SelfCheck(
        self, request: common_pb2.SelfCheckRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.SelfCheckResponse:
        return common_pb2.SelfCheckResponse(
            service=self._runtime.service,
            version=__version__,
            checks=await self._runtime.self_checks(),
        )
