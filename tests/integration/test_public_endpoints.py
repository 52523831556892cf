"""A gateway behind a load balancer tells peers the balancer's ports, not its own.

B is initialised with `--public-federation-port` / `--public-enrollment-port` naming
ports that B does not listen on; a TCP forwarder on those ports stands in for the load
balancer (TCP passthrough: TLS, mutual on the federation port, ends at B's gateway). The
enrollment token is asked of a second gateway replica listening on ports of its own
(MOSAIC_*_PORT), which once put its own port in the URL and so pinned the peer to it.
A then enrolls and queries through the forwarder, the only listener on those ports.

The forwarder is a fake only in that a real load balancer is not available here; the
gateways, TLS and enrollment are the real ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mosaic.enrollment_url import parse_enrollment_url
from tests.support.instances import MOSAIC, Instance, free_port_base

pytestmark = pytest.mark.slow


class TcpForwarder:
    """Accepts on 127.0.0.1:``port`` and pipes each connection to 127.0.0.1:``target``."""

    def __init__(self, port: int, target: int) -> None:
        self.port = port
        self.target = target
        self.accepted = 0
        self._server = socket.create_server(("127.0.0.1", port))
        self._server.settimeout(0.2)
        self._open: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.accepted += 1
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self._stopping.set()
        self._server.close()
        self._thread.join(5)
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def balanced(tmp_path: Path) -> Iterator[tuple[Instance, Instance, int, dict[str, TcpForwarder]]]:
    balancer = free_port_base()  # a free block of its own: B listens on none of it
    public = {"federation": balancer + 43, "enrollment": balancer + 44}
    b = Instance(
        tmp_path,
        "b",
        extra_init=(
            "--public-federation-port",
            str(public["federation"]),
            "--public-enrollment-port",
            str(public["enrollment"]),
        ),
    )
    a = Instance(tmp_path, "a")
    forwarders: dict[str, TcpForwarder] = {}
    try:
        for listener, port in public.items():
            forwarders[listener] = TcpForwarder(port, b.init_doc["ports"][listener])
        with ThreadPoolExecutor(2) as pool:  # side by side: each start is mostly waiting
            list(pool.map(Instance.start, (a, b)))
        yield a, b, balancer, forwarders
    finally:
        a.stop()
        b.stop()
        for forwarder in forwarders.values():
            forwarder.close()


@contextlib.contextmanager
def second_replica(b: Instance, env: dict[str, str]) -> Iterator[None]:
    """A second federation-gateway of B's home on ports of its own, as SETUP.md runs one."""
    with (b.home.parent / "replica-2.log").open("ab") as log:
        proc = subprocess.Popen(
            [*MOSAIC, "--home", str(b.home), "serve", "federation-gateway"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
        try:
            code, doc, _ = b.cli("gateway", "doctor", "--wait", "40", timeout=90, env=env)
            assert code == 0, json.dumps(doc)[:3000]
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_peers_are_told_the_public_endpoints_and_reach_b_through_them(
    balanced: tuple[Instance, Instance, int, dict[str, TcpForwarder]], tmp_path: Path
) -> None:
    a, b, balancer, forwarders = balanced
    federation = f"127.0.0.1:{balancer + 43}"
    enrollment = f"127.0.0.1:{balancer + 44}"
    # What `init` shows the operator: the endpoints peers are told, and the listeners.
    assert (b.init_doc["federation_endpoint"], b.init_doc["enrollment_endpoint"]) == (
        federation,
        enrollment,
    )
    assert b.init_doc["ports"]["federation"] == b.port_base + 43

    replica_env = {
        "MOSAIC_ADMIN_PORT": str(b.port_base + 90),
        "MOSAIC_FEDERATION_PORT": str(b.port_base + 91),
        "MOSAIC_ENROLLMENT_PORT": str(b.port_base + 92),
        "MOSAIC_METRICS_PORT": str(b.port_base + 93),
    }
    with second_replica(b, replica_env):
        # The doctor, asked of replica 2, says what that replica tells peers.
        code, doc, _ = b.cli("gateway", "doctor", env=replica_env)
        [row] = [c for c in doc["checks"] if c["name"] == "advertised_endpoints"]
        assert row["detail"] == (
            f"peers are told federation {federation}, enrollment {enrollment} "
            f"(this gateway listens on {b.port_base + 91} and {b.port_base + 92})"
        ), row
        assert code == 0 and not row["remediation"], row

        scope = tmp_path / "scope.json"
        scope.write_text(json.dumps({"resources": ["tasks"]}))
        code, grant, err = b.cli(
            "federation", "grant", "create", "--user", str(uuid.uuid4()),
            "--peer-name", "a", "--scope", str(scope), env=replica_env,
        )  # fmt: skip
        assert code == 0, (grant, err)
        code, token, err = b.cli("federation", "grant", "token", grant["id"], env=replica_env)
        assert code == 0, (token, err)
    assert parse_enrollment_url(token["enrollment_url"]).endpoint == enrollment

    code, peer, err = a.cli(
        "federation", "peer", "add", token["enrollment_url"], "--name", "b", timeout=120
    )
    assert code == 0, (peer, err)
    assert (peer["state"], peer["endpoint"]) == ("active", federation)
    assert forwarders["enrollment"].accepted >= 1

    # Nothing but the forwarder listens on the stored endpoint's port.
    code, caps, err = a.cli("federation", "query", "b", "capabilities")
    assert code == 0, (caps, err)
    assert caps["capabilities"]["grant_id"] == grant["id"]
    assert caps["stale"] is False
    assert forwarders["federation"].accepted >= 1
