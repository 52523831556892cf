"""`mosaic up` as a supervisor: a service that exits on its own is started again after a
delay, with the same command and the home's lock; one that keeps exiting makes `up` stop
the instance and fail with SERVICE_KEEPS_EXITING; a stop request during a delay still
stops everything at once, and exits 1 since that service was not running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from mosaic.config import START_ORDER
from tests.support.instances import MOSAIC, Instance, service_pid
from tests.support.procs import wait_until

pytestmark = pytest.mark.slow


def _up_lines(text: str) -> list[dict[str, Any]]:
    """The log lines `up` itself wrote (not its services')."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{") and '"service":"mosaic-up"' in line:
            lines.append(json.loads(line))
    return lines


def _pid_or_none(parent: int, service: str) -> int | None:
    try:
        return service_pid(parent, service)
    except AssertionError:
        return None


@pytest.mark.parametrize("service", ["resource-service", "federation-gateway"])
def test_a_killed_service_is_started_again_while_up_keeps_running(
    tmp_path: Path, service: str
) -> None:
    inst = Instance(tmp_path, "b")
    inst.start()
    assert inst.proc is not None
    up_pid = inst.proc.pid
    try:
        killed = service_pid(up_pid, service)
        os.kill(killed, signal.SIGKILL)
        wait_until(
            lambda: _pid_or_none(up_pid, service) not in (None, killed),
            30,
            what=f"{service} started again",
            abort=lambda: None if inst.proc is None or inst.proc.poll() is None else "up ended",
        )
        # Every service answers again, the one started again included, without a new `up`.
        code, doctor, _ = inst.cli("gateway", "doctor", "--wait", "30", timeout=60)
        assert code == 0, json.dumps(doctor)[:2000] + inst.log_tail()
        assert inst.proc.poll() is None
        # `up` still holds the home: a second one is refused, naming the first.
        code, doc, _ = inst.cli("up", timeout=30)
        assert code == 1 and doc["error"]["code"] == "INSTANCE_RUNNING", doc
        assert f"pid {up_pid}" in doc["error"]["message"]
        exited, started = _up_lines(inst.log_text())
        assert exited["level"] == "warning" and exited["child"] == service
        assert exited["signal"] == "SIGKILL" and exited["exit_status"] is None
        assert exited["restarts"] == 1 and exited["next_delay_s"] == 1.0
        assert started["child"] == service and started["pid"] == service_pid(up_pid, service)
    finally:
        inst.stop()
    # The restarted service stops in its turn like the others: a clean stop.
    assert inst.proc.returncode == 0, inst.log_tail()


def _up_on_a_home_where(tmp_path: Path, broken: str) -> tuple[Instance, subprocess.Popen[str]]:
    """`mosaic --json up` on a home where ``broken`` cannot start (its internal key is
    gone: a CONFIG failure at start-up, every time); the other four start normally."""
    inst = Instance(tmp_path, "b")
    (inst.home / "pki" / "internal" / f"{broken}.key").unlink()
    proc = subprocess.Popen(
        [*MOSAIC, "--home", str(inst.home), "--json", "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return inst, proc


def _read_until(proc: subprocess.Popen[str], found: Any, timeout: float) -> list[str]:
    """``proc``'s output lines until ``found(line)`` is true (or it ends)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if found(line) or time.monotonic() > deadline:
            break
    return lines


def test_a_service_that_keeps_exiting_stops_the_instance_with_an_error(tmp_path: Path) -> None:
    inst, proc = _up_on_a_home_where(tmp_path, "resource-service")
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 1, out[-3000:]
    # Started again after 1, 2, 4 and 8 s; the fifth exit within 60 s ends it.
    retries = [
        line for line in _up_lines(out) if line["msg"] == "service exited; starting it again"
    ]
    assert [r["next_delay_s"] for r in retries] == [1.0, 2.0, 4.0, 8.0]
    assert all(r["child"] == "resource-service" and r["exit_status"] == 1 for r in retries)
    assert [r["restarts"] for r in retries] == [1, 2, 3, 4]
    error = json.loads(out[out.rindex('{\n  "error"') :])["error"]
    assert error["code"] == "SERVICE_KEEPS_EXITING"
    assert error["message"].startswith("resource-service exited 5 times within 60 s")
    assert "exit status 1" in error["message"] and error["remediation"]
    # Every other service was stopped, the gateway first, and the home is free again.
    stopped = [
        json.loads(line)["service"]
        for line in out.splitlines()
        if line.startswith("{") and '"msg":"stopped"' in line
    ]
    assert stopped == [s for s in reversed(START_ORDER) if s != "resource-service"]
    code, doc, _ = inst.cli("init", "--renew-internal")  # the fix: the key is back
    assert code == 0, doc
    inst.start()  # the home is not locked: a new `up` runs, and every service answers
    inst.stop()
    assert inst.proc is not None and inst.proc.returncode == 0


def test_a_stop_request_during_a_restart_delay_stops_everything_at_once(tmp_path: Path) -> None:
    _, proc = _up_on_a_home_where(tmp_path, "resource-service")
    try:
        # The fourth exit: the next start would be 8 s away.
        lines = _read_until(proc, lambda line: '"next_delay_s":8.0' in line, 60)
        assert '"next_delay_s":8.0' in lines[-1], "".join(lines[-20:])
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - asked
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert took < 6.0, took  # the four running services' own stop, not the 8 s delay
    assert "service started again" not in out  # resource-service was not started again
    # Exit 1: the instance was not whole when it stopped, and the log says which service.
    assert proc.returncode == 1, out[-3000:]
    [line] = [x for x in _up_lines(out) if x["msg"] == "service was not running at the stop"]
    assert line["child"] == "resource-service"
    stopped = [
        json.loads(line)["service"]
        for line in out.splitlines()
        if line.startswith("{") and '"msg":"stopped"' in line
    ]
    assert stopped == [s for s in reversed(START_ORDER) if s != "resource-service"]
