"""A FederationServicer wired to fake dependencies: every outbound call (resource-service,
grants-service, ca-service) goes to one function of the test, by method name. For the
parts of the serving path that a real resource-service or grants-service never provokes:
a source that breaks its contract, a call that fails after taking effect."""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import grpc

from federation_gateway.authz import GrantView, decide
from federation_gateway.federation import FederationServicer
from federation_gateway.ratelimit import LocalGcra, RateLimiter
from federation_gateway.unfinished import UnfinishedWork
from mosaic.federation.v1 import grants_pb2

GRANT_ID = str(uuid.uuid4())
PEER_ID = str(uuid.uuid4())
SUBJECT = str(uuid.uuid4())

# (method name, request) -> response, or an awaitable of one; raise an AioRpcError
# (rpc_error) to fail the call.
Backend = Callable[[str, Any], Any]


def grant_view(
    max_rows: int = 100, cert_serial: str = "01ab", grant_id: str = GRANT_ID
) -> GrantView:
    """An active grant on tasks for SUBJECT, bound to the active inbound peer PEER_ID."""
    view = decide(
        grants_pb2.GetGrantResponse(
            grant=grants_pb2.Grant(
                id=grant_id,
                peer_id=PEER_ID,
                subject_user_id=SUBJECT,
                status=grants_pb2.GRANT_STATUS_ACTIVE,
                scope_json=json.dumps({"resources": ["tasks"], "max_rows_per_query": max_rows}),
                cert_serial=cert_serial,
            ),
            peer=grants_pb2.Peer(
                id=PEER_ID,
                direction=grants_pb2.PEER_DIRECTION_INBOUND,
                state=grants_pb2.PEER_STATE_ACTIVE,
                cert_serial=cert_serial,
            ),
        )
    )
    assert isinstance(view, GrantView)
    return view


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class _Method:
    def __init__(self, name: str, backend: Backend) -> None:
        self._name = name
        self._backend = backend

    async def __call__(self, request: Any, timeout: float | None = None, **_: Any) -> Any:
        answer = self._backend(self._name, request)
        return await answer if inspect.isawaitable(answer) else answer


class FakeChannel:
    """Stands in for a grpc.aio.Channel under generated stubs: calls go to ``backend``."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _Method:
        return _Method(method.rsplit("/", 1)[1], self._backend)

    unary_stream = stream_unary = stream_stream = unary_unary


def federation_servicer(
    backend: Backend, *, renew_limiter: RateLimiter | None = None
) -> FederationServicer:
    channel = FakeChannel(backend)
    runtime = SimpleNamespace(
        channels=SimpleNamespace(get=lambda _name: channel),
        sealer=SimpleNamespace(derive_key=lambda _purpose: b"k" * 32),
        config=SimpleNamespace(rate_limit=SimpleNamespace(per_second=10.0, burst=20)),
    )
    gateway = SimpleNamespace(
        runtime=runtime,
        revoked=None,
        grant_cache=SimpleNamespace(invalidate=lambda **_: None),
        grant_limiter=None,
        renew_limiter=renew_limiter or LocalGcra(per_second=1000.0, burst=1000),
        audit=None,
        unfinished=UnfinishedWork(),
    )
    return FederationServicer(gateway)  # type: ignore[arg-type]
