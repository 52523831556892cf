"""Shared helpers for the throw-away test servers (Postgres, Redis, ...).

Everything here binds or connects to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, NoReturn, Self, TypeVar

import pytest

LOOPBACK = "127.0.0.1"

T = TypeVar("T")


class ServiceUnavailable(RuntimeError):
    """A test server cannot be started on this machine (binaries missing, ...).

    Tests catch this and call :func:`require_or_skip`, so the suite skips on a
    developer machine but fails in CI.
    """


class ServerStartError(RuntimeError):
    """A test server was available but failed to start; the message has its log tail."""


class PortInUse(ServerStartError):
    """The chosen port was taken between free_port() and the server's bind()."""


# --------------------------------------------------------------------------- policy


def services_required() -> bool:
    """True in CI (``CI=true``) or when ``MOSAIC_TEST_REQUIRE_SERVICES=1``."""
    ci = os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}
    forced = os.environ.get("MOSAIC_TEST_REQUIRE_SERVICES", "").strip() == "1"
    return ci or forced


def require_or_skip(reason: str) -> NoReturn:
    """Skip the test locally, but fail it in CI: CI must never silently skip services."""
    if services_required():
        pytest.fail(f"{reason} (required here: CI=true or MOSAIC_TEST_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_on_free_port(start: Callable[[int], None], attempts: int = 3) -> int:
    """Call ``start(port)`` with a fresh free port; retry with another one when it
    raises PortInUse (someone took the port meanwhile). Returns the port used."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        try:
            start(port)
        except PortInUse:
            if attempt == attempts:
                raise
            continue
        return port
    raise AssertionError("unreachable")


def raise_if_port_in_use(log: Path, what: str) -> None:
    """Raise PortInUse when a server's log says its bind() failed."""
    text = tail(log, 50)
    if "Address already in use" in text:
        raise PortInUse(f"{what}: port already in use\n{text}")


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    *,
    what: str,
    interval: float = 0.05,
    abort: Callable[[], str | None] | None = None,
) -> None:
    """Poll ``predicate`` until true; raise TimeoutError after ``timeout`` seconds.

    ``abort`` is polled too: when it returns a message (e.g. "process exited with
    code 1"), stop waiting at once and raise ServerStartError with it.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if abort is not None:
            message = abort()
            if message is not None:
                raise ServerStartError(f"{what}: {message}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.1f}s")
        time.sleep(interval)


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until host:port accepts TCP connections, or raise TimeoutError."""
    wait_until(lambda: port_is_open(host, port, timeout=0.2), timeout, what=f"{host}:{port}")


def wait_for_port_closed(host: str, port: int, timeout: float) -> None:
    """Block until host:port refuses TCP connections, or raise TimeoutError."""
    wait_until(
        lambda: not port_is_open(host, port, timeout=0.2), timeout, what=f"{host}:{port} closing"
    )


# --------------------------------------------------------------------------- processes


def running_as_root() -> bool:
    return os.geteuid() == 0


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def as_user_argv(argv: Sequence[str], user: str | None) -> list[str]:
    """Prefix ``argv`` with ``runuser -u USER --`` when ``user`` is given."""
    if user is None:
        return list(argv)
    return ["runuser", "-u", user, "--", *argv]


def _traversable_by_others(directory: Path) -> bool:
    try:
        return all(os.stat(p).st_mode & stat.S_IXOTH for p in (directory, *directory.parents))
    except OSError:
        return False


