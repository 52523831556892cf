"""gRPC core's own log stays out of the services' JSON-lines log: a TLS connection to the
federation port without a client certificate (a scanner, a peer's misconfigured client)
used to leave an unstructured ``I… ssl_transport_security.cc … Handshake failed`` line
in it. `mosaic` runs with GRPC_VERBOSITY=ERROR unless the operator set it."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from pathlib import Path

import pytest

from mosaic.config import START_ORDER, load_config
from tests.support.instances import Instance, ServiceProcesses

pytestmark = pytest.mark.slow

GATEWAY = "federation-gateway"


def _handshake_without_client_certificate(inst: Instance) -> None:
    """One TLS connection to the federation port offering no client certificate: the
    gateway refuses the handshake (its mTLS listener requires one)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    port = load_config(inst.home).ports.federation
    # Refused, one way or another: an alert, a reset, or the connection closed (TLS 1.3:
    # after our side of the handshake is done, so read until the server answers).
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        contextlib.suppress(ssl.SSLError, OSError),
        context.wrap_socket(sock) as tls,
    ):
        tls.recv(1)
    time.sleep(1.0)  # whatever the gateway logs about it, it has logged


def _not_json(lines: list[str]) -> list[str]:
    bad = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            bad.append(line)
    return bad


def _serve_each(
    inst: Instance, monkeypatch: pytest.MonkeyPatch, verbosity: str | None = None
) -> list[str]:
    """Every service its own `mosaic serve` (as compose runs them), with GRPC_VERBOSITY set
    to ``verbosity`` (unset: the operator set nothing), one handshake without a client
    certificate, then stopped: the gateway's log lines (stdout and stderr). Only the
    services get ``verbosity``: the CLI calls here would write gRPC's lines into the
    test run's own output."""
    log = inst.log_path.parent / f"{inst.name}-{GATEWAY}.log"
    log.unlink(missing_ok=True)
    procs = ServiceProcesses(inst)
    try:
        with monkeypatch.context() as env:
            if verbosity is not None:
                env.setenv("GRPC_VERBOSITY", verbosity)
            procs.start(*START_ORDER)
        code, doc, _ = inst.cli("gateway", "doctor", "--wait", "40", timeout=90)
        assert code == 0, doc
        _handshake_without_client_certificate(inst)
    finally:
        procs.stop_all()
    return log.read_text(errors="replace").splitlines()


def test_under_up_no_line_is_other_than_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)  # the operator set nothing
    inst = Instance(tmp_path, "u")
    try:
        inst.start()
        _handshake_without_client_certificate(inst)
    finally:
        inst.stop()
    lines = inst.log_text().splitlines()
    assert any(json.loads(line).get("service") == GATEWAY for line in lines if line[:1] == "{")
    assert _not_json(lines) == []


def test_under_serve_no_line_is_other_than_json_unless_the_operator_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst = Instance(tmp_path, "s")
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    lines = _serve_each(inst, monkeypatch)
    assert lines and _not_json(lines) == []

    # GRPC_VERBOSITY set by the operator is theirs: how they see B's side of a handshake
    # that fails (RUNBOOK.md, "Logs").
    lines = _serve_each(inst, monkeypatch, "INFO")
    assert any("Handshake failed" in line for line in _not_json(lines)), lines[-20:]
