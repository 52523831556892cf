"""The server bootstrap's error mapping, request ids and metrics, through a real mTLS
listener."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import sqlalchemy
from google.rpc import error_details_pb2, status_pb2
from grpc.aio import _server as aio_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY
from sqlalchemy import exc as sa_exc

from mosaic.cli.instance import create_instance
from mosaic.config import InstanceConfig
from mosaic.db import DatabaseUnreachable
from mosaic.errors import MAX_VIOLATIONS, RemoteError, invalid_argument
from mosaic.federation.v1 import common_pb2, common_pb2_grpc
from mosaic.metrics import MetricsListener
from mosaic.rpc.acl import acl_authorizer
from mosaic.rpc.channels import (
    internal_client_credentials,
    internal_server_credentials,
    secure_channel,
)
from mosaic.rpc.interceptors import REQUEST_ID_HEADER, UnaryUnaryDefaults
from mosaic.rpc.server import Listener
from tests.support.instances import free_port_base

SECRET = "hunter2-database-password"


class Exploding(common_pb2_grpc.DiagnosticsServicer):
    def __init__(self, mode: str, error: Exception | None = None) -> None:
        self.mode = mode
        self.error = error

    async def SelfCheck(
        self, request: common_pb2.SelfCheckRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.SelfCheckResponse:
        if self.error is not None:
            raise self.error
        if self.mode == "crash":
            raise RuntimeError(f"cannot connect with {SECRET}")
        if self.mode == "abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not now")
        if self.mode == "slow":
            await asyncio.sleep(30)
        if self.mode == "expected":
            raise invalid_argument(
                "THING_INVALID",
                "the thing is wrong",
                remediation="send a better thing",
                violations=[("items[0].id", "not a UUID")],
            )
        return common_pb2.SelfCheckResponse(service="ok")


@pytest.fixture
def config(tmp_path: Path) -> InstanceConfig:
    return create_instance(tmp_path / "home", name="t", port_base=free_port_base())


@contextlib.asynccontextmanager
async def _served(
    config: InstanceConfig, mode: str, identity: str, error: Exception | None = None
) -> AsyncIterator[grpc.aio.Channel]:
    """A listener serving Exploding(mode, error), and a channel to it presenting
    ``identity``."""
    listener = await _serve(config, mode, error)
    channel = secure_channel(
        config.internal_address("ca-service"),
        internal_client_credentials(config, identity),
        server_name="ca-service",
    )
    try:
        yield channel
    finally:
        await channel.close()
        await listener.stop(0)


async def _serve(config: InstanceConfig, mode: str, error: Exception | None = None) -> Listener:
    port = config.ports.internal["ca-service"]
    listener = Listener(
        "internal",
        f"127.0.0.1:{port}",
        internal_server_credentials(config, "ca-service"),
        authorize=acl_authorizer(config, {}),
    )
    listener.add(
        common_pb2_grpc.add_DiagnosticsServicer_to_server,
        Exploding(mode, error),
        "mosaic.federation.v1.Diagnostics",
    )
    await listener.start()
    return listener


async def test_unexpected_exception_reaches_caller_as_generic_internal(
    config: InstanceConfig,
) -> None:
    async with _served(config, "crash", "operator") as channel:
        call = common_pb2_grpc.DiagnosticsStub(channel).SelfCheck(
            common_pb2.SelfCheckRequest(), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INTERNAL
        details = err.value.details() or ""
        assert SECRET not in details and "RuntimeError" not in details
        remote = RemoteError.from_rpc_error(err.value)
        assert remote.reason == "INTERNAL"
        request_id = dict(await call.trailing_metadata())[REQUEST_ID_HEADER]
        assert request_id in details and remote.metadata["request_id"] == request_id


# ---- a database that fails: UNAVAILABLE when it is down, INTERNAL when the code is wrong ----


def _sqlalchemy_error(tmp_path: Path, setup: str, statement: str) -> Exception:
    """The error SQLAlchemy raises for ``statement`` on a real SQLite file (made ready with
    ``setup``), whose path holds SECRET."""
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / SECRET}.db")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(setup)
        with engine.begin() as conn:
            conn.exec_driver_sql(statement)
    except Exception as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError(f"{statement!r} did not fail")


def _sqlite_cannot_open(tmp_path: Path) -> Exception:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/{SECRET}/missing-dir/x.db")
    try:
        engine.connect()
    except sa_exc.OperationalError as exc:
        return exc
    raise AssertionError("opened")


def _sqlite_full(tmp_path: Path) -> Exception:
    """A real SQLITE_FULL: the file may not grow past its page limit."""
    conn = sqlite3.connect(tmp_path / "full.db")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute("PRAGMA max_page_count = 4")
    try:
        conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("not full")


def _sqlite_locked(tmp_path: Path) -> Exception:
    """A real SQLITE_BUSY: another connection holds the write lock past the busy timeout."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, timeout=0)
    try:
        other.execute("INSERT INTO t VALUES (1)")
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        other.close()
        holder.close()
    raise AssertionError("not locked")