def private_tempdir(prefix: str, owner: str | None = None) -> Path:
    """A fresh 0700 temp dir; chowned to ``owner`` (a user name) when given.

    When another user must own it, the parent must be traversable by that user: a
    $TMPDIR under /root is not, so fall back to /tmp then.
    """
    base = Path(tempfile.gettempdir())
    if owner is not None and not _traversable_by_others(base):
        base = Path("/tmp")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def chown_to(path: Path, owner: str | None) -> None:
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def remove_tree(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' if unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def clean_env(
    drop_prefixes: Sequence[str] = (), extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """os.environ without variables starting with any of ``drop_prefixes`` (e.g. "PG")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(drop_prefixes))}
    if extra:
        env.update(extra)
    return env


def run_checked(
    argv: Sequence[str],
    *,
    what: str,
    user: str | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    log: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived command (optionally as ``user``) and raise ServerStartError
    with its output (and the tail of ``log``) when it fails or times out.

    Only for commands that exit: a daemon inheriting the captured pipes would make
    this hang (hence ``pg_ctl -l LOGFILE``).
    """
    full = as_user_argv(argv, user)
    try:
        proc = subprocess.run(
            full,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServerStartError(f"{what}: timed out after {timeout}s: {full}") from exc
    if proc.returncode != 0:
        details = f"{proc.stdout}\n{proc.stderr}".strip()
        if log is not None:
            details += f"\n--- {log} ---\n{tail(log)}"
        raise ServerStartError(f"{what} failed (exit {proc.returncode}): {full}\n{details}")
    return proc


def terminate(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """Stop a child process we started: SIGTERM, then SIGKILL after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def run_coroutine_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, even when an event loop is already
    running in this thread (e.g. inside an async test): it runs in a fresh thread."""
    result: list[T] = []
    error: list[BaseException] = []

    def runner() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=runner, name="run_coroutine_sync", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


# --------------------------------------------------------------------------- docker


@functools.cache
def docker_engine_available(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping within ``timeout`` seconds.

    Any failure (no socket, no daemon, permission, slow engine) means no engine.
    ``MOSAIC_TEST_DOCKER=0`` forces local binaries even when an engine is present.
    Cached for the process.
    """
    if os.environ.get("MOSAIC_TEST_DOCKER", "").strip() == "0":
        return False
    try:
        import docker

        client = docker.from_env(timeout=int(max(1, timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def prepare_container(container: Any, port: int) -> Any:
    """Publish ``port`` of a testcontainers container on 127.0.0.1 only (random host
    port) and, unless the user configured it, disable the Ryuk reaper (it publishes
    its own port on all interfaces); our servers remove their container in
    stop()/atexit instead."""
    from testcontainers.core.config import testcontainers_config

    if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ:
        testcontainers_config.ryuk_disabled = True
    # docker-py port binding: (host_ip, host_port); None = any free port.
    container.ports[str(port)] = (LOOPBACK, None)
    return container


def container_host(container: Any) -> str:
    host = str(container.get_container_host_ip())
    return LOOPBACK if host in {"localhost", "0.0.0.0", "::1"} else host


def stop_container(container: Any) -> None:
    if container is not None:
        with contextlib.suppress(Exception):
            container.stop()


# --------------------------------------------------------------------------- lifecycle


class ManagedServer:
    """Start/stop skeleton shared by the test servers.

    Backend choice on start(), first match wins:
      1. ``external``: the URL in the environment variable ``env_var`` (never stopped by us);
      2. ``docker``: a testcontainers container, when a Docker engine answers;
      3. ``local``: the Debian binaries, in a private temp dir, loopback only.

    Subclasses implement ``_start_external(url)``, ``_start_docker()``,
    ``_start_local()`` and an idempotent ``_cleanup()`` that releases whatever
    exists (it also runs after a failed start, and at interpreter exit).
    """

    env_var: ClassVar[str]
    startup_timeout: float

    def __init__(self, *, use_docker: bool | None = None, startup_timeout: float = 60.0) -> None:
        self._use_docker = use_docker
        self.startup_timeout = startup_timeout
        self.backend: str | None = None  # "external" | "docker" | "local" while running

    def start(self) -> Self:
        """Start (or attach to) the server. Raises ServiceUnavailable when this machine
        cannot provide one, ServerStartError when starting it failed."""
        if self.backend is not None:
            return self
        atexit.register(self.stop)
        try:
            url = os.environ.get(self.env_var, "").strip()
            use_docker = self._use_docker
            if use_docker is None:
                use_docker = docker_engine_available()
            if url:
                self._start_external(url)
                self.backend = "external"
            elif use_docker:
                self._start_docker()
                self.backend = "docker"
            else:
                self._start_local()
                self.backend = "local"
        except BaseException:
            self.stop()
            raise
        return self

    def start_or_skip(self) -> Self:
        """start(), but a missing server skips the test locally and fails it in CI
        (see require_or_skip). Start errors other than ServiceUnavailable propagate."""
        try:
            return self.start()
        except ServiceUnavailable as exc:
            require_or_skip(str(exc))

    def stop(self) -> None:
        """Stop the server and remove its files. Idempotent; safe after a failed start."""
        atexit.unregister(self.stop)
        try:
            self._cleanup()
        finally:
            self.backend = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # hooks -------------------------------------------------------------------

    def _start_external(self, url: str) -> None:
        raise NotImplementedError

    def _start_docker(self) -> None:
        raise NotImplementedError

    def _start_local(self) -> None:
        raise NotImplementedError

    def _cleanup(self) -> None:
        raise NotImplementedError


def sigint_default() -> None:
    """preexec_fn for a child a test Ctrl-Cs: SIGINT at its default, as from a terminal. A
    test run started in the background by a non-interactive shell (`make test &`)
    ignores SIGINT, and children inherit an ignored signal across exec."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
