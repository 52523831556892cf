"""PeerEnrollment: the enrollment listener's one RPC (server TLS; the token authenticates).

Every attempt, allowed or not, is rate-limited per source address (one that failed on
our side's own trouble, the token not at fault, is given back: _not_charged) and leaves
an audit row before the answer goes out. The redeem itself happens in
enrollment-service; this servicer adds what only the listener knows: who is calling, our
federation endpoint, and the root peers must trust for our TLS server certificate.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import urllib.parse
from typing import Final

import grpc

from federation_gateway.audit import AuditRecord, commit_or_refuse
from federation_gateway.context import GatewayContext
from federation_gateway.ratelimit import within_limit
from mosaic.config import ENROLLMENT
from mosaic.errors import (
    CA_BACKEND_REASON_PREFIX,
    INTERNAL,
    TOKEN_CHECK_KEY,
    TOKEN_NOT_CHECKED,
    TOKEN_VALID,
    RemoteError,
    ServiceError,
    internal_error,
)
from mosaic.federation.v1 import enrollment_pb2, enrollment_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from mosaic.ids import uuid_or_none
from mosaic.logs import request_id_var, token_hint
from mosaic.rpc.interceptors import MalformedRequest, malformed_request_error, new_request_id

log = logging.getLogger("federation_gateway.enrollment")

REDEEM_VERB: Final = "redeem"
GRANT_NOT_PENDING: Final = "GRANT_NOT_PENDING"
# Audit reason of a redeem answered again for the key the token was spent on.
REDEEM_REPEATED: Final = "REDEEM_REPEATED"
# Above the sum of the enrollment service's own deadlines on the way to an answer (30 s:
# enrollment_service.servicer); the querying gateway gives the redeem 60 s.
REDEEM_TIMEOUT_S: Final = 40.0
ROOT_CERT: Final = "root.crt"

# Refusals that are about what the peer sent (its token, its CSR): "denied", and passed
# on as they are. Nothing else is: an unauthenticated caller must not read our internal
# access lists, our CA's set-up, or the state of our grants and peers.
_PEER_REASONS: Final = frozenset(
    {
        "TOKEN_UNKNOWN",
        "TOKEN_EXPIRED",
        "TOKEN_ALREADY_USED",
        "TOKEN_IN_USE",
        "TOKEN_BINDING_MISMATCH",
        GRANT_NOT_PENDING,
        "CSR_REQUIRED",
        "CSR_TOO_LARGE",
        "CSR_MALFORMED",
        "CSR_BAD_SIGNATURE",
        "CSR_WEAK_KEY",
        "CSR_BAD_NAMES",
    }
)
# The grant's state stopped the redeem (revoked, removed, its peer suspended meanwhile):
# denied, told to the peer as the grant being no longer pending.
_GRANT_STATE_CODES: Final = frozenset(
    {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND}
)
# What the peer is told that makes the audit row "denied" (the rest is "error").
_DENIED_CODES: Final = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
    }
)
# What the enrollment service attaches for us (our audit row, the limit); never passed on
# to the peer.
_AUDIT_ONLY_METADATA: Final = ("grant_id", "peer_id", "request_id", TOKEN_CHECK_KEY)
# What the enrollment service says of the token when a redeem failed on our side's own
# trouble, for which the attempt is not charged to the caller's address (_not_charged).
_TOKEN_NOT_AT_FAULT: Final = frozenset({TOKEN_NOT_CHECKED, TOKEN_VALID})


def source_host(peer: str) -> str:
    """The address part of ``context.peer()``: ``ipv4:1.2.3.4:5`` → ``1.2.3.4``, and
    ``ipv6:%5B2001:db8::1%5D:5`` (gRPC percent-encodes the brackets) → ``2001:db8::1``."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and rest:
        return urllib.parse.unquote(rest).rsplit(":", 1)[0].strip("[]")
    return peer or "unknown"