def _postgres(error: Exception, invalidated: bool = False) -> Exception:
    """``error`` as SQLAlchemy's asyncpg dialect hands it on (the SQLSTATE on ``orig``)."""
    return sa_exc.DBAPIError(
        f"SELECT 1 -- {SECRET}", None, error, connection_invalidated=invalidated
    )


DATABASE_DOWN = {
    "sqlite-cannot-open": _sqlite_cannot_open,
    "sqlite-full": _sqlite_full,
    "sqlite-locked": _sqlite_locked,
    "connect-refused": lambda _: DatabaseUnreachable("cannot connect to the database"),
    "pool-timeout": lambda _: sa_exc.TimeoutError(f"QueuePool limit reached {SECRET}"),
    "connection-dropped": lambda _: _postgres(
        Exception("connection was closed in the middle of operation"), invalidated=True
    ),
    "postgres-starting": lambda _: asyncpg.exceptions.CannotConnectNowError(
        "the database system is starting up"
    ),
    "postgres-disk-full": lambda _: _postgres(asyncpg.exceptions.DiskFullError("no space")),
    "postgres-shutdown": lambda _: _postgres(asyncpg.exceptions.AdminShutdownError("bye")),
    "postgres-standby": lambda _: _postgres(
        asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction")
    ),
    "postgres-serialization": lambda _: _postgres(asyncpg.exceptions.SerializationError("retry")),
    "postgres-deadlock": lambda _: _postgres(asyncpg.exceptions.DeadlockDetectedError("dl")),
}

PROGRAMMING_ERRORS = {
    "integrity": lambda p: _sqlalchemy_error(
        p, "CREATE TABLE t (x PRIMARY KEY); INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1)"
    ),
    "bad-sql": lambda p: _sqlalchemy_error(p, "SELECT 1", "SELEC 1"),
    "no-such-table": lambda p: _sqlalchemy_error(p, "SELECT 1", "SELECT * FROM missing"),
    "postgres-unique": lambda _: _postgres(asyncpg.exceptions.UniqueViolationError("dup")),
    "postgres-syntax": lambda _: _postgres(asyncpg.exceptions.PostgresSyntaxError("syntax")),
}


@pytest.mark.parametrize("case", sorted(DATABASE_DOWN))
async def test_a_database_that_is_down_reaches_the_caller_as_unavailable(
    config: InstanceConfig, tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Down, unreachable, full or locked: an expected failure of a dependency. The caller
    gets UNAVAILABLE DATABASE_UNAVAILABLE with a retry delay and the request id, nothing of
    the statement or the URL; the service log has the exception."""
    error = DATABASE_DOWN[case](tmp_path)
    async with _served(config, "ok", "operator", error) as channel:
        call = common_pb2_grpc.DiagnosticsStub(channel).SelfCheck(
            common_pb2.SelfCheckRequest(), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        request_id = dict(await call.trailing_metadata())[REQUEST_ID_HEADER]
    remote = RemoteError.from_rpc_error(err.value)
    assert (remote.code, remote.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
    assert remote.retry_after_s is not None and remote.retry_after_s > 0
    assert SECRET not in str(remote) and SECRET not in remote.remediation
    assert "SELECT" not in remote.message and "sqlite" not in remote.message.lower()
    assert request_id
    assert any(r.exc_info and r.exc_info[1] is error for r in caplog.records)


@pytest.mark.parametrize("case", sorted(PROGRAMMING_ERRORS))
async def test_a_wrong_statement_stays_internal(
    config: InstanceConfig, tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A constraint or bad SQL is a bug, not an outage: INTERNAL, traceback in our log."""
    error = PROGRAMMING_ERRORS[case](tmp_path)
    async with _served(config, "ok", "operator", error) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await common_pb2_grpc.DiagnosticsStub(channel).SelfCheck(
                common_pb2.SelfCheckRequest(), timeout=5
            )
    remote = RemoteError.from_rpc_error(err.value)
    assert (remote.code, remote.reason) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert SECRET not in str(remote)
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[1] is error]
    assert logged and logged[0].levelname == "ERROR"


