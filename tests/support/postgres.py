"""A throw-away PostgreSQL server for tests.

    with PostgresServer() as pg:   # or: pg = PostgresServer().start_or_skip(); ...; pg.stop()
        url = pg.create_database("grants_test")
        # url == "postgresql://postgres:<pw>@127.0.0.1:<port>/grants_test":
        # asyncpg.connect(url), or SQLAlchemy with the "postgresql+asyncpg" scheme

Backends, first match wins (see procs.ManagedServer):
  * MOSAIC_TEST_POSTGRES_URL set: use that server; databases we created are dropped on stop().
  * a Docker engine answers: testcontainers ``postgres:15`` published on 127.0.0.1 only.
  * otherwise the Debian binaries (/usr/lib/postgresql/<ver>/bin, highest version) in a
    private temp dir, listening on 127.0.0.1 only, with password (scram) auth; as root
    initdb/pg_ctl run through ``runuser -u postgres --`` because initdb refuses root.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from tests.support.procs import (
    LOOPBACK,
    ManagedServer,
    ServerStartError,
    ServiceUnavailable,
    chown_to,
    clean_env,
    container_host,
    prepare_container,
    private_tempdir,
    raise_if_port_in_use,
    remove_tree,
    run_checked,
    run_coroutine_sync,
    running_as_root,
    start_on_free_port,
    stop_container,
    user_exists,
    wait_for_port,
)

ENV_URL = "MOSAIC_TEST_POSTGRES_URL"
DEFAULT_IMAGE = "postgres:15"
SUPERUSER = "postgres"
OS_USER = "postgres"  # the Debian package's system user, used when we run as root
PG_LIB_DIR = Path("/usr/lib/postgresql")  # Debian: <ver>/bin/initdb, deliberately not on PATH
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_ENSURE_HINT = "run: infra/scripts/ensure-system-deps.sh postgres"


def find_initdb() -> Path:
    """The newest /usr/lib/postgresql/<ver>/bin/initdb (Debian keeps it off PATH),
    else one on PATH. Raises ServiceUnavailable when there is none."""

    def version(path: Path) -> tuple[int, ...]:
        parts = re.findall(r"\d+", path.parent.parent.name)
        return tuple(int(p) for p in parts)

    candidates = sorted(PG_LIB_DIR.glob("*/bin/initdb"), key=version)
    if candidates:
        return candidates[-1]
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path)
    raise ServiceUnavailable(
        f"PostgreSQL initdb not found in /usr/lib/postgresql/*/bin or on PATH; {_ENSURE_HINT}"
    )


def url_with_database(url: str, dbname: str) -> str:
    """``url`` with its path (database) replaced by ``dbname``; query kept."""
    return urlsplit(url)._replace(path=f"/{dbname}").geturl()


def _plain_postgres_url(url: str) -> str:
    """Strip a SQLAlchemy driver suffix (postgresql+asyncpg:// -> postgresql://)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in {"postgresql", "postgres"}:
        raise ValueError(f"{ENV_URL} must be a postgresql:// URL, got scheme {parts.scheme!r}")
    return parts._replace(scheme="postgresql").geturl()


def _check_name(name: str) -> str:
    if not _DB_NAME.match(name):
        raise ValueError(f"invalid database name {name!r} (letters, digits, _; max 63)")
    return name


class PostgresServer(ManagedServer):
    """A PostgreSQL server for one test session/module. Context manager, or start()/stop().

    Attributes once started: ``admin_url`` (superuser, database ``postgres``), ``host``,
    ``port``, ``user``, ``password``, ``backend``; ``log_path`` for the local backend.
    """

    env_var = ENV_URL

    def __init__(
        self,
        *,
        image: str = DEFAULT_IMAGE,
        use_docker: bool | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(use_docker=use_docker, startup_timeout=startup_timeout)
        self.image = image
        self.host = LOOPBACK
        self.port = 0
        self.user = SUPERUSER
        self.password = ""
        self.log_path: Path | None = None
        self._admin_url: str | None = None
        self._created: list[str] = []
        # local backend
        self._dir: Path | None = None
        self._data: Path | None = None
        self._bindir: Path | None = None
        self._os_user: str | None = None
        self._env: dict[str, str] = {}
        # docker backend
        self._container: object | None = None

    # -- public API ------------------------------------------------------------

    @property
    def admin_url(self) -> str:
        """postgresql://USER:PASS@HOST:PORT/postgres (superuser)."""
        if self._admin_url is None:
            raise RuntimeError("PostgresServer is not started")
        return self._admin_url

    def url_for(self, dbname: str) -> str:
        """URL of database ``dbname`` on this server (it is not created)."""
        return url_with_database(self.admin_url, _check_name(dbname))

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` and return its URL. Works from sync and async code
        (it runs asyncpg on a private loop in a helper thread)."""
        _check_name(name)
        run_coroutine_sync(self._execute(f'CREATE DATABASE "{name}"'))
        self._created.append(name)
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS ``name`` WITH (FORCE) (disconnects its sessions)."""
        _check_name(name)
        run_coroutine_sync(self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        with contextlib.suppress(ValueError):
            self._created.remove(name)

    async def _execute(self, sql: str) -> None:
        conn = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # -- backends --------------------------------------------------------------

    def _start_external(self, url: str) -> None:
        plain = _plain_postgres_url(url)
        parts = urlsplit(plain)
        self.host = parts.hostname or LOOPBACK
        self.port = parts.port or 5432
        self.user = parts.username or SUPERUSER
        self.password = parts.password or ""
        self._admin_url = plain
        # Fail early and clearly when the configured server does not answer.
        try:
            run_coroutine_sync(self._execute("SELECT 1"))
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise ServerStartError(f"{ENV_URL} server does not answer: {exc!r}") from exc

    def _start_docker(self) -> None:
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # testcontainers < 4.14 kept it here
            from testcontainers.postgres import PostgresContainer

        self.password = secrets.token_hex(16)
        container = PostgresContainer(
            self.image,
            username=SUPERUSER,
            password=self.password,
            dbname="postgres",
            driver=None,
        )
        prepare_container(container, 5432)
        self._container = container
        container.start()
        self.host = container_host(container)
        self.port = int(container.get_exposed_port(5432))
        self._admin_url = self._make_admin_url()

    def _start_local(self) -> None:
        initdb = find_initdb()
        self._bindir = initdb.parent
        if running_as_root():
            if not user_exists(OS_USER):
                raise ServiceUnavailable(
                    f"running as root but there is no '{OS_USER}' user to run initdb as; "
                    + _ENSURE_HINT
                )
            self._os_user = OS_USER
        self._dir = private_tempdir("mosaic-pg-", owner=self._os_user)
        self._data = self._dir / "data"
        sockdir = self._dir / "sock"
        sockdir.mkdir(mode=0o700)
        chown_to(sockdir, self._os_user)
        self.log_path = self._dir / "postgres.log"
        self._env = clean_env(("PG",), {"LC_ALL": "C"})
        self.password = secrets.token_hex(16)

        pwfile = self._dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        chown_to(pwfile, self._os_user)
        try:
            run_checked(
                [
                    str(initdb),
                    "-D",
                    str(self._data),
                    "-U",
                    SUPERUSER,
                    "-A",
                    "scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",  # throw-away cluster: no need to fsync the new files
                ],
                what="initdb",
                user=self._os_user,
                cwd=self._dir,
                env=self._env,
                timeout=self.startup_timeout,
            )
        finally:
            pwfile.unlink(missing_ok=True)

        def start_on(port: int) -> None:
            try:
                self._start_cluster(port)
            except ServerStartError:
                assert self.log_path is not None
                raise_if_port_in_use(self.log_path, "postgres")
                raise

        self.port = start_on_free_port(start_on)
        wait_for_port(LOOPBACK, self.port, timeout=10)
        self.host = LOOPBACK
        self._admin_url = self._make_admin_url()

    def _start_cluster(self, port: int) -> None:
        assert self._dir is not None
        # fsync/synchronous_commit/full_page_writes off: this cluster is thrown away
        # after the tests, crash safety buys nothing and costs a lot of time.
        options = (
            f"-p {port} -k '{self._dir / 'sock'}' -c listen_addresses={LOOPBACK}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=200"
        )
        # -l is required: without it the postmaster inherits our captured stdout/stderr
        # pipes and run() never returns.
        self._pg_ctl(
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            str(int(self.startup_timeout)),
            "start",
            what="pg_ctl start",
        )

    def pause(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data (an outage, for tests of one); local backend
        only. ``mode`` is pg_ctl's: fast, or immediate (as a crash)."""
        if self.backend != "local":
            raise ServiceUnavailable("only a local PostgresServer can be paused")
        self._pg_ctl("-m", mode, "-w", "stop", what="pg_ctl stop")

    def resume(self) -> None:
        """Start a paused server again, on the same port."""
        self._start_cluster(self.port)
        wait_for_port(LOOPBACK, self.port, timeout=10)

    def _pg_ctl(self, *args: str, what: str) -> None:
        assert self._bindir is not None and self._data is not None
        run_checked(
            [str(self._bindir / "pg_ctl"), "-D", str(self._data), *args],
            what=what,
            user=self._os_user,
            cwd=self._dir,
            env=self._env,
            timeout=self.startup_timeout + 10,
            log=self.log_path,
        )

    def _make_admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@{self.host}:{self.port}/postgres"

    def _cleanup(self) -> None:
        try:
            if self.backend == "external":
                for name in list(self._created):
                    with contextlib.suppress(Exception):
                        self.drop_database(name)
            self._stop_local()
            stop_container(self._container)
        finally:
            self._container = None
            self._created = []
            self._admin_url = None
            remove_tree(self._dir)
            self._dir = None
            self._data = None

    def _stop_local(self) -> None:
        if self._data is None or not (self._data / "postmaster.pid").exists():
            return
        try:
            # immediate: no shutdown checkpoint; the data dir is deleted right after.
            self._pg_ctl("-m", "immediate", "-w", "stop", what="pg_ctl stop")
        except ServerStartError:
            self._kill_postmaster()

    def _kill_postmaster(self) -> None:
        assert self._data is not None
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self._data / "postmaster.pid").read_text().splitlines()[0])
            if pid > 1:
                os.kill(pid, signal.SIGKILL)