def limit_key(source: str) -> str:
    """What redeem attempts are counted by: the address, or its /64 for IPv6 (one host
    usually holds a whole /64, so counting single addresses would not limit it)."""
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return source
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class PeerEnrollmentServicer(gateway_pb2_grpc.PeerEnrollmentServicer):
    def __init__(self, gateway: GatewayContext) -> None:
        self._gateway = gateway
        config = gateway.runtime.config
        # What the peer stores and dials: `host` with the public federation port if one
        # is set (a load balancer in front of replicas), not necessarily this listener's.
        self._federation_endpoint = config.federation_endpoint
        self._server_root_pem = (config.federation_pki_dir / ROOT_CERT).read_text()
        self._enrollment = enrollment_pb2_grpc.EnrollmentStub(
            gateway.runtime.channels.get(ENROLLMENT)
        )

    async def Redeem(
        self, request: gateway_pb2.PeerRedeemRequest, context: grpc.aio.ServicerContext
    ) -> enrollment_pb2.RedeemResponse:
        started = time.perf_counter()
        source = source_host(context.peer() or "")
        hint = "" if type(request) is MalformedRequest else token_hint(request.token)
        audit = _Audit(self._gateway, source, hint, started)

        key = limit_key(source)
        try:
            await within_limit(
                self._gateway.redeem_limiter,
                key,
                "too many enrollment attempts from this address",
                remediation="wait {seconds} s before trying again",
            )
            if type(request) is MalformedRequest:
                raise malformed_request_error()
        except ServiceError as exc:  # over the limit, unparsable, or no limit: audited too
            outcome = "error" if exc.code == grpc.StatusCode.UNAVAILABLE else "denied"
            await commit_or_refuse(self._gateway.audit, audit.row(outcome, exc.code, exc.reason))
            raise
        except asyncio.CancelledError:  # gone while the limit was checked: still one row
            self._gateway.audit.record_soon(
                audit.row("error", grpc.StatusCode.CANCELLED, "CANCELLED")
            )
            raise

        try:
            reply: enrollment_pb2.RedeemResponse = await self._enrollment.Redeem(
                enrollment_pb2.RedeemRequest(
                    token=request.token, csr_pem=request.csr_pem, source_address=source
                ),
                timeout=REDEEM_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as err:
            remote = RemoteError.from_rpc_error(err)
            answer = _for_peer(remote)
            if _not_charged(remote, answer):
                await self._refund(key)
            await commit_or_refuse(
                self._gateway.audit,
                audit.row(
                    "denied" if answer.code in _DENIED_CODES else "error",
                    remote.code,
                    remote.reason,  # the real reason, whatever the peer is told
                    grant_id=remote.metadata.get("grant_id"),
                    peer_id=remote.metadata.get("peer_id"),
                ),
            )
            raise answer from None
        except asyncio.CancelledError:
            # The peer went away (or its deadline passed) mid-redeem: still one row, written
            # in the background since this task is being cancelled.
            self._gateway.audit.record_soon(
                audit.row("error", grpc.StatusCode.CANCELLED, "CANCELLED")
            )
            raise
        except Exception:
            row = audit.row("error", grpc.StatusCode.INTERNAL, INTERNAL)
            await commit_or_refuse(self._gateway.audit, row)
            raise

        reply.federation_endpoint = self._federation_endpoint
        reply.ca_bundle_pem = self._server_root_pem
        await commit_or_refuse(
            self._gateway.audit,
            audit.row(
                "allowed",
                grpc.StatusCode.OK,
                REDEEM_REPEATED if reply.repeated else None,
                grant_id=reply.grant_id,
                peer_id=reply.peer_id,
                subject_user_id=reply.subject_user_id,
                bytes_out=reply.ByteSize(),
            ),
        )
        log.info(
            "peer enrolled (answer repeated)" if reply.repeated else "peer enrolled",
            extra={
                "token": hint,
                "grant_id": reply.grant_id,
                "peer_id": reply.peer_id,
                "serial": reply.serial,
                "source_address": source,
            },
        )
        return reply

    async def _refund(self, key: str) -> None:
        try:
            await self._gateway.redeem_limiter.refund(key)
        except Exception as exc:  # the limit's store down: the attempt stays charged
            log.warning("redeem limit refund failed", extra={"error": type(exc).__name__})


def _not_charged(remote: RemoteError, answer: ServiceError) -> bool:
    """Whether an attempt is given back to the caller's per-address limit: only when it
    failed on our side's own trouble (a dependency down or slow: the peer is told
    UNAVAILABLE) and enrollment-service says the token was not the cause, because it
    failed before the token was looked at or after the token was claimed as valid. Such an
    answer says nothing about a token the caller does not already hold, so the limit still
    bounds guessing; a refused token, and a failure nobody placed, stay charged."""
    return (
        answer.code == grpc.StatusCode.UNAVAILABLE
        and remote.metadata.get(TOKEN_CHECK_KEY) in _TOKEN_NOT_AT_FAULT
    )


class _Audit:
    """What one redeem attempt's audit row says, whatever its outcome; the row is written
    before the answer goes out."""

    def __init__(self, gateway: GatewayContext, source: str, hint: str, started: float) -> None:
        self._gateway = gateway
        self._source = source
        self._hint = hint
        self._started = started
        self._request_id = request_id_var.get() or new_request_id()

    def row(
        self,
        outcome: str,
        code: grpc.StatusCode,
        reason: str | None,
        *,
        grant_id: str | None = None,
        peer_id: str | None = None,
        subject_user_id: str | None = None,
        bytes_out: int = 0,
    ) -> AuditRecord:
        return AuditRecord(
            request_id=self._request_id,
            verb=REDEEM_VERB,
            status=code.name,
            outcome=outcome,
            reason=reason,
            grant_id=uuid_or_none(grant_id),
            peer_id=uuid_or_none(peer_id),
            subject_user_id=uuid_or_none(subject_user_id),
            source_address=self._source[:128],
            bytes_out=bytes_out,
            latency_ms=round((time.perf_counter() - self._started) * 1000, 3),
            detail=f"token {self._hint}" if self._hint else None,
        )


def _for_peer(remote: RemoteError) -> ServiceError:
    """What the enrolling peer learns: its own refusals as they are, a refusal for the
    grant's state as GRANT_NOT_PENDING, and our own trouble generically."""
    if remote.reason in _PEER_REASONS:
        return remote.to_service_error(
            metadata={k: v for k, v in remote.metadata.items() if k not in _AUDIT_ONLY_METADATA}
        )
    if remote.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or (
        remote.reason.startswith(CA_BACKEND_REASON_PREFIX)
    ):
        return ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            "DEADLINE_EXCEEDED"
            if remote.code == grpc.StatusCode.DEADLINE_EXCEEDED
            else "UNAVAILABLE",
            "the serving gateway cannot enroll peers right now",
            remediation="try again in a minute",
            retry_after_s=remote.retry_after_s,
        )
    if remote.code in _GRANT_STATE_CODES:
        return ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            GRANT_NOT_PENDING,
            "the grant this enrollment token is for can no longer be enrolled",
            remediation="ask the serving gateway's administrator for a new grant and "
            "enrollment URL",
        )
    return internal_error(request_id_var.get() or new_request_id())