async def test_service_error_carries_reason_remediation_and_violations(
    config: InstanceConfig,
) -> None:
    async with _served(config, "expected", "operator") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await common_pb2_grpc.DiagnosticsStub(channel).SelfCheck(
                common_pb2.SelfCheckRequest(), timeout=5
            )
        remote = RemoteError.from_rpc_error(err.value)
        assert remote.code == grpc.StatusCode.INVALID_ARGUMENT
        assert remote.reason == "THING_INVALID"
        assert remote.remediation == "send a better thing"
        assert remote.violations == [("items[0].id", "not a UUID")]


async def test_unknown_method_is_refused_closed(config: InstanceConfig) -> None:
    """A method missing from the ACL is refused even for an instance identity."""
    async with _served(config, "ok", "grants-service") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await common_pb2_grpc.DiagnosticsStub(channel).SelfCheck(
                common_pb2.SelfCheckRequest(), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_each_call_gets_its_own_request_id_back(config: InstanceConfig) -> None:
    """A caller's well-formed request id comes back on its own call, concurrent calls each get
    their own, a malformed one is replaced, and a call without one gets a fresh one."""
    async with _served(config, "ok", "operator") as channel:
        stub = common_pb2_grpc.DiagnosticsStub(channel)

        async def returned_id(sent: str | None) -> str:
            metadata = ((REQUEST_ID_HEADER, sent),) if sent is not None else None
            call = stub.SelfCheck(common_pb2.SelfCheckRequest(), timeout=5, metadata=metadata)
            await call
            return str(dict(await call.trailing_metadata())[REQUEST_ID_HEADER])

        sent = [f"caller-{n:04d}" for n in range(24)]
        assert await asyncio.gather(*(returned_id(s) for s in sent)) == sent
        replaced = await returned_id("bad id; DROP TABLE")
        fresh = [await returned_id(None) for _ in range(2)]
        assert replaced not in sent and "DROP" not in replaced
        assert all(len(f) == 32 and f not in sent for f in fresh)
        assert len({replaced, *fresh}) == 3


async def test_health_and_reflection_are_served_wrapped_like_every_service(
    config: InstanceConfig,
) -> None:
    """Health and reflection go through the same wrapping as every service (they answer with a
    request id), and reflection lists what the listener serves."""
    async with _served(config, "ok", "operator") as channel:
        call = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert (await call).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert len(dict(await call.trailing_metadata())[REQUEST_ID_HEADER]) == 32

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = [
            reply
            async for reply in stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        ]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {
            "mosaic.federation.v1.Diagnostics",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= names


async def test_only_the_listeners_own_services_are_registered_methods(
    config: InstanceConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpc.aio waits on one pending accept per registered method for every incoming call:
    health and reflection (answered above) must not add theirs to every call's cost."""
    registered: list[str] = []
    register = aio_server.Server.add_registered_method_handlers

    def spy(server: aio_server.Server, service: str, handlers: Any) -> None:
        registered.append(service)
        register(server, service, handlers)

    monkeypatch.setattr(aio_server.Server, "add_registered_method_handlers", spy)
    listener = await _serve(config, "ok")
    await listener.stop(0)
    assert registered == ["mosaic.federation.v1.Diagnostics"]


def test_outbound_calls_get_a_default_deadline() -> None:
    defaults = UnaryUnaryDefaults(3.0)
    details = grpc.aio.ClientCallDetails("/x.Y/Z", None, None, None, None)
    assert defaults._details(details).timeout == 3.0
    explicit = grpc.aio.ClientCallDetails("/x.Y/Z", 0.5, None, None, None)
    assert defaults._details(explicit).timeout == 0.5


# ---- metrics ----------------------------------------------------------------------------

DIAGNOSTICS = {"grpc_service": "mosaic.federation.v1.Diagnostics", "grpc_method": "SelfCheck"}


def handled(code: str) -> float:
    return (
        REGISTRY.get_sample_value("grpc_server_handled_total", {**DIAGNOSTICS, "grpc_code": code})
        or 0.0
    )


def timed() -> float:
    return REGISTRY.get_sample_value("grpc_server_handling_seconds_count", DIAGNOSTICS) or 0.0


@pytest.mark.parametrize(
    ("mode", "code", "timeout"),
    [
        ("ok", "OK", 5.0),
        ("expected", "INVALID_ARGUMENT", 5.0),
        ("crash", "INTERNAL", 5.0),
        ("abort", "FAILED_PRECONDITION", 5.0),
        ("slow", "CANCELLED", 0.3),  # the caller's deadline passes while the handler waits
    ],
)
async def test_every_call_is_counted_once_with_the_code_the_caller_got(
    config: InstanceConfig, mode: str, code: str, timeout: float
) -> None:
    before, before_timed = handled(code), timed()
    async with _served(config, mode, "operator") as channel:
        call = common_pb2_grpc.DiagnosticsStub(channel).SelfCheck(
            common_pb2.SelfCheckRequest(), timeout=timeout
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call
        got = await call.code()
        for _ in range(50):  # the server may finish a cancelled call after the caller gave up
            if handled(code) > before:
                break
            await asyncio.sleep(0.05)
    assert got.name == (code if code != "CANCELLED" else "DEADLINE_EXCEEDED")
    assert handled(code) == before + 1
    assert timed() == before_timed + 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_metrics_listener_serves_prometheus_text_and_refuses_a_taken_port() -> None:
    listener = MetricsListener("ca-service", "127.0.0.1", _free_port())
    listener.start()
    try:
        with urllib.request.urlopen(f"http://{listener.address}/metrics", timeout=5) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain")
            body = reply.read().decode()
        assert 'mosaic_build_info{service="ca-service"' in body
        assert "process_cpu_seconds_total" in body
        assert "_created" not in body  # no per-series creation gauges doubling the scrape
        taken = MetricsListener("ca-service", "127.0.0.1", listener.port)
        with pytest.raises(
            OSError, match=rf"cannot listen on 127.0.0.1:{listener.port} \(metrics\)"
        ):
            taken.start()
    finally:
        await listener.stop()
    with pytest.raises(OSError):  # stopped: nothing answers any more
        urllib.request.urlopen(f"http://{listener.address}/metrics", timeout=2)


async def test_a_second_listener_on_a_taken_port_is_refused(config: InstanceConfig) -> None:
    """gRPC lets a second server share a port through SO_REUSEPORT unless told not to: a
    second copy of a service (or an older version left running) would take half its calls."""
    async with _served(config, "ok", "operator") as channel:
        with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1:\d+ \(internal\)"):
            await _serve(config, "crash")
        reply = await common_pb2_grpc.DiagnosticsStub(channel).SelfCheck(
            common_pb2.SelfCheckRequest(), timeout=5
        )
        assert reply.service == "ok"  # the first listener still answers every call


def test_a_status_carries_at_most_fifty_violations_and_counts_the_rest() -> None:
    """Violations travel in a trailer that gRPC caps at a few KiB: an import with hundreds
    of bad rows must still reach the caller as a readable error, not a bare one."""
    error = invalid_argument(
        "ITEMS_INVALID", "bad rows", violations=[(f"items[{i}].id", "bad") for i in range(300)]
    )
    status = status_pb2.Status.FromString(
        dict(error.to_status().trailing_metadata)["grpc-status-details-bin"]
    )
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    assert len(bad.field_violations) == MAX_VIOLATIONS
    assert (bad.field_violations[-1].field, bad.field_violations[-1].description) == (
        "...",
        "251 more",
    )
    assert bad.field_violations[0].field == "items[0].id"


@pytest.mark.parametrize("text", ["x" * 5000, "é" * 5000])
def test_a_status_of_long_texts_stays_within_grpcs_trailer_limit(text: str) -> None:
    """A scope listing hundreds of team names made a message and violations so long that
    the caller got RESOURCE_EXHAUSTED ("metadata size exceeds hard limit") instead."""
    error = invalid_argument(
        "SCOPE_INVALID",
        "; ".join(f"team {i}: {text[:40]} is not a UUID" for i in range(400)),
        violations=[(f"scope.filters.tasks.include_teams[{i}]{text}", text) for i in range(400)],
    )
    status = error.to_status()
    size = len(status.details.encode()) * 3  # grpc-message is percent-encoded
    size += sum(len(k) + len(v) * 4 // 3 for k, v in status.trailing_metadata)  # base64
    assert size < 8 * 1024
    details = status_pb2.Status.FromString(
        dict(status.trailing_metadata)["grpc-status-details-bin"]
    )
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in details.details)
    last = bad.field_violations[-1]
    assert last.field == "..."
    assert last.description == f"{400 - (len(bad.field_violations) - 1)} more"
    assert bad.field_violations[0].field.startswith("scope.filters.tasks.include_teams[0]")
    assert details.message.endswith("…")


def test_fifty_short_violations_are_all_kept() -> None:
    error = invalid_argument("X", "bad", violations=[(f"f{i}", "bad") for i in range(50)])
    details = status_pb2.Status.FromString(
        dict(error.to_status().trailing_metadata)["grpc-status-details-bin"]
    )
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in details.details)
    assert [v.field for v in bad.field_violations] == [f"f{i}" for i in range(50)]
