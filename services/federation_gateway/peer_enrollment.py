"""PeerEnrollment: the enrollment listener's one RPC (server TLS; the token authenticates).

Every attempt, allowed or not, is rate-limited per source address and leaves an audit
row before the answer goes out. The redeem itself happens in enrollment-service; this
servicer adds what only the listener knows: who is calling, our federation endpoint,
and the root peers must trust for our TLS server certificate.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Final

import grpc

from federation_gateway.audit import AuditRecord
from federation_gateway.context import GatewayContext
from mosaic.config import ENROLLMENT
from mosaic.errors import INTERNAL, RATE_LIMITED, RemoteError, ServiceError, internal_error
from mosaic.federation.v1 import enrollment_pb2, enrollment_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from mosaic.logs import request_id_var, token_hint
from mosaic.rpc.interceptors import new_request_id

log = logging.getLogger("federation_gateway.enrollment")

REDEEM_VERB: Final = "redeem"
# Above the sum of the enrollment service's own deadlines on the way to an answer (30 s:
# enrollment_service.servicer); the querying gateway gives the redeem 60 s.
REDEEM_TIMEOUT_S: Final = 40.0
ROOT_CERT: Final = "root.crt"

# Failures that are the caller's (a refused token, a bad CSR): "denied", message kept.
_DENIED: Final = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    }
)
# Reasons of ca-service's backend failures (ca_service.backends.base).
_CA_BACKEND: Final = "CA_BACKEND_"
# Ids the enrollment service attaches for our audit row; never passed on to the peer.
_AUDIT_ONLY_METADATA: Final = ("grant_id", "peer_id", "request_id")


def source_host(peer: str) -> str:
    """The address part of ``context.peer()``: ``ipv4:1.2.3.4:5`` → ``1.2.3.4``."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and rest:
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer or "unknown"


class PeerEnrollmentServicer(gateway_pb2_grpc.PeerEnrollmentServicer):
    def __init__(self, gateway: GatewayContext) -> None:
        self._gateway = gateway
        config = gateway.runtime.config
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
        hint = token_hint(request.token)
        audit = _Audit(self._gateway, source, hint, started)

        decision = await self._gateway.redeem_limiter.acquire(source)
        if not decision.allowed:
            await self._gateway.audit.record(
                audit.row("denied", grpc.StatusCode.RESOURCE_EXHAUSTED, RATE_LIMITED)
            )
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                RATE_LIMITED,
                "too many enrollment attempts from this address",
                remediation=f"wait {decision.retry_after_s:.0f} s before trying again",
                retry_after_s=decision.retry_after_s,
            )

        try:
            reply: enrollment_pb2.RedeemResponse = await self._enrollment.Redeem(
                enrollment_pb2.RedeemRequest(
                    token=request.token, csr_pem=request.csr_pem, source_address=source
                ),
                timeout=REDEEM_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as err:
            remote = RemoteError.from_rpc_error(err)
            # The serving side's own CA trouble is ours, not the caller's: its message names
            # our CA's configuration, which the enrolling peer has no business seeing.
            denied = remote.code in _DENIED and not remote.reason.startswith(_CA_BACKEND)
            await self._gateway.audit.record(
                audit.row(
                    "denied" if denied else "error",
                    remote.code,
                    remote.reason,
                    grant_id=remote.metadata.get("grant_id"),
                    peer_id=remote.metadata.get("peer_id"),
                )
            )
            raise _for_peer(remote, denied) from None
        except asyncio.CancelledError:
            # The peer went away (or its deadline passed) mid-redeem: still one row, written
            # in the background since this task is being cancelled.
            self._gateway.audit.record_soon(
                audit.row("error", grpc.StatusCode.CANCELLED, "CANCELLED")
            )
            raise
        except Exception:
            await self._gateway.audit.record(audit.row("error", grpc.StatusCode.INTERNAL, INTERNAL))
            raise

        reply.federation_endpoint = self._federation_endpoint
        reply.ca_bundle_pem = self._server_root_pem
        await self._gateway.audit.record(
            audit.row(
                "allowed",
                grpc.StatusCode.OK,
                None,
                grant_id=reply.grant_id,
                peer_id=reply.peer_id,
                subject_user_id=reply.subject_user_id,
                bytes_out=reply.ByteSize(),
            )
        )
        log.info(
            "peer enrolled",
            extra={
                "token": hint,
                "grant_id": reply.grant_id,
                "peer_id": reply.peer_id,
                "serial": reply.serial,
                "source_address": source,
            },
        )
        return reply


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
            grant_id=_uuid_or_none(grant_id),
            peer_id=_uuid_or_none(peer_id),
            subject_user_id=_uuid_or_none(subject_user_id),
            source_address=self._source[:128],
            bytes_out=bytes_out,
            latency_ms=round((time.perf_counter() - self._started) * 1000, 3),
            detail=f"token {self._hint}" if self._hint else None,
        )


def _for_peer(remote: RemoteError, denied: bool) -> ServiceError:
    """What the enrolling peer learns: refusals as they are, our own trouble generically."""
    metadata = {k: v for k, v in remote.metadata.items() if k not in _AUDIT_ONLY_METADATA}
    if denied:
        return ServiceError(
            remote.code,
            remote.reason,
            remote.message,
            remediation=remote.remediation,
            metadata=metadata,
            violations=remote.violations,
        )
    if remote.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or (
        remote.reason.startswith(_CA_BACKEND)
    ):
        return ServiceError(
            grpc.StatusCode.UNAVAILABLE,
            remote.reason
            if remote.code != grpc.StatusCode.DEADLINE_EXCEEDED
            else "DEADLINE_EXCEEDED",
            "the serving gateway cannot enroll peers right now",
            remediation="try again in a minute",
            retry_after_s=remote.retry_after_s,
        )
    return internal_error(request_id_var.get() or new_request_id())


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
