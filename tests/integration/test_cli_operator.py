"""What an operator sees when a command cannot do its work: a stopped gateway, a long
error through a pipe, Ctrl-C while the gateway works. An initialised instance whose
services are not running (a silent listener stands in for a gateway that does not answer
where a test needs one)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mosaic.config import load_config
from tests.support.instances import MOSAIC, Instance, cli
from tests.support.procs import sigint_default

URL = "mosaic-enroll://127.0.0.1:1/v1/redeem?token=" + "a" * 43 + "&ca_sha256=" + "b" * 64


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield Instance(tmp_path_factory.mktemp("cli-operator"), "b").home


def test_a_long_error_through_a_pipe_stays_on_its_line(home: Path) -> None:
    """stderr was cut at 80 columns when it was not a terminal, so an error and its
    remediation broke over several lines (ADMIN-CLI: error text stays on one line)."""
    value = "x" * 300
    code, out, err = cli(home, "federation", "grant", "list", "--status", value, json_out=False)
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert lines[0].startswith("error USAGE: --status must be one of"), err
    assert lines[0].endswith(f"got '{value}'"), err
    assert len(lines) == 1, err


@pytest.mark.parametrize("json_out", [True, False])
def test_a_stopped_gateway_is_named_with_its_admin_address_and_how_to_start_it(
    home: Path, json_out: bool
) -> None:
    """A command against an instance that is not running printed gRPC's own text
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:…")."""
    address = load_config(str(home)).admin_address
    code, out, err = cli(home, "federation", "peer", "list", json_out=json_out)
    assert code == 1, (out, err)
    if json_out:
        error = out["error"]
        text = error["message"] + "\n" + error["remediation"]
        assert error["code"] == "UNAVAILABLE"
    else:
        text = err
        assert err.startswith("error UNAVAILABLE: "), err
    said = f"gateway of instance 'b' is not running or not reachable at its admin address {address}"
    assert said in text
    assert "mosaic up" in text
    assert "failed to connect to all addresses" not in text
    assert "ipv4:" not in text


@pytest.fixture
def silent_gateway(home: Path) -> Iterator[None]:
    """A listener on the admin address that accepts connections and never answers: the
    CLI waits on it as on a gateway busy with the call."""
    host, port = load_config(str(home)).admin_address.rsplit(":", 1)
    with socket.create_server((host, int(port))):
        yield


def _interrupt(home: Path, *args: str, json_out: bool) -> tuple[int, str, str]:
    """Run the CLI, Ctrl-C it (SIGINT) once it is waiting for the gateway."""
    argv = [*MOSAIC, "--home", str(home), *(["--json"] if json_out else []), *args]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a test run started in the background (`make test &`) ignores
        # SIGINT, and its children would inherit that and never see the Ctrl-C.
        preexec_fn=sigint_default,
    )
    try:
        # Long enough to be in the call (the silent listener holds it there), short
        # enough for the call's own deadlines (20 s and more) not to end it first.
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(3.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


@pytest.mark.usefixtures("silent_gateway")
def test_ctrl_c_during_peer_add_says_the_gateway_may_still_add_the_peer(home: Path) -> None:
    """Ctrl-C while `peer add` waited exited 130 with no output at all, also with --json,
    while A's gateway went on and stored the peer."""
    code, out, err = _interrupt(home, "federation", "peer", "add", URL, json_out=True)
    assert code == 130, (out, err)
    error = json.loads(out)["error"]
    assert error["code"] == "INTERRUPTED"
    assert "waiting for the gateway" in error["message"]
    assert "may still finish adding the peer" in error["remediation"]
    assert "mosaic federation peer list" in error["remediation"]
    assert "a" * 43 not in out + err  # the token stays out of what is printed
    assert "Traceback" not in err


@pytest.mark.usefixtures("silent_gateway")
def test_ctrl_c_is_an_error_line_without_json_and_names_what_to_check(home: Path) -> None:
    grant = "3f2a1c9e-8b10-4f7c-9d55-0d5e7b0e5c2a"
    code, out, err = _interrupt(home, "federation", "grant", "revoke", grant, json_out=False)
    assert code == 130, (out, err)
    lines = err.splitlines()
    assert lines[0] == "error INTERRUPTED: interrupted while waiting for the gateway", err
    assert lines[1].startswith("what to do the grant may have been revoked"), err
    assert f"mosaic federation grant show {grant}" in lines[1]


@pytest.mark.usefixtures("silent_gateway")
def test_ctrl_c_during_a_read_says_nothing_was_changed(home: Path) -> None:
    code, out, _ = _interrupt(home, "federation", "grant", "list", json_out=True)
    assert code == 130
    assert json.loads(out)["error"] == {
        "code": "INTERRUPTED",
        "message": "interrupted while waiting for the gateway",
        "remediation": "nothing was changed; run the command again",
    }


def _help(*args: str) -> str:
    proc = subprocess.run(
        [*MOSAIC, *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
        check=True,
    )
    return proc.stdout


def test_help_pages_read_as_text_and_say_what_defaults_mean() -> None:
    """`demo --help` showed reST ``markup``; `init --help` did not say --name is needed and
    gave both --step-ca-provisioner options texts that looked alike once cut; `--limit`
    showed [default: 0] without saying what 0 asks for."""
    assert "``" not in _help("demo")
    init = " ".join(_help("init").split())
    assert "Required, except with --renew-internal" in init
    assert "the JWK provisioner's name" in init and "private key file (JWK" in init
    assert "0: the peer's default page" in " ".join(
        _help("federation", "query", "b", "list").split()
    )
