"""Server and client interceptors: request id, access log, metrics, error mapping,
authorization, deadlines.

A ``grpc.aio.ServerInterceptor`` sees only the method name and metadata, not the
TLS identity, so authorization wraps the handler it returns: the check then runs
with the request's own context (FIELD-NOTES: "grpc.aio and mTLS").
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from mosaic.errors import ServiceError, internal_error, invalid_argument
from mosaic.logs import request_id_var
from mosaic.metrics import MethodStats
from mosaic.rpc.options import DEFAULT_DEADLINE_S

log = logging.getLogger("mosaic.rpc")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

# Called with (full method name, context) before the handler; raises ServiceError to refuse.
Authorizer = Callable[[str, grpc.aio.ServicerContext], Awaitable[None]]
# Called with an exception a handler let out; the error the caller gets when it is an
# expected failure of a dependency (mosaic.db.database_unavailable_error), else None.
ExpectedFailure = Callable[[BaseException], ServiceError | None]


def _none_expected(_exc: BaseException) -> ServiceError | None:
    return None


def new_request_id() -> str:
    return uuid.uuid4().hex


# The caller's request id (when trusted and well-formed), from the interceptor to the
# handler it returned: grpc.aio runs both in the RPC's own task, so its own context.
_incoming_request_id_var: ContextVar[str | None] = ContextVar(
    "mosaic_incoming_request_id", default=None
)


REQUEST_MALFORMED = "REQUEST_MALFORMED"


class MalformedRequest:
    """A request body that does not parse as the method's message (truncated, a string
    field that is not UTF-8, ...). Handed to the methods that asked for it (to audit and
    rate-limit the attempt before refusing it); every other method refuses it as
    INVALID_ARGUMENT ``REQUEST_MALFORMED`` instead of gRPC's UNKNOWN."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def SerializeToString(self, *, deterministic: bool = False) -> bytes:
        """The bytes as received (so a query hash still identifies the request)."""
        return self.raw


