"""A throw-away Redis server for tests.

    with RedisServer() as rs:             # or rs = RedisServer().start_or_skip()
        client = redis.asyncio.Redis.from_url(rs.url)   # redis://127.0.0.1:P/0

Backends, first match wins (see procs.ManagedServer):
  * MOSAIC_TEST_REDIS_URL set: use that server (never flushed or stopped by us).
  * a Docker engine answers: testcontainers ``redis:7`` published on 127.0.0.1 only.
  * otherwise Debian's ``redis-server`` as a child process bound to 127.0.0.1, no
    persistence (``--save '' --appendonly no``), its output in a log file.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from tests.support.procs import (
    LOOPBACK,
    ManagedServer,
    ServerStartError,
    ServiceUnavailable,
    container_host,
    prepare_container,
    private_tempdir,
    raise_if_port_in_use,
    remove_tree,
    start_on_free_port,
    stop_container,
    tail,
    terminate,
    wait_until,
)

ENV_URL = "MOSAIC_TEST_REDIS_URL"
DEFAULT_IMAGE = "redis:7"
_ENSURE_HINT = "run: infra/scripts/ensure-system-deps.sh redis"


FALLBACK_BINARY = Path("/usr/bin/redis-server")  # Debian's, in case PATH is minimal


def find_redis_server() -> Path:
    """redis-server on PATH (else Debian's). Raises ServiceUnavailable when absent."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    if FALLBACK_BINARY.exists():
        return FALLBACK_BINARY
    raise ServiceUnavailable(f"redis-server not found on PATH; {_ENSURE_HINT}")


def redis_pings(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a Redis server on host:port answers PING (no auth) with +PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(ManagedServer):
    """A Redis server for one test session/module. Context manager, or start()/stop().

    Attributes once started: ``url`` (redis://HOST:PORT/0), ``host``, ``port``,
    ``backend``; ``log_path`` for the local backend.
    """

    env_var = ENV_URL

    def __init__(
        self,
        *,
        image: str = DEFAULT_IMAGE,
        use_docker: bool | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(use_docker=use_docker, startup_timeout=startup_timeout)
        self.image = image
        self.host = LOOPBACK
        self.port = 0
        self.log_path: Path | None = None
        self._url: str | None = None
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._container: Any = None

    @property
    def url(self) -> str:
        """redis://HOST:PORT/0"""
        if self._url is None:
            raise RuntimeError("RedisServer is not started")
        return self._url

    # -- backends --------------------------------------------------------------

    def _start_external(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(f"{ENV_URL} must be a redis:// URL, got scheme {parts.scheme!r}")
        self.host = parts.hostname or LOOPBACK
        self.port = parts.port or 6379
        self._url = url

    def _start_docker(self) -> None:
        from testcontainers.community.redis import RedisContainer

        container = RedisContainer(self.image)
        prepare_container(container, 6379)
        self._container = container
        container.start()  # waits until PING answers
        self.host = container_host(container)
        self.port = int(container.get_exposed_port(6379))
        self._url = f"redis://{self.host}:{self.port}/0"

    def _start_local(self) -> None:
        binary = find_redis_server()
        self._dir = private_tempdir("mosaic-redis-")
        self.log_path = self._dir / "redis.log"

        def start_on(port: int) -> None:
            assert self._dir is not None and self.log_path is not None
            self._close_local()
            self._log = self.log_path.open("ab")
            argv = [
                str(binary),
                "--port",
                str(port),
                "--bind",
                LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self._dir),
            ]
            self._proc = subprocess.Popen(
                argv,
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            proc = self._proc

            def exited() -> str | None:
                code = proc.poll()
                return None if code is None else f"redis-server exited with code {code}"

            try:
                wait_until(
                    lambda: redis_pings(LOOPBACK, port),
                    self.startup_timeout,
                    what="redis-server",
                    abort=exited,
                )
            except (ServerStartError, TimeoutError) as exc:
                self._close_local()
                raise_if_port_in_use(self.log_path, "redis-server")
                log = tail(self.log_path)
                raise ServerStartError(f"{exc}\n--- {self.log_path} ---\n{log}") from exc

        self.port = start_on_free_port(start_on)
        self.host = LOOPBACK
        self._url = f"redis://{LOOPBACK}:{self.port}/0"

    def _close_local(self) -> None:
        try:
            terminate(self._proc)
        finally:
            self._proc = None
            if self._log is not None:
                self._log.close()
                self._log = None

    def _cleanup(self) -> None:
        try:
            self._close_local()
            stop_container(self._container)
        finally:
            self._container = None
            self._url = None
            remove_tree(self._dir)
            self._dir = None
