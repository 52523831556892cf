"""Real instances for tests: `mosaic init` + `mosaic up` as a process tree, driven by the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from mosaic.config import find_free_port_base

REPO = Path(__file__).resolve().parents[2]
MOSAIC = [sys.executable, "-m", "mosaic.cli"]


def free_port_base() -> int:
    """A port base whose whole block is free right now, from this test worker's share of
    the range (MOSAIC_PORT_RANGE, set by tests/conftest.py for the `mosaic` processes the
    tests start too)."""
    return find_free_port_base()


def worker_port_range(low: int = 10000, high: int = 32700) -> tuple[int, int]:
    """[low, high) split evenly between pytest-xdist's workers (all of it without xdist):
    a base one worker picked is not listening yet while that instance starts, and another
    worker must not pick it meanwhile. Wider than the product's default range, below the
    ephemeral ports, so that each worker has over a hundred blocks."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2:
        return low, high
    share = (high - low) // count // 100 * 100
    start = low + int(worker[2:]) * share
    return start, start + share


def cli(
    home: Path,
    *args: str,
    json_out: bool = True,
    timeout: float = 60,
    check: bool = False,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> tuple[int, Any, str]:
    """Run `mosaic --home HOME [--json] ARGS`; return (exit code, parsed stdout, stderr)."""
    argv = [*MOSAIC, "--home", str(home), *(["--json"] if json_out else []), *args]
    proc = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    out: Any = proc.stdout
    if json_out and proc.stdout.strip():
        try:
            out = json.loads(proc.stdout)
        except ValueError:
            out = proc.stdout
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mosaic {' '.join(args)} exited {proc.returncode}: {proc.stdout} {proc.stderr}"
        )
    return proc.returncode, out, proc.stderr


class Instance:
    """One instance home and, once started, its `mosaic up` process tree."""

    def __init__(
        self, root: Path, name: str, *, db: str = "", extra_init: tuple[str, ...] = ()
    ) -> None:
        self.home = root / name
        self.name = name
        self.port_base = free_port_base()
        self.log_path = root / f"{name}-up.log"
        self.proc: subprocess.Popen[bytes] | None = None
        code, out, err = cli(
            self.home,
            "init",
            "--name",
            name,
            "--port-base",
            str(self.port_base),
            *(["--db", db] if db else []),
            *extra_init,
        )
        if code != 0:
            raise AssertionError(f"mosaic init failed: {out} {err}")
        self.init_doc = out

    def cli(self, *args: str, **kw: Any) -> tuple[int, Any, str]:
        return cli(self.home, *args, **kw)

    def launch(self) -> None:
        """`mosaic up` in the background, its output to the log file; no waiting."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*MOSAIC, "--home", str(self.home), "up"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self, wait: float = 30.0) -> None:
        """launch(), then wait for the doctor to say every service is ok."""
        self.launch()
        code, doc, _ = self.cli("gateway", "doctor", "--wait", str(wait), timeout=wait + 30)
        if code != 0:
            self.stop()
            raise AssertionError(
                f"instance {self.name} not healthy: {json.dumps(doc)[:3000]}\n"
                f"log tail: {self.log_tail()}"
            )

    def stop(self, timeout: float = 15.0) -> float:
        """SIGTERM the process tree; return how long it took to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return time.monotonic() - started

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ServiceProcesses:
    """Each service of an instance as its own `mosaic serve` process, as compose runs them,
    so the test decides when one that was killed starts again (`mosaic up` would restart
    it by itself after its own delay)."""

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, *services: str) -> None:
        for service in services:
            log = (self.inst.log_path.parent / f"{self.inst.name}-{service}.log").open("ab")
            self.procs[service] = subprocess.Popen(
                [*MOSAIC, "--home", str(self.inst.home), "serve", service],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()

    def kill(self, service: str) -> None:
        """SIGKILL: the service goes away without a goodbye, as in a crash."""
        proc = self.procs.pop(service)
        proc.kill()
        proc.wait(15)

    def stop(self, service: str, timeout: float = 15.0) -> None:
        proc = self.procs.pop(service)
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for service in reversed(list(self.procs)):
            self.stop(service)


def service_pid(parent: int, service: str) -> int:
    """The pid of ``mosaic serve SERVICE`` started by the `mosaic up` ``parent``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == parent and argv[-3:-1] == [b"serve", service.encode()]:
            return int(entry.name)
    raise AssertionError(f"no {service} under pid {parent}")


def grant_and_token(
    b: Instance, scope: Path, *, user: str, peer_name: str = "a"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`grant create` on B for ``user`` and the peer ``peer_name``, then `grant token`."""
    code, grant, err = b.cli(
        "federation",
        "grant",
        "create",
        "--user",
        user,
        "--peer-name",
        peer_name,
        "--scope",
        str(scope),
    )
    assert code == 0, (grant, err)
    code, token, err = b.cli("federation", "grant", "token", grant["id"])
    assert code == 0, (token, err)
    return grant, token


def enroll(
    a: Instance, b: Instance, scope: Path, *, user: str, name: str, peer_name: str = "a"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A grant on B, and A's `peer add` of its URL under ``name``: (grant, A's peer)."""
    grant, token = grant_and_token(b, scope, user=user, peer_name=peer_name)
    code, peer, err = a.cli(
        "federation", "peer", "add", token["enrollment_url"], "--name", name, timeout=120
    )
    assert code == 0, (peer, err)
    return grant, peer


def internal_channel_as(home: Path, target: str, identity: str) -> grpc.aio.Channel:
    """An aio channel to ``target``'s internal listener presenting ``identity``'s certificate.

    Create it inside a running event loop; close it with ``await channel.close()``.
    """
    from mosaic.config import load_config
    from mosaic.rpc.channels import internal_client_credentials, secure_channel

    config = load_config(home)
    return secure_channel(
        config.internal_address(target),
        internal_client_credentials(config, identity),
        server_name=target,
    )
