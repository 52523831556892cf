"""`mosaic up` as a supervisor: a service that exits on its own is started again after a
delay, with the same command and the home's lock; one that keeps exiting makes `up` stop
the instance and fail with SERVICE_KEEPS_EXITING, and one that fails at its first start
stops it at once (SERVICE_FAILED_TO_START); a stop request during a delay still stops
everything at once, and exits 1 since that service was not running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
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


def _up_on_a_home_where(tmp_path: Path, broken: str) -> tuple[Instance, subprocess.Popen[bytes]]:
    """`mosaic --json up` on a home where ``broken`` cannot start (its internal key is
    gone: a CONFIG failure at start-up, every time); the other four start normally."""
    inst = Instance(tmp_path, "b")
    (inst.home / "pki" / "internal" / f"{broken}.key").unlink()
    return inst, _json_up(inst)


def _json_up(inst: Instance) -> subprocess.Popen[bytes]:
    """`mosaic --json up`, its output (and its services') to the instance's log file: a
    pipe nobody reads while the test waits would stop `up` once full."""
    with inst.log_path.open("ab") as log:
        return subprocess.Popen(
            [*MOSAIC, "--home", str(inst.home), "--json", "up"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _crashed_and_broken(tmp_path: Path, broken: str) -> tuple[Instance, subprocess.Popen[bytes]]:
    """`mosaic --json up` of a healthy home, then ``broken`` crashes (SIGKILL) with its
    internal key gone: every start after that fails (CONFIG)."""
    inst = Instance(tmp_path, "b")
    proc = _json_up(inst)
    code, doc, _ = inst.cli("gateway", "doctor", "--wait", "30", timeout=60)
    assert code == 0, doc
    (inst.home / "pki" / "internal" / f"{broken}.key").unlink()
    os.kill(service_pid(proc.pid, broken), signal.SIGKILL)
    return inst, proc


def _wait_for_line(inst: Instance, proc: subprocess.Popen[bytes], text: str) -> None:
    """Until the instance's log has a line holding ``text`` (or `up` ended)."""
    wait_until(
        lambda: text in inst.log_text(),
        60,
        what=text,
        abort=lambda: None if proc.poll() is None else "up ended",
    )


def _stopped_in_order_but(out: str, service: str) -> None:
    """Every other service was stopped, the gateway first."""
    stopped = [
        json.loads(line)["service"]
        for line in out.splitlines()
        if line.startswith("{") and '"msg":"stopped"' in line
    ]
    assert stopped == [s for s in reversed(START_ORDER) if s != service], out[-3000:]


def _communicate(inst: Instance, proc: subprocess.Popen[bytes], timeout: float) -> str:
    """What `up` (and its services) wrote, once it ended."""
    try:
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return inst.log_text()


def test_a_service_that_cannot_start_stops_the_instance_at_once(tmp_path: Path) -> None:
    """A failure at start-up (configuration, a file of the home, a port taken) is not
    started again: the same start would fail the same way, for as long as `up` tried."""
    inst, proc = _up_on_a_home_where(tmp_path, "resource-service")
    out = _communicate(inst, proc, 90)

    assert proc.returncode == 1, out[-3000:]
    assert "service exited; starting it again" not in out
    # One error: the services still starting when they were stopped stopped cleanly.
    [line] = [x for x in _up_lines(out) if x["level"] == "error"]
    assert line["msg"] == "service failed to start; stopping the instance"
    assert line["child"] == "resource-service" and line["exit_status"] == 1
    error = json.loads(out[out.rindex('{\n  "error"') :])["error"]
    assert error["code"] == "SERVICE_FAILED_TO_START"
    assert error["message"].startswith("resource-service exited while starting (exit status 1)")
    assert "mosaic serve resource-service" in error["remediation"]
    # Its own error says why, just above.
    assert "error CONFIG: cannot read" in out and "resource-service.key" in out.replace("\n", "")
    # The others were stopped in order; one still starting may have ended before it could
    # say so (stopped as asked: no error line for it, as checked above).
    stopped = [
        json.loads(line)["service"]
        for line in out.splitlines()
        if line.startswith("{") and '"msg":"stopped"' in line
    ]
    others = [s for s in reversed(START_ORDER) if s != "resource-service"]
    assert stopped == [s for s in others if s in stopped], out[-3000:]
    code, doc, _ = inst.cli("init", "--renew-internal")  # the fix: the key is back
    assert code == 0, doc
    inst.start()  # the home is not locked: a new `up` runs, and every service answers
    inst.stop()
    assert inst.proc is not None and inst.proc.returncode == 0


def test_a_service_that_crashed_and_cannot_start_again_stops_the_instance(
    tmp_path: Path,
) -> None:
    inst, proc = _crashed_and_broken(tmp_path, "resource-service")
    out = _communicate(inst, proc, 90)

    assert proc.returncode == 1, out[-3000:]
    # Started again after 1, 2, 4 and 8 s; the fifth exit ends it, however long its
    # failed starts took.
    retries = [
        line for line in _up_lines(out) if line["msg"] == "service exited; starting it again"
    ]
    assert [r["next_delay_s"] for r in retries] == [1.0, 2.0, 4.0, 8.0]
    assert all(r["child"] == "resource-service" for r in retries)
    assert retries[0]["signal"] == "SIGKILL"
    assert all(r["exit_status"] == 1 for r in retries[1:])
    assert [r["restarts"] for r in retries] == [1, 2, 3, 4]
    error = json.loads(out[out.rindex('{\n  "error"') :])["error"]
    assert error["code"] == "SERVICE_KEEPS_EXITING"
    assert error["message"].startswith("resource-service exited 5 times within 60 s")
    assert "exit status 1" in error["message"] and error["remediation"]
    _stopped_in_order_but(out, "resource-service")
    code, doc, _ = inst.cli("init", "--renew-internal")
    assert code == 0, doc
    inst.start()
    inst.stop()
    assert inst.proc is not None and inst.proc.returncode == 0


def test_a_stop_request_during_a_restart_delay_stops_everything_at_once(tmp_path: Path) -> None:
    inst, proc = _crashed_and_broken(tmp_path, "resource-service")
    # Its second exit (a failed start): the next start would be 2 s away.
    _wait_for_line(inst, proc, '"next_delay_s":2.0')
    proc.send_signal(signal.SIGTERM)
    out = _communicate(inst, proc, 30)

    # Not started again after the stop request: once, after its crash, and no more.
    assert out.count("service started again") == 1, out[-3000:]
    # Exit 1: the instance was not whole when it stopped, and the log says which service.
    assert proc.returncode == 1, out[-3000:]
    [line] = [x for x in _up_lines(out) if x["msg"] == "service was not running at the stop"]
    assert line["child"] == "resource-service"
    _stopped_in_order_but(out, "resource-service")
