"""A flow in progress when the gateway is asked to stop is finished, not cut.

Two real instances, A enrolled with B through the CLI. B's gateway is frozen (SIGSTOP) so
that A's `peer renew` is caught half-way, waiting for B's answer; the operator's call goes
away, and A is asked to stop (SIGTERM to its `mosaic up`, or Ctrl-C in its terminal).
Only then does B answer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.instances import MOSAIC, Instance, enroll, service_pid
from tests.support.procs import wait_until

pytestmark = pytest.mark.slow

USER = "44444444-4444-4444-8444-444444444444"


@dataclass
class Pair:
    a: Instance
    b: Instance


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("grace")
    a = Instance(root, "a")
    b = Instance(root, "b")
    scope = root / "scope.json"
    scope.write_text(json.dumps({"resources": ["tasks"]}))
    try:
        a.start()
        b.start()
        enroll(a, b, scope, user=USER, name="b")
        yield Pair(a, b)
    finally:
        a.stop()
        b.stop()


def _unread_at(port: int) -> bool:
    """Whether bytes sent to 127.0.0.1:``port`` wait unread in the listening side's socket
    (a stopped process reads nothing; the kernel still accepts the connection and queues
    what arrives)."""
    for table in ("tcp", "tcp6"):  # gRPC may use IPv6 sockets with v4-mapped addresses
        for line in Path("/proc/net", table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            rx_queue = int(queues.split(":")[1], 16)
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port and rx_queue:
                return True
    return False


def _output(proc: subprocess.Popen[bytes]) -> str:
    return proc.communicate()[0].decode(errors="replace")


def _gateway_stopping(inst: Instance) -> bool:
    return any(
        '"service":"federation-gateway"' in line and '"msg":"shutting down"' in line
        for line in inst.log_text().splitlines()
    )


def _sigterm_to_up(inst: Instance) -> None:
    assert inst.proc is not None
    inst.proc.send_signal(signal.SIGTERM)


def _ctrl_c(inst: Instance) -> None:
    """What a terminal does on Ctrl-C: SIGINT to every process of the foreground group
    (`up` and the services it started)."""
    assert inst.proc is not None
    os.killpg(inst.proc.pid, signal.SIGINT)


@pytest.mark.parametrize("stop", [_sigterm_to_up, _ctrl_c], ids=["sigterm", "ctrl-c"])
def test_a_renewal_in_progress_at_shutdown_is_finished_and_stored(
    pair: Pair, stop: Callable[[Instance], None]
) -> None:
    a, b = pair.a, pair.b
    assert a.proc is not None and b.proc is not None
    code, before, err = a.cli("federation", "peer", "show", "b")
    assert code == 0, (before, err)
    b_gateway = service_pid(b.proc.pid, "federation-gateway")
    os.kill(b_gateway, signal.SIGSTOP)
    try:
        renew = subprocess.Popen(
            [*MOSAIC, "--home", str(a.home), "--json", "federation", "peer", "renew", "b"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: _unread_at(b.init_doc["ports"]["federation"]),
            15,
            what="A's renewal call reaching B",
            abort=lambda: None if renew.poll() is None else f"peer renew ended: {_output(renew)}",
        )
        renew.kill()  # the operator's call goes away; A's gateway carries on
        renew.wait()
        stop(a)
        wait_until(lambda: _gateway_stopping(a), 30, what="A's gateway stopping")
    finally:
        os.kill(b_gateway, signal.SIGCONT)  # B answers only now
    assert a.proc.wait(30) == 0, a.log_tail()

    a.start()
    code, peer, err = a.cli("federation", "peer", "show", "b")
    assert code == 0, (peer, err)
    assert peer["cert_serial"] != before["cert_serial"], "the renewal B made was not stored"
    # B serves only the grant's current certificate: A's new one is it.
    code, doc, err = a.cli("federation", "query", "b", "capabilities")
    assert code == 0, (doc, err)
