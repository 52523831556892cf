"""The doctor's advice for a service that does not answer: "start it" when nothing runs
the home, but not while a `mosaic up` of the home runs (a service that keeps exiting, or
is still starting), where starting it again is no help and up's output says why.

No service is started: this test holds the home's lock as `up` does, and no listener
answers, which is what the doctor sees while up restarts a service that keeps exiting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from mosaic.cli.home_lock import lock_home, running_holder
from mosaic.cli.instance import create_instance
from mosaic.cli.main import app
from tests.support.instances import free_port_base


def _reachable_rows(home: Path) -> list[dict[str, Any]]:
    result = CliRunner().invoke(app, ["--home", str(home), "--json", "gateway", "doctor"])
    assert result.exit_code == 1, result.output
    rows = [c for c in json.loads(result.output)["checks"] if c["name"] == "reachable"]
    assert rows and not any(c["ok"] for c in rows)
    return rows


def test_doctor_says_start_it_when_nothing_runs_the_home(tmp_path: Path) -> None:
    config = create_instance(tmp_path / "home", name="d", port_base=free_port_base())
    assert running_holder(config.home) is None
    for row in _reachable_rows(config.home):
        assert row["remediation"].startswith("start it: `mosaic up`"), row


def test_doctor_points_at_up_while_up_runs_and_a_service_does_not_answer(
    tmp_path: Path,
) -> None:
    config = create_instance(tmp_path / "home", name="d", port_base=free_port_base())
    held = lock_home(config.home, "up", "d")
    try:
        rows = _reachable_rows(config.home)
    finally:
        held.release()
    for row in rows:
        assert "start it" not in row["remediation"], row
        assert "`mosaic up` (pid" in row["remediation"]
        assert "keeps exiting" in row["remediation"] and "up's output" in row["remediation"]
    # Released: an old holder's text no longer counts.
    assert running_holder(config.home) is None
