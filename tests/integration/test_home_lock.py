"""One home, one `mosaic up`, one `mosaic init` at a time: the second is refused at once
with a CLI error naming who holds the home, and the first is left unharmed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca_service.keys import load_federation_intermediate, root_fingerprint
from mosaic.config import SERVICES, START_ORDER, load_config
from mosaic.runtime import load_sealer
from tests.support.instances import MOSAIC, Instance, cli, free_port_base, service_pid

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    inst = Instance(tmp_path_factory.mktemp("running"), "b")
    inst.start()
    yield inst
    inst.stop()


def test_second_up_is_refused_and_names_the_running_instance(running: Instance) -> None:
    assert running.proc is not None
    code, doc, err = running.cli("up", timeout=30)

    assert code == 1, (doc, err)
    error = doc["error"]
    assert error["code"] == "INSTANCE_RUNNING"
    assert "'b'" in error["message"] and str(running.home) in error["message"]
    assert f"pid {running.proc.pid}" in error["message"]
    assert error["remediation"]
    assert "Traceback" not in err
    # The refused `up` started nothing: the running instance still answers, and its log
    # has no service that failed to start.
    code, doctor, _ = running.cli("gateway", "doctor")
    assert code == 0, doctor
    assert "Traceback" not in running.log_text()


def test_second_up_without_json_says_what_to_do(running: Instance) -> None:
    code, out, err = running.cli("up", json_out=False, timeout=30)

    assert code == 1
    assert "INSTANCE_RUNNING" in err and "what to do" in err
    assert "Traceback" not in err + out


def test_a_killed_up_does_not_block_the_next_one(tmp_path: Path) -> None:
    inst = Instance(tmp_path, "b")
    inst.start()
    assert inst.proc is not None
    # A crash of the whole tree (`up` and its services): nothing removes the lock file.
    os.killpg(inst.proc.pid, signal.SIGKILL)
    inst.proc.wait()
    try:
        inst.start()  # raises unless every service comes up and the doctor is ok
    finally:
        inst.stop()


def test_services_left_by_a_killed_up_are_named_with_their_pids_in_stop_order(
    tmp_path: Path,
) -> None:
    """`up` alone killed (its services, which hold the lock, still run): a new `up` says
    so, and names each service's pid, the gateway first, so the operator can stop them
    in the order that lets their work finish (not all at once)."""
    inst = Instance(tmp_path, "b")
    inst.start()
    assert inst.proc is not None
    pids = {service: service_pid(inst.proc.pid, service) for service in SERVICES}
    inst.proc.send_signal(signal.SIGKILL)  # `up` only, not its process group
    inst.proc.wait()
    try:
        code, doc, err = inst.cli("up", timeout=30)
        assert code == 1, (doc, err)
        assert doc["error"]["code"] == "INSTANCE_RUNNING"
        remediation = doc["error"]["remediation"]
        named = [remediation.index(f"`kill {pids[s]}` ({s})") for s in reversed(START_ORDER)]
        assert named == sorted(named)
        # Each command quoted once, to be copied as written (a stray backtick followed
        # every service name but the last).
        assert remediation.count("`") == 2 * len(START_ORDER), remediation
    finally:
        for service in reversed(START_ORDER):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pids[service], signal.SIGKILL)


# `mosaic init` paused half-way through writing the home (seal secret and admin token
# written, PKI not yet): it says "writing" on stderr and goes on when a line arrives on
# stdin. Only the timing is changed; everything else is the real command.
_PAUSED_INIT = """
import sys
import mosaic.cli.instance as instance
from mosaic.cli.main import run

issue_internal_pki = instance.issue_internal_pki

def paused(*args, **kwargs):
    print("writing", file=sys.stderr, flush=True)
    sys.stdin.readline()
    return issue_internal_pki(*args, **kwargs)

instance.issue_internal_pki = paused
sys.argv[0] = "mosaic"
run()
"""


def test_init_of_a_home_being_written_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "c"
    port_base = str(free_port_base())
    argv = [MOSAIC[0], "-c", _PAUSED_INIT, "--home", str(home), "--json", "init"]
    first = subprocess.Popen(
        [*argv, "--name", "c", "--port-base", port_base],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stderr is not None and first.stderr.readline() == "writing\n"
        code, doc, err = cli(home, "init", "--name", "other", "--port-base", port_base)
    finally:
        out, first_err = first.communicate("go\n", timeout=60)

    assert code == 1, (doc, err)
    assert doc["error"]["code"] == "HOME_BUSY"
    assert f"pid {first.pid}" in doc["error"]["message"] and "'c'" in doc["error"]["message"]
    assert "Traceback" not in err
    assert first.returncode == 0, (out, first_err)
    # The home is the first init's, whole: the root it reported is the one on disk, and the
    # CA key sealed in it opens with the seal secret in it and belongs to its certificate.
    config = load_config(home)
    assert config.name == "c"
    assert root_fingerprint(config) == json.loads(out)["federation_root_sha256"]
    intermediate, key = load_federation_intermediate(config, load_sealer(config))
    assert intermediate.public_key() == key.public_key()
    code, doc, _ = cli(home, "init", "--name", "c")
    assert code == 1 and doc["error"]["code"] == "CONFIG"


def test_serve_of_a_service_already_running_is_refused_and_leaves_it_serving(
    running: Instance,
) -> None:
    """`serve` takes no lock (compose runs one per container), so it is the ports that
    refuse a second copy, before it touches the database the first one serves from."""
    port = load_config(running.home).ports.internal["resource-service"]
    code, doc, err = running.cli("serve", "resource-service", timeout=60)

    assert code == 1, (doc, err)
    assert doc["error"]["code"] == "CONFIG"
    assert f":{port} (internal)" in doc["error"]["message"]
    assert "stop it" in doc["error"]["remediation"]
    assert "Traceback" not in err
    code, doctor, _ = running.cli("gateway", "doctor")
    assert code == 0, doctor


def test_serve_with_a_port_taken_leaves_the_database_unmigrated(tmp_path: Path) -> None:
    inst = Instance(tmp_path, "b")
    config = load_config(inst.home)
    database = config.data_dir / (SERVICES["resource-service"].module + ".db")
    with socket.create_server(("127.0.0.1", config.ports.metrics["resource-service"])):
        code, doc, err = inst.cli("serve", "resource-service", timeout=60)

    assert code == 1, (doc, err)
    assert "(metrics)" in doc["error"]["message"]
    tables: list[str] = []
    if database.exists():
        with contextlib.closing(sqlite3.connect(database)) as db:
            tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master")]
    assert tables == []