def malformed_request_error() -> ServiceError:
    return invalid_argument(REQUEST_MALFORMED, "the request could not be parsed")


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return MalformedRequest(data)

    return parse


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler of one listener with the service's cross-cutting behaviour.

    The wrapped handler is built once per method and reused: nothing in it is per call
    (the caller's request id travels in a context variable), so a request pays a dict
    lookup here instead of new closures and a new handler object.
    """

    def __init__(
        self,
        *,
        authorize: Authorizer | None,
        trust_request_id: bool,
        take_malformed: frozenset[str] = frozenset(),
        expected_failure: ExpectedFailure = _none_expected,
    ) -> None:
        self._authorize = authorize
        self._expected_failure = expected_failure
        self._trust_request_id = trust_request_id
        # Full method names whose handlers take a MalformedRequest themselves.
        self._take_malformed = take_malformed
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        _incoming_request_id_var.set(self._incoming_request_id(handler_call_details))
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        stats = MethodStats(method)
        # A single request message that does not parse becomes a MalformedRequest (the
        # wrappers refuse it, or hand it to a handler that takes it); streamed requests
        # keep gRPC's own parsing.
        deserialize = handler.request_deserializer
        tolerant = _tolerant(deserialize) if deserialize else None
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, stats),
                request_deserializer=tolerant,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, stats),
                request_deserializer=tolerant,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method, stats),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method, stats),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _incoming_request_id(self, details: grpc.HandlerCallDetails) -> str | None:
        if not self._trust_request_id:
            return None
        for key, value in details.invocation_metadata or ():
            if key == REQUEST_ID_HEADER and isinstance(value, str) and _REQUEST_ID_RE.match(value):
                return value
        return None

    async def _begin(self, method: str, context: grpc.aio.ServicerContext) -> str:
        rid = _incoming_request_id_var.get() or new_request_id()
        request_id_var.set(rid)
        # Trailing metadata rides on the status frame: no extra send on the hot path.
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
        if self._authorize is not None:
            await self._authorize(method, context)
        return rid

    def _wrap_unary(
        self, behavior: Callable[..., Awaitable[Any]], method: str, stats: MethodStats
    ) -> Callable[..., Awaitable[Any]]:
        refuse_malformed = method not in self._take_malformed

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            rid = ""
            try:
                rid = await self._begin(method, context)
                if refuse_malformed and type(request) is MalformedRequest:
                    raise malformed_request_error()
                response = await behavior(request, context)
            except BaseException as exc:
                await self._fail(exc, method, stats, context, rid, started)
                raise  # unreachable: _fail always raises
            _completed(method, stats, grpc.StatusCode.OK, started)
            return response

        return wrapped

    def _wrap_stream(
        self, behavior: Callable[..., AsyncIterator[Any]], method: str, stats: MethodStats
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            rid = ""
            try:
                rid = await self._begin(method, context)
                if type(request) is MalformedRequest:
                    raise malformed_request_error()
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                await self._fail(exc, method, stats, context, rid, started)
                raise
            _completed(method, stats, grpc.StatusCode.OK, started)

        return wrapped

    async def _fail(
        self,
        exc: BaseException,
        method: str,
        stats: MethodStats,
        context: grpc.aio.ServicerContext,
        rid: str,
        started: float,
    ) -> None:
        """Turn an exception into the status the caller gets; always raises."""
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            # The caller went away or its deadline passed: nobody reads a status, but count it.
            stats.observe(grpc.StatusCode.CANCELLED, started)
            raise exc
        if isinstance(exc, grpc.aio.AbortError):  # the handler aborted with its own status
            stats.observe(context.code() or grpc.StatusCode.UNKNOWN, started)
            raise exc
        error = exc if isinstance(exc, ServiceError) else None
        if error is None and isinstance(exc, Exception):
            error = self._expected_failure(exc)
            if error is not None:
                # A dependency failed (the database is down): the caller learns only that,
                # and the request id; what failed, and how, stays in our log.
                log.warning("%s failed: %s", method, error.reason, exc_info=exc)
        if error is None:
            # Unexpected: the traceback stays in our log; the caller learns only the request id.
            log.error("unhandled exception in %s", method, exc_info=exc)
            rid = rid or new_request_id()
            error = internal_error(rid)
        _completed(method, stats, error.code, started, reason=error.reason)
        await context.abort_with_status(_with_request_id(error.to_status(), rid))
        raise exc


def _with_request_id(status: grpc.Status, rid: str) -> grpc.Status:
    """The status with the request id added to its trailing metadata (abort replaces it)."""
    if not rid:
        return status
    metadata = (*(status.trailing_metadata or ()), (REQUEST_ID_HEADER, rid))
    return status._replace(trailing_metadata=metadata)


def response_request_id(metadata: Any) -> str:
    """The request id a server returned (in trailing metadata), or ""."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            return value
    return ""


# The access log's refusals: the first of each (method, code, reason) is logged at INFO,
# then the others within REFUSAL_LOG_WINDOW_S of it only at DEBUG, counted; at the
# window's end one INFO line says how many were not logged (``suppressed``). A caller
# refused again and again (a peer over its rate limit, a guesser of tokens, a revoked
# peer) then costs two lines per window and kind of refusal, not one per request; the
# metrics and, on the gateway, the audit log still have every request.
REFUSAL_LOG_WINDOW_S = 5.0
REFUSALS_SUPPRESSED = "rpc refusals not logged"

_RefusalKey = tuple[str, str, str]


class _RefusalLog:
    """Which refusals the access log shows one by one (see REFUSAL_LOG_WINDOW_S)."""

    def __init__(self) -> None:
        # The windows open now, by kind of refusal: how many were not logged in each.
        self._suppressed: dict[_RefusalKey, int] = {}

    def admit(self, key: _RefusalKey) -> bool:
        """Whether to log this refusal at INFO; else it is counted for the summary."""
        if key in self._suppressed:
            self._suppressed[key] += 1
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not under grpc.aio: nothing to close the window, log all
            return True
        self._suppressed[key] = 0
        # An empty context: the summary is no one request's, so it carries no request id.
        loop.call_later(REFUSAL_LOG_WINDOW_S, self._close, key, context=contextvars.Context())
        return True

    def _close(self, key: _RefusalKey) -> None:
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            method, code, reason = key
            log.info(
                REFUSALS_SUPPRESSED,
                extra={
                    "method": method,
                    "code": code,
                    "reason": reason,
                    "suppressed": suppressed,
                    "window_s": REFUSAL_LOG_WINDOW_S,
                },
            )


_refusals = _RefusalLog()


def _completed(
    method: str, stats: MethodStats, code: grpc.StatusCode, started: float, reason: str = ""
) -> None:
    """A call ended with ``code``: count it, and log it (successes at DEBUG; refusals at
    INFO, each kind at most once per REFUSAL_LOG_WINDOW_S and the rest at DEBUG)."""
    stats.observe(code, started)
    if code == grpc.StatusCode.OK:
        level = logging.DEBUG
    elif _refusals.admit((method, code.name, reason)):
        level = logging.INFO
    else:
        level = logging.DEBUG
    if log.isEnabledFor(level):
        log.log(
            level,
            "rpc",
            extra={
                "method": method,
                "code": code.name,
                "reason": reason,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )


class _ClientCallDefaults:
    """Adds a deadline to calls that have none and forwards the current request id."""

    def __init__(self, default_deadline_s: float) -> None:
        self._deadline = default_deadline_s

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        timeout = details.timeout if details.timeout is not None else self._deadline
        metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
        rid = request_id_var.get()
        if rid and REQUEST_ID_HEADER not in metadata:
            metadata.add(REQUEST_ID_HEADER, rid)
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )


class UnaryUnaryDefaults(_ClientCallDefaults, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class UnaryStreamDefaults(_ClientCallDefaults, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


def client_interceptors(
    default_deadline_s: float = DEFAULT_DEADLINE_S,
) -> list[grpc.aio.ClientInterceptor]:
    return [UnaryUnaryDefaults(default_deadline_s), UnaryStreamDefaults(default_deadline_s)]
