"""Shared fixtures: throw-away Postgres and Redis servers, started once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mosaic.config import PORT_RANGE_ENV
from tests.support.instances import worker_port_range
from tests.support.postgres import PostgresServer
from tests.support.procs import ServerStartError, ServiceUnavailable, require_or_skip
from tests.support.redis_server import RedisServer


def pytest_configure(config: pytest.Config) -> None:
    """Each test worker starts instances on port blocks of its own share of the range, in
    this process and in the `mosaic` processes it starts (`mosaic demo` picks its own)."""
    low, high = worker_port_range()
    os.environ[PORT_RANGE_ENV] = f"{low}-{high}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
    except (ServiceUnavailable, ServerStartError) as exc:
        require_or_skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
    except (ServiceUnavailable, ServerStartError) as exc:
        require_or_skip(f"redis-server unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


_db_counter = 0


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's Postgres server."""
    global _db_counter
    _db_counter += 1
    # Test workers may share one server (MOSAIC_TEST_POSTGRES_URL): names carry the worker.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return postgres_server.create_database(f"mosaic_test_{worker}_{_db_counter}")


@pytest.fixture
def tmp_home(tmp_path: Path) -> Path:
    return tmp_path
