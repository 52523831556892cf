"""The test-infrastructure servers really start, isolate databases, and really stop."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

import tests.support.postgres as pg_support
import tests.support.redis_server as redis_support
from tests.support.postgres import PostgresServer
from tests.support.procs import (
    free_port,
    port_is_open,
    require_or_skip,
    wait_for_port,
)
from tests.support.redis_server import RedisServer, redis_pings

pytestmark = pytest.mark.timeout(120)


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- postgres


@pytest.mark.postgres
async def test_postgres_two_isolated_databases_and_clean_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MOSAIC_TEST_POSTGRES_URL", raising=False)
    server = PostgresServer().start_or_skip()
    data_dir: Path | None = None
    try:
        assert server.admin_url.startswith("postgresql://postgres:")
        assert server.host == "127.0.0.1"
        port = server.port
        data_dir = server._dir  # local backend only
        first, second = _unique("alpha"), _unique("beta")
        url1 = server.create_database(first)
        url2 = server.create_database(second)
        assert url1.endswith(f"/{first}") and url2.endswith(f"/{second}")

        conn1 = await asyncpg.connect(url1, timeout=10)
        conn2 = await asyncpg.connect(url2, timeout=10)
        try:
            assert await conn1.fetchval("select 1") == 1
            assert await conn2.fetchval("select 1") == 1
            assert await conn1.fetchval("select current_database()") == first
            assert await conn2.fetchval("select current_database()") == second
            await conn1.execute("create table only_in_first (id int)")
            seen = "select to_regclass('public.only_in_first') is not null"
            assert await conn1.fetchval(seen) is True
            assert await conn2.fetchval(seen) is False
            # Loopback only.
            listen = await conn1.fetchval("show listen_addresses")
            assert server.backend != "local" or listen == "127.0.0.1"
        finally:
            await conn1.close()
            await conn2.close()
    finally:
        server.stop()

    assert server.backend is None
    assert not port_is_open("127.0.0.1", port)
    if data_dir is not None:
        assert not data_dir.exists()
    with pytest.raises(RuntimeError):
        _ = server.admin_url
    server.stop()  # idempotent


@pytest.mark.postgres
async def test_postgres_env_override_uses_existing_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MOSAIC_TEST_POSTGRES_URL", raising=False)
    with PostgresServer().start_or_skip() as real:
        # SQLAlchemy-style driver suffix is accepted.
        monkeypatch.setenv(
            "MOSAIC_TEST_POSTGRES_URL",
            real.admin_url.replace("postgresql://", "postgresql+asyncpg://"),
        )
        shared = PostgresServer().start()
        assert shared.backend == "external"
        assert shared.port == real.port
        name = _unique("ext")
        url = shared.create_database(name)
        conn = await asyncpg.connect(url, timeout=10)
        assert await conn.fetchval("select current_database()") == name
        await conn.close()
        shared.stop()
        # Stopping an external server drops what we created but leaves the server up.
        assert port_is_open("127.0.0.1", real.port)
        admin = await asyncpg.connect(real.admin_url, timeout=10)
        try:
            exists = await admin.fetchval(
                "select count(*) from pg_database where datname = $1", name
            )
        finally:
            await admin.close()
        assert exists == 0


def test_postgres_rejects_bad_database_names() -> None:
    server = PostgresServer()
    with pytest.raises(ValueError):
        server.create_database('x"; drop database postgres; --')


# --------------------------------------------------------------------------- redis


@pytest.mark.redis
async def test_redis_ping_set_get_and_clean_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOSAIC_TEST_REDIS_URL", raising=False)
    server = RedisServer().start_or_skip()
    try:
        assert server.url == f"redis://{server.host}:{server.port}/0"
        assert server.host == "127.0.0.1"
        port = server.port
        data_dir = server._dir
        client = aioredis.Redis.from_url(server.url)
        try:
            assert await client.ping() is True
            assert await client.set("mosaic:test", "value") is True
            assert await client.get("mosaic:test") == b"value"
            if server.backend == "local":
                config = await client.config_get("bind")
                assert config["bind"] == "127.0.0.1"
                assert (await client.config_get("save"))["save"] == ""
        finally:
            await client.aclose()
    finally:
        server.stop()

    assert server.backend is None
    assert not port_is_open("127.0.0.1", port)
    assert not redis_pings("127.0.0.1", port)
    if data_dir is not None:
        assert not data_dir.exists()
    server.stop()  # idempotent


@pytest.mark.redis
def test_redis_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOSAIC_TEST_REDIS_URL", raising=False)
    with RedisServer().start_or_skip() as real:
        monkeypatch.setenv("MOSAIC_TEST_REDIS_URL", real.url)
        with RedisServer() as shared:
            assert shared.backend == "external"
            assert shared.url == real.url
        assert redis_pings("127.0.0.1", real.port)  # external server left running


# --------------------------------------------------------------------------- procs


def test_free_port_and_wait_for_port() -> None:
    port = free_port()
    assert not port_is_open("127.0.0.1", port)
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", port, timeout=0.2)


@pytest.mark.parametrize(
    ("env", "outcome"),
    [
        ({}, pytest.skip.Exception),
        ({"CI": "true"}, pytest.fail.Exception),
        ({"MOSAIC_TEST_REQUIRE_SERVICES": "1"}, pytest.fail.Exception),
    ],
)
def test_require_or_skip_policy(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], outcome: type[BaseException]
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("MOSAIC_TEST_REQUIRE_SERVICES", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(outcome):
        require_or_skip("no server here")


@pytest.mark.parametrize(
    ("ci", "outcome"), [(None, pytest.skip.Exception), ("true", pytest.fail.Exception)]
)
@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_missing_binaries_skip_locally_but_fail_in_ci(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    kind: str,
    ci: str | None,
    outcome: type[BaseException],
) -> None:
    monkeypatch.delenv("MOSAIC_TEST_REQUIRE_SERVICES", raising=False)
    monkeypatch.delenv("MOSAIC_TEST_POSTGRES_URL", raising=False)
    monkeypatch.delenv("MOSAIC_TEST_REDIS_URL", raising=False)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    monkeypatch.setattr(pg_support, "PG_LIB_DIR", tmp_path)
    monkeypatch.setattr(redis_support, "FALLBACK_BINARY", tmp_path / "redis-server")
    server: PostgresServer | RedisServer = (
        PostgresServer(use_docker=False) if kind == "postgres" else RedisServer(use_docker=False)
    )
    with pytest.raises(outcome) as info:
        server.start_or_skip()
    assert f"infra/scripts/ensure-system-deps.sh {kind}" in str(info.value)
    assert server.backend is None
