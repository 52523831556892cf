"""What an operator sees when a command cannot do its work: a stopped gateway, a long
error through a pipe, Ctrl-C while the gateway works. An initialised instance whose
services are not running (a silent listener stands in for a gateway that does not answer
where a test needs one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mosaic.config import load_config
from tests.support.instances import Instance, cli


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
