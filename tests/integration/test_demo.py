"""`mosaic demo`, the README's main command: two gateways on loopback and the whole flow.
It must finish, clean up after itself, and leave nothing running when interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.procs import sigint_default

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "mosaic.cli", "demo"]
_WORKDIR = re.compile(r"working in (\S+)")


def _workdir(output: str) -> Path:
    match = _WORKDIR.search(output)
    assert match, output
    return Path(match.group(1))


def _homes_running(workdir: Path) -> list[str]:
    """Processes whose command line names one of the demo's homes."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(workdir) in cmdline:
            found.append(cmdline)
    return found


def test_the_demo_runs_the_whole_flow_and_cleans_up() -> None:
    """With --json: the readable steps on stderr, one document on stdout."""
    argv = [sys.executable, "-m", "mosaic.cli", "--json", "demo"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    progress = proc.stderr
    assert "demo complete" in progress
    assert "✗" not in progress
    for step in ("peer add", "query", "revocation"):
        assert step in progress, step
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and "error" not in doc
    assert len(doc["steps"]) >= 20 and all(s["ok"] for s in doc["steps"]), doc["steps"]
    assert [s["step"] for s in doc["steps"]] == list(range(1, len(doc["steps"]) + 1))
    workdir = _workdir(progress)
    assert doc["workdir"] == str(workdir)
    assert not workdir.exists()
    assert _homes_running(workdir) == []


def test_an_interrupted_demo_stops_both_gateways_and_removes_its_homes() -> None:
    proc = subprocess.Popen(
        DEMO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Each line as it is printed: a pipe is block-buffered, and the demo would be over
        # by the time "doctor ok" reached us.
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=sigint_default,
    )
    assert proc.stdout is not None
    output = ""
    deadline = time.monotonic() + 120
    # Interrupt once B is up (its doctor is ok), as an impatient operator would.
    while "doctor ok" not in output and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        output += line
    assert "doctor ok" in output, output
    workdir = _workdir(output)
    os.kill(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    output += rest
    assert proc.returncode == 130, output
    assert "demo interrupted" in output
    assert _homes_running(workdir) == []
    assert not workdir.exists()
