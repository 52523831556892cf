"""One error taxonomy: a gRPC status code, a stable reason, a message, a remediation.

Servers raise :class:`ServiceError`; the server interceptor turns it into a status
with ``google.rpc.ErrorInfo`` (reason, domain, metadata incl. remediation),
``google.rpc.BadRequest`` (field violations) and ``google.rpc.RetryInfo``.
Clients turn any ``grpc.aio.AioRpcError`` back into a :class:`RemoteError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "mosaic.federation"
REMEDIATION_KEY = "remediation"
# What one status carries. The message travels twice (grpc-message, percent-encoded, and
# in grpc-status-details-bin, base64) and the details once, all in trailers that gRPC
# caps at 8 KiB (16 KiB hard; past it the caller gets RESOURCE_EXHAUSTED instead): so the
# message is cut, each violation is cut, and violations stop at a count and a size, the
# rest counted in a last entry.
MAX_MESSAGE_BYTES = 600
MAX_VIOLATIONS = 50
MAX_VIOLATION_FIELD_CHARS = 100
MAX_VIOLATION_TEXT_CHARS = 200
VIOLATIONS_BUDGET_BYTES = 2500

# Stable reason codes shared by more than one service.
# Every reason of ca-service's backend failures starts so (ca_service.backends.base); their
# messages name the CA's set-up, which a peer gateway has no business reading.
CA_BACKEND_REASON_PREFIX = "CA_BACKEND_"
INTERNAL = "INTERNAL"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
CALLER_NOT_ALLOWED = "CALLER_NOT_ALLOWED"
UNAUTHENTICATED = "UNAUTHENTICATED"
NOT_FOUND = "NOT_FOUND"
DEPENDENCY_UNAVAILABLE = "DEPENDENCY_UNAVAILABLE"
RATE_LIMITED = "RATE_LIMITED"

# Error metadata enrollment-service adds to a failed redeem, stating what it knew of the
# token when it failed: TOKEN_NOT_CHECKED (failed before the token was looked at) or
# TOKEN_VALID (the token had been claimed: it exists, is unexpired and unused). The
# gateway takes back the per-address redeem charge only for a failure of the serving
# side's own making that says one of these (SECURITY.md, threat 3).
TOKEN_CHECK_KEY = "token_check"  # noqa: S105 - a metadata key and its values, not secrets
TOKEN_NOT_CHECKED = "not_checked"  # noqa: S105
TOKEN_VALID = "valid"  # noqa: S105

# Codes of failed calls that may nonetheless have taken effect: after one, read back.
OUTCOME_UNKNOWN_CODES = frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cut_bytes(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` bytes of UTF-8 (never half a character)."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode(errors="ignore") + "…"


def _bounded_violations(violations: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every violation, each cut, when they fit the limits; else as many as fit and a last
    entry counting the rest."""
    entries = [
        (_cut(field, MAX_VIOLATION_FIELD_CHARS), _cut(text, MAX_VIOLATION_TEXT_CHARS))
        for field, text in violations[:MAX_VIOLATIONS]
    ]
    if len(violations) <= MAX_VIOLATIONS and _size(entries) <= VIOLATIONS_BUDGET_BYTES:
        return entries
    kept: list[tuple[str, str]] = []
    for entry in entries[: MAX_VIOLATIONS - 1]:
        if _size([*kept, entry]) > VIOLATIONS_BUDGET_BYTES:
            break
        kept.append(entry)
    return [*kept, ("...", f"{len(violations) - len(kept)} more")]


def _size(entries: list[tuple[str, str]]) -> int:
    return sum(len(field.encode()) + len(text.encode()) for field, text in entries)


class ServiceError(Exception):
    """An expected failure, reported to the caller with a stable reason code."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        *,
        remediation: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[tuple[str, str]] = (),
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.remediation = remediation
        self.metadata = dict(metadata or {})
        self.violations = tuple(violations)
        self.retry_after_s = retry_after_s

    def to_status(self) -> grpc.Status:
        """The rich status the interceptor aborts with."""
        meta = dict(self.metadata)
        if self.remediation:
            meta[REMEDIATION_KEY] = self.remediation
        details = [
            _pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=meta))
        ]
        if self.violations:
            violations = _bounded_violations(self.violations)
            details.append(
                _pack(
                    error_details_pb2.BadRequest(
                        field_violations=[
                            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                            for f, d in violations
                        ]
                    )
                )
            )
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_s * 1e9))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        message = _cut_bytes(self.message, MAX_MESSAGE_BYTES)
        status = status_pb2.Status(code=self.code.value[0], message=message, details=details)
        return rpc_status.to_status(status)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def invalid_argument(reason: str, message: str, **kw: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, **kw)  # type: ignore[arg-type]


def not_found(reason: str, message: str, **kw: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, reason, message, **kw)  # type: ignore[arg-type]


def failed_precondition(reason: str, message: str, **kw: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, reason, message, **kw)  # type: ignore[arg-type]


def permission_denied(reason: str, message: str, **kw: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, reason, message, **kw)  # type: ignore[arg-type]


def unavailable(reason: str, message: str, **kw: object) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, reason, message, **kw)  # type: ignore[arg-type]


def internal_error(request_id: str) -> ServiceError:
    """The only thing a caller learns about an unexpected exception."""
    return ServiceError(
        grpc.StatusCode.INTERNAL,
        INTERNAL,
        f"internal error (request id {request_id})",
        remediation="retry later; operators can find the request id in the service log",
        metadata={"request_id": request_id},
    )


@dataclass
class RemoteError(Exception):
    """A failed RPC as the caller sees it: code, reason, message, remediation, details."""

    code: grpc.StatusCode
    reason: str
    message: str
    remediation: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[tuple[str, str]] = field(default_factory=list)
    retry_after_s: float | None = None

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}"

    @classmethod
    def from_rpc_error(cls, err: grpc.aio.AioRpcError | grpc.RpcError) -> RemoteError:
        code: grpc.StatusCode = err.code()
        message: str = err.details() or ""
        out = cls(code=code, reason=code.name, message=message)
        status = _status_from_error(err)
        if status is None or status.code != code.value[0]:
            # No details, or details of another status than the one the call ended with
            # (garbled, or added by something in between): the status code alone speaks.
            return out
        for detail in status.details:
            # A detail that does not parse is left out, as if it had not been sent: the
            # status code and the details that do parse still say what happened.
            with contextlib.suppress(DecodeError):
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    out.reason = info.reason
                    out.metadata = dict(info.metadata)
                    out.remediation = out.metadata.pop(REMEDIATION_KEY, "")
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    out.violations = [(v.field, v.description) for v in bad.field_violations]
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    retry = error_details_pb2.RetryInfo()
                    detail.Unpack(retry)
                    out.retry_after_s = retry.retry_delay.ToNanoseconds() / 1e9
        return out

    def to_service_error(self, *, metadata: Mapping[str, str] | None = None) -> ServiceError:
        """Re-raise a dependency's error to our own caller unchanged (with ``metadata``
        instead of the dependency's own, when given)."""
        return ServiceError(
            self.code,
            self.reason,
            self.message,
            remediation=self.remediation,
            metadata=self.metadata if metadata is None else metadata,
            violations=self.violations,
            retry_after_s=self.retry_after_s,
        )


def _status_from_error(err: grpc.RpcError) -> status_pb2.Status | None:
    """The rich status in the trailers; None when there is none, or none that parses
    (a peer of another release, or something in between, may send anything there)."""
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                return None
            if status.code == code_pb2.OK:
                return None
            return status
    return None
