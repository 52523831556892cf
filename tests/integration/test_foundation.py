"""The walking skeleton: five services start, migrate, and talk over internal mTLS.

Every test here runs real process trees (`mosaic init` + `mosaic up`) on SQLite and
on a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mosaic import __version__
from mosaic.cli.admin import service_address
from mosaic.config import SERVICES, load_config
from mosaic.federation.v1 import common_pb2, common_pb2_grpc, grants_pb2, grants_pb2_grpc
from mosaic.rpc.channels import secure_channel
from tests.support.instances import Instance, internal_channel_as, service_pid

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def instance(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Instance]:
    db = ""
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        db = server.create_database(f"foundation_{id(request)}")
    inst = Instance(tmp_path_factory.mktemp(request.param), "b", db=db)
    inst.start()
    yield inst
    inst.stop()


def test_doctor_reports_every_service_ok(instance: Instance) -> None:
    code, doc, _ = instance.cli("gateway", "doctor")
    assert code == 0, doc
    assert doc["ok"] is True
    services = {c["service"] for c in doc["checks"]}
    assert services == set(SERVICES)
    names = {(c["service"], c["name"]) for c in doc["checks"]}
    for service in SERVICES:
        for check in ("reachable", "database", "migrations", "internal_certificate", "seal_secret"):
            assert (service, check) in names
    for check in ("federation_certificate", "federation_ca"):
        assert ("federation-gateway", check) in names
    engine = "postgresql" if instance.init_doc["database"] == "postgresql" else "sqlite"
    db_checks = [c for c in doc["checks"] if c["name"] == "database"]
    assert all(c["detail"].startswith(engine) for c in db_checks)
    assert all(c["latency_ms"] > 0 for c in db_checks)


def test_doctor_names_the_address_that_answered(instance: Instance) -> None:
    """Each `reachable` row says where the service answered (human output and JSON), so an
    operator choosing a gateway replica with MOSAIC_ADMIN_PORT sees which one it was."""
    config = load_config(instance.home)
    code, doc, _ = instance.cli("gateway", "doctor")
    assert code == 0, doc
    reachable = {c["service"]: c["detail"] for c in doc["checks"] if c["name"] == "reachable"}
    assert reachable == {
        service: f"version {__version__} at {service_address(config, service)}"
        for service in SERVICES
    }
    assert service_address(config, "federation-gateway") == config.admin_address
    code, text, _ = instance.cli("gateway", "doctor", json_out=False)
    assert code == 0, text
    assert f"at {config.admin_address}" in text


async def test_services_report_serving_through_health(instance: Instance) -> None:
    for service in ("ca-service", "grants-service", "enrollment-service", "resource-service"):
        channel = internal_channel_as(instance.home, service, "operator")
        async with channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_caller_not_on_allow_list_is_refused(instance: Instance) -> None:
    # resource-service may not create grants; only the gateway may.
    channel = internal_channel_as(instance.home, "grants-service", "resource-service")
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await grants_pb2_grpc.GrantsStub(channel).ListGrants(
                grants_pb2.ListGrantsRequest(), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "resource-service" in (err.value.details() or "")


async def test_caller_on_allow_list_gets_through(instance: Instance) -> None:
    channel = internal_channel_as(instance.home, "grants-service", "federation-gateway")
    async with channel:
        try:
            await grants_pb2_grpc.GrantsStub(channel).ListGrants(
                grants_pb2.ListGrantsRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as err:  # not refused by the ACL, whatever else
            assert err.code() not in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED,
            )


async def test_self_check_is_for_the_operator_only(instance: Instance) -> None:
    channel = internal_channel_as(instance.home, "ca-service", "resource-service")
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await common_pb2_grpc.DiagnosticsStub(channel).SelfCheck(
                common_pb2.SelfCheckRequest(), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_no_client_certificate_fails_the_handshake(instance: Instance) -> None:
    config = load_config(instance.home)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(config.internal_pki_dir / "ca.crt").read_bytes()
    )
    channel = secure_channel(
        config.internal_address("grants-service"), creds, server_name="grants-service"
    )
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_another_instance_fails_the_handshake(
    instance: Instance, tmp_path: Path
) -> None:
    other = Instance(tmp_path, "b")  # same name, different internal CA
    config = load_config(instance.home)
    other_pki = load_config(other.home).internal_pki_dir
    creds = grpc.ssl_channel_credentials(
        root_certificates=(config.internal_pki_dir / "ca.crt").read_bytes(),
        private_key=(other_pki / "federation-gateway.key").read_bytes(),
        certificate_chain=(other_pki / "federation-gateway.crt").read_bytes(),
    )
    channel = secure_channel(
        config.internal_address("grants-service"), creds, server_name="grants-service"
    )
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await grants_pb2_grpc.GrantsStub(channel).ListGrants(
                grants_pb2.ListGrantsRequest(), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_sigterm_stops_every_service_gracefully(tmp_path: Path) -> None:
    """`up` exits 0 only when every service stopped by itself within its stop limit (it
    kills, and exits non-zero, those that do not): no time is asserted here."""
    inst = Instance(tmp_path, "s")
    inst.start()
    inst.stop(timeout=90)
    assert inst.proc is not None and inst.proc.returncode == 0
    assert _stopped_services(inst) >= set(SERVICES)


def _stopped_services(inst: Instance) -> set[str]:
    stopped = set()
    for line in inst.log_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("msg") == "stopped":
                stopped.add(str(entry.get("service")))
    return stopped


def test_a_service_that_hangs_at_stop_is_killed_and_the_others_still_stop(
    tmp_path: Path,
) -> None:
    """Each service has a stop limit of its own: the gateway frozen (SIGSTOP) is killed
    once its limit has passed, and the services after it still stop by themselves."""
    inst = Instance(tmp_path, "h")
    inst.start()
    assert inst.proc is not None
    os.kill(service_pid(inst.proc.pid, "federation-gateway"), signal.SIGSTOP)
    inst.stop(timeout=120)
    assert inst.proc.returncode == 1
    assert _stopped_services(inst) >= set(SERVICES) - {"federation-gateway"}
    assert "federation-gateway did not stop within" in inst.log_text()


def test_a_service_that_dies_is_reported_by_up_s_exit_status(tmp_path: Path) -> None:
    """Stopped before `up` could start it again (test_up_supervision.py has the restart):
    `up` exits 1, and its log names the service and the signal that ended it."""
    inst = Instance(tmp_path, "d")
    inst.start()
    assert inst.proc is not None
    os.kill(service_pid(inst.proc.pid, "grants-service"), signal.SIGKILL)
    inst.stop(timeout=90)
    assert inst.proc.returncode == 1
    ends = [
        json.loads(line)
        for line in inst.log_text().splitlines()
        if '"service":"mosaic-up"' in line and '"child":"grants-service"' in line
    ]
    assert any(end.get("signal") == "SIGKILL" for end in ends), ends


def test_doctor_on_a_stopped_service_fails_with_remediation(tmp_path: Path) -> None:
    """Run every service but resource-service, each with `mosaic serve`."""
    import subprocess
    import sys

    inst = Instance(tmp_path, "d")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mosaic.cli", "--home", str(inst.home), "serve", s],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for s in SERVICES
        if s != "resource-service"
    ]
    try:
        # Until every started service answers (a loaded machine starts them slowly).
        deadline = time.monotonic() + 60
        while True:
            code, doc, _ = inst.cli("gateway", "doctor", timeout=60)
            unreachable = {
                c["service"] for c in doc["checks"] if c["name"] == "reachable" and not c["ok"]
            }
            if unreachable == {"resource-service"} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert code == 1
        assert doc["ok"] is False
        failing = [c for c in doc["checks"] if not c["ok"]]
        assert any(c["service"] == "resource-service" and c["name"] == "reachable" for c in failing)
        # The gateway depends on resource-service and says so.
        assert any(
            c["service"] == "federation-gateway"
            and c["name"] == "dependencies"
            and "resource-service" in c["detail"]
            for c in failing
        )
        assert all(c["remediation"] for c in failing)
        ok = {(c["service"], c["name"]) for c in doc["checks"] if c["ok"]}
        assert ("ca-service", "reachable") in ok
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)


def test_doctor_without_an_instance_explains_itself(tmp_path: Path) -> None:
    from tests.support.instances import cli

    code, doc, _ = cli(tmp_path / "nothing", "gateway", "doctor")
    assert code == 1
    assert doc["error"]["code"] == "CONFIG"
    # The command it gives works as written (NAME filled in).
    command = doc["error"]["remediation"].split("`")[1]
    argv = command.replace("NAME", "fresh").split()
    assert argv[:3] == ["mosaic", "--home", str(tmp_path / "nothing")], command
    code, doc, _ = cli(tmp_path / "nothing", *argv[3:])
    assert code == 0, doc


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    inst = Instance(tmp_path, "x")
    before = _tree(inst.home)
    code, doc, _ = inst.cli("init", "--name", "x")
    assert code == 1
    assert "already exists" in doc["error"]["message"]
    # Nor does a refused step-ca init touch the home (it used to replace the trusted
    # step-ca root before finding the instance there).
    key = tmp_path / "provisioner.jwk.json"
    key.write_text(json.dumps({"kty": "EC", "kid": "k"}))
    other_root = tmp_path / "other-root.crt"
    other_root.write_bytes((load_config(inst.home).internal_pki_dir / "ca.crt").read_bytes())
    code, doc, _ = inst.cli(
        "init",
        "--name",
        "x",
        "--ca",
        "step-ca",
        "--step-ca-url",
        "https://127.0.0.1:9",
        "--step-ca-root",
        str(other_root),
        "--step-ca-dns-name",
        "ca.example",
        "--step-ca-provisioner-key",
        str(key),
    )
    assert code == 1 and "already exists" in doc["error"]["message"], doc
    assert _tree(inst.home) == before


def _tree(home: Path) -> dict[str, bytes]:
    return {str(p.relative_to(home)): p.read_bytes() for p in home.rglob("*") if p.is_file()}


def test_init_bad_name_and_usage(tmp_path: Path) -> None:
    from tests.support.instances import cli

    code, doc, _ = cli(tmp_path / "h", "init", "--name", "Bad_Name")
    assert code == 1 and "invalid instance name" in doc["error"]["message"]
    code, _, _ = cli(tmp_path / "h2", "init")
    assert code == 2
    code, doc, _ = cli(tmp_path / "h3", "init", "--renew-internal", "--renew-federation-server")
    assert code == 2 and doc["error"]["code"] == "USAGE"


def test_one_renewal_at_a_time_while_the_instance_may_run(tmp_path: Path) -> None:
    """Two `init --renew-federation-server` at once could each write the other's key under
    its own certificate: the second is refused. A running instance (holding the home's
    lock, as `up` does) does not stop a renewal."""
    from mosaic.cli.home_lock import LOCK_FILE, RENEW_LOCK_FILE, lock_home
    from tests.support.instances import cli

    home = tmp_path / "h"
    code, doc, _ = cli(home, "init", "--name", "renew")
    assert code == 0, doc
    cert = load_config(home).federation_pki_dir / "server.crt"
    before = cert.read_bytes()

    other = lock_home(home, "renew", "renew", lock_file=RENEW_LOCK_FILE)
    try:
        code, doc, _ = cli(home, "init", "--renew-federation-server")
        assert code == 1 and doc["error"]["code"] == "HOME_BUSY", doc
        assert f"pid {os.getpid()}" in doc["error"]["message"]
        code, doc, _ = cli(home, "init", "--renew-internal")
        assert code == 1 and doc["error"]["code"] == "HOME_BUSY", doc
    finally:
        other.release()
    assert cert.read_bytes() == before

    running = lock_home(home, "up", "renew", lock_file=LOCK_FILE)
    try:
        code, doc, _ = cli(home, "init", "--renew-federation-server")
        assert code == 0, doc
    finally:
        running.release()
    assert cert.read_bytes() != before


def _served_certificate(inst: Instance) -> x509.Certificate:
    """The server certificate the gateway's enrollment listener presents, verified the way
    a peer verifies it: against the pinned federation root, for the host it dials."""
    config = load_config(inst.home)
    context = ssl.create_default_context(cafile=config.federation_pki_dir / "root.crt")
    with (
        socket.create_connection(("127.0.0.1", config.ports.enrollment), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_federation_server_certificate_renewal_end_to_end(tmp_path: Path) -> None:
    """Renew, restart: the gateway serves the new certificate, which still verifies
    against the root peers pinned at enrollment."""
    inst = Instance(tmp_path, "r")
    inst.start()
    try:
        before = _served_certificate(inst)
        code, doc, _ = inst.cli("init", "--renew-federation-server")
        assert code == 0, doc
        assert doc["federation_root_sha256"] == inst.init_doc["federation_root_sha256"]
        assert _served_certificate(inst).serial_number == before.serial_number  # until restart
        # The doctor says what is served, and that a restart is needed to serve the new one.
        code, doctor, _ = inst.cli("gateway", "doctor")
        rows = {c["name"]: c for c in doctor["checks"] if c["service"] == "federation-gateway"}
        assert code == 1 and not rows["federation_certificate"]["ok"], rows
        assert "restart federation-gateway" in rows["federation_certificate"]["remediation"]
        inst.stop(timeout=30)
        inst.start()
        served = _served_certificate(inst)
        assert served.serial_number != before.serial_number
        assert format(served.serial_number, "x") == doc["serial"]
        code, doctor, _ = inst.cli("gateway", "doctor")
        rows = {c["name"]: c for c in doctor["checks"] if c["service"] == "federation-gateway"}
        assert code == 0 and rows["federation_certificate"]["ok"], rows
    finally:
        inst.stop(timeout=30)


def test_gateway_with_a_broken_server_key_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    inst = Instance(tmp_path, "k")
    key = load_config(inst.home).federation_pki_dir / "server.key"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    code, doc, _ = inst.cli("serve", "federation-gateway", timeout=60)
    assert code == 1 and doc["error"]["code"] == "CONFIG"
    assert "federation server certificate or key" in doc["error"]["message"]
    assert "garbage" not in json.dumps(doc)
    assert "--renew-federation-server" in doc["error"]["remediation"]


def test_serve_refuses_unknown_service(tmp_path: Path) -> None:
    inst = Instance(tmp_path, "u")
    code, _, _ = inst.cli("serve", "nope")
    assert code == 2


def test_secret_files_are_private(tmp_path: Path) -> None:
    inst = Instance(tmp_path, "p")
    config = load_config(inst.home)
    private = [
        # Its database and Valkey URLs may carry passwords.
        config.home / "instance.toml",
        config.seal_secret_file,
        config.admin_token_file,
        config.internal_pki_dir / "ca.key",
        *(config.internal_pki_dir / f"{s}.key" for s in SERVICES),
        config.federation_pki_dir / "server.key",
        config.federation_pki_dir / "intermediate.key.sealed",
    ]
    for path in private:
        assert path.stat().st_mode & 0o077 == 0, path
    # The federation CA keys are sealed: no PEM private key on disk for them.
    for name in ("root.key.sealed", "intermediate.key.sealed"):
        assert b"PRIVATE KEY" not in (config.federation_pki_dir / name).read_bytes()


def test_event_loop_is_clean() -> None:
    # Guard against a fixture leaking a running loop into sync tests.
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_a_seal_generation_that_loses_a_race_keeps_the_original_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `seal rotate --generate` at once: the one that checks second must not move the
    first one's new secret over the original (the only one that opens what is sealed now).
    The other run's move is made to land between this run's check and its own move."""
    from typer.testing import CliRunner

    import mosaic.runtime
    from mosaic.cli.main import app

    inst = Instance(tmp_path, "sg")
    secrets_dir = inst.home / "secrets"
    original = (secrets_dir / "seal.key").read_bytes()
    load_sealer = mosaic.runtime.load_sealer

    def other_run_wins_meanwhile(config: Any) -> Any:
        sealer = load_sealer(config)
        if not (secrets_dir / "seal.previous.key").exists():
            (secrets_dir / "seal.previous.key").write_bytes(original)
            (secrets_dir / "seal.key").write_bytes(b"the other run's new secret\n")
        return sealer

    monkeypatch.setattr(mosaic.runtime, "load_sealer", other_run_wins_meanwhile)
    result = CliRunner().invoke(
        app, ["--home", str(inst.home), "--json", "seal", "rotate", "--generate"]
    )
    assert result.exit_code == 1, result.output
    assert json.loads(result.output)["error"]["code"] == "SEAL_ROTATION_IN_PROGRESS"
    assert (secrets_dir / "seal.previous.key").read_bytes() == original
    assert (secrets_dir / "seal.key").read_bytes() == b"the other run's new secret\n"


def test_internal_certificate_renewal_needs_a_restart_and_the_doctor_says_so(
    tmp_path: Path,
) -> None:
    inst = Instance(tmp_path, "ri")
    inst.start()
    try:
        code, doc, _ = inst.cli("init", "--renew-internal")
        assert code == 0, doc
        code, doctor, _ = inst.cli("gateway", "doctor")
        rows = [c for c in doctor["checks"] if c["name"] == "internal_certificate"]
        assert code == 1 and len(rows) == len(SERVICES), doctor
        assert all(not r["ok"] and r["remediation"].startswith("restart ") for r in rows), rows
        inst.stop(timeout=30)
        inst.start()
        code, doctor, _ = inst.cli("gateway", "doctor")
        rows = [c for c in doctor["checks"] if c["name"] == "internal_certificate"]
        assert code == 0 and all(r["ok"] for r in rows), doctor
    finally:
        inst.stop(timeout=30)
