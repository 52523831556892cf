"""Prometheus metrics: what every service counts, and the HTTP listener scrapers read.

Each service process serves its own registry on its own metrics port (port base + 64 +
its place in the start order; DESIGN "Listeners"), as Prometheus text over plain HTTP,
bound to ``bind_host`` like the other listeners.

Labels take values from bounded sets only: method names the server registered, status
codes, verbs, outcomes and reason codes. Never a peer, grant, user, serial or request id:
the scrape carries no identity, and its size does not grow with traffic. Who did what is
the audit log's job (``mosaic federation audit list``).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import start_wsgi_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from mosaic import __version__
from mosaic.enrollment_url import bracket_host

# No `*_created` series: they double the scrape and scrapers infer resets from the values.
disable_created_metrics()

# Names and labels follow the usual gRPC server metrics (go-grpc-prometheus), so existing
# dashboards and alerts apply.
GRPC_HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed on this server, by service, method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from a handler's start to its response or error.",
    ["grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BUILD_INFO = Gauge(
    "mosaic_build_info", "Always 1: the service and its version.", ["service", "version"]
)
SERVING = Gauge("mosaic_serving", "1 while this service's health says SERVING, else 0.")


class MethodStats:
    """The metrics of one RPC method, resolved once so that a call costs two updates."""

    __slots__ = ("_handled", "_method", "_seconds", "_service")

    def __init__(self, full_method: str) -> None:
        # "/package.Service/Method"
        self._service, _, self._method = full_method.lstrip("/").rpartition("/")
        self._seconds = GRPC_HANDLING_SECONDS.labels(self._service, self._method)
        self._handled: dict[grpc.StatusCode, Counter] = {}

    def observe(self, code: grpc.StatusCode, started: float) -> None:
        """One call finished with ``code``; ``started`` is its ``time.perf_counter()``."""
        self._seconds.observe(time.perf_counter() - started)
        counter = self._handled.get(code)
        if counter is None:
            counter = GRPC_HANDLED.labels(self._service, self._method, code.name)
            self._handled[code] = counter
        counter.inc()


class MetricsListener:
    """The HTTP listener serving this process's metrics (a daemon thread of its own)."""

    def __init__(self, service: str, host: str, port: int) -> None:
        self.service = service
        self.host = host
        self.port = port
        self._server: WSGIServer | None = None

    @property
    def address(self) -> str:
        return f"{bracket_host(self.host)}:{self.port}"

    def start(self) -> None:
        BUILD_INFO.labels(self.service, __version__).set(1)
        try:
            self._server, _ = start_wsgi_server(self.port, addr=self.host)
        except OSError as exc:
            raise OSError(
                f"cannot listen on {self.address} (metrics): {exc.strerror or exc}"
            ) from None

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            # shutdown() waits for the serving thread's poll (up to 0.5 s): not on the loop.
            await asyncio.to_thread(server.shutdown)
            server.server_close()


def scrape(port: int, host: str = "127.0.0.1", timeout_s: float = 5.0) -> str:
    """One scrape of a metrics listener, as the Prometheus text it serves."""
    url = f"http://{bracket_host(host)}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        return reply.read().decode()


def samples(text: str) -> Iterator[Sample]:
    """Every sample of a scrape (``name``, ``labels``, ``value``)."""
    for family in text_string_to_metric_families(text):
        yield from family.samples
