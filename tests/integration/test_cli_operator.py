"""What an operator sees when a command cannot do its work: a stopped gateway, a long
error through a pipe, Ctrl-C while the gateway works. An initialised instance whose
services are not running (a silent listener stands in for a gateway that does not answer
where a test needs one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
