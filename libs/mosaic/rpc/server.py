"""One way to start a server: listeners with health, reflection, interceptors and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from mosaic.db import database_unavailable_error
from mosaic.metrics import SERVING as SERVING_GAUGE
from mosaic.rpc.interceptors import Authorizer, ServerInterceptor
from mosaic.rpc.options import SERVER_OPTIONS
from mosaic.supervisor import report_started

log = logging.getLogger("mosaic.server")

SHUTDOWN_GRACE_S = 8.0  # SIGTERM → stopped within 10 s, with room for closing the database
# Work its calls left running (ServiceHost.run's ``finish``) has this long from the stop
# request, alongside the listeners' grace, so the whole still fits in SHUTDOWN_GRACE_S.
FINISH_GRACE_S = 5.0
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _GenericOnly:
    """Hands a generated ``add_*_to_server`` only the server's generic-handler registry.

    grpc.aio (1.84 and later) keeps one pending accept per registered method and, for every
    incoming call, waits on all of them with ``asyncio.wait``, so each registered method
    makes accepting any call dearer (about 2.3 us per method per call, measured alone).
    Health and reflection answer just the same through the generic handler the generated
    code also adds, and stay off that path; the listener's own services stay registered,
    as a generated server registers them.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        """Not registered: the generic handler added alongside serves these methods."""


class Listener:
    """One listening port: a grpc.aio server with its own credentials and authorization."""

    def __init__(
        self,
        name: str,
        address: str,
        credentials: grpc.ServerCredentials,
        *,
        authorize: Authorizer | None = None,
        trust_request_id: bool = True,
        take_malformed: frozenset[str] = frozenset(),
        extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self.name = name
        self.address = address
        self._credentials = credentials
        self.server = grpc.aio.server(
            interceptors=[
                ServerInterceptor(
                    authorize=authorize,
                    trust_request_id=trust_request_id,
                    take_malformed=take_malformed,
                    # Every service has a database: its outages answer UNAVAILABLE.
                    expected_failure=database_unavailable_error,
                ),
                *extra_interceptors,
            ],
            options=SERVER_OPTIONS,
        )
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, _GenericOnly(self.server))
        self.service_names: list[str] = [HEALTH_SERVICE]
        self.port = 0

    def add(
        self, add_to_server: Callable[[Any, grpc.aio.Server], None], servicer: Any, name: str
    ) -> None:
        add_to_server(servicer, self.server)
        self.service_names.append(name)

    async def start(self) -> None:
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer([*self.service_names, reflection.SERVICE_NAME]),
            _GenericOnly(self.server),
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, NOT_SERVING)
        try:
            self.port = self.server.add_secure_port(self.address, self._credentials)
        except RuntimeError:  # grpcio's "Failed to bind to address"
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {self.address} ({self.name})")
        await self.server.start()
        log.info("listening", extra={"listener": self.name, "address": self.address})

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)


ReadinessCheck = Callable[[], Awaitable[list[str]]]


class ServiceHost:
    """Runs a service's listeners until SIGTERM/SIGINT, reporting readiness through health.

    Health says SERVING only while ``readiness()`` returns no problems (migrations ran
    before the host starts; dependencies must answer).

    A process started with SIGINT ignored keeps ignoring it: `mosaic up` starts its
    services so, and stops them itself with SIGTERM, one after the other, when its
    terminal's Ctrl-C reaches it.
    """

    def __init__(self, service: str, listeners: Iterable[Listener]) -> None:
        self.service = service
        self.listeners = list(listeners)
        self._stop = asyncio.Event()
        self._serving: bool | None = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(
        self,
        readiness: ReadinessCheck,
        *,
        on_stop: Callable[[], Awaitable[None]] | None = None,
        background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
        finish: Callable[[float], Awaitable[None]] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        """Serve until asked to stop; then, in this order: cancel the ``background`` jobs,
        stop the listeners (calls in progress get SHUTDOWN_GRACE_S), give ``finish`` what
        is left of FINISH_GRACE_S for the work those calls left running, and call
        ``on_stop`` (which closes the channels and the database that work needed)."""
        loop = asyncio.get_running_loop()
        signals = [signal.SIGTERM]
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signals.append(signal.SIGINT)
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        for listener in self.listeners:
            await listener.start()
        report_started()
        tasks = [asyncio.create_task(job()) for job in background]
        try:
            while not self._stop.is_set():
                problems = await readiness()
                await self._set_serving(not problems, problems)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), poll_s)
        finally:
            log.info("shutting down", extra={"grace_s": SHUTDOWN_GRACE_S})
            finish_by = loop.time() + FINISH_GRACE_S
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(ls.stop(SHUTDOWN_GRACE_S) for ls in self.listeners))
            if finish is not None:
                await finish(max(0.0, finish_by - loop.time()))
            if on_stop is not None:
                await on_stop()
            log.info("stopped")

    async def _set_serving(self, serving: bool, problems: list[str]) -> None:
        if serving == self._serving:
            return
        self._serving = serving
        SERVING_GAUGE.set(1 if serving else 0)
        for listener in self.listeners:
            await listener.set_serving(serving)
        if serving:
            log.info("serving")
        else:
            log.warning("not serving", extra={"problems": "; ".join(problems)})
