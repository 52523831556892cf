"""FederationAdmin: querying a peer (`mosaic federation query`) and reading our audit log."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import grpc

from federation_gateway.admin.base import AdminBase
from federation_gateway.client import PeerError
from mosaic.errors import DEPENDENCY_UNAVAILABLE, RemoteError, ServiceError, invalid_argument
from mosaic.federation.v1 import gateway_pb2, grants_pb2

DEFAULT_AUDIT_LIMIT = 100
MAX_AUDIT_LIMIT = 1000
LIST_GRANTS_TIMEOUT_S = 5.0


class QueryAdminMixin(AdminBase):
    """Query goes through the gateway's FederationClient; ListAudit reads federation_audit_log."""

    async def Query(
        self, request: gateway_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.QueryResponse:
        try:
            return await self.gateway.federation_client.query(request)
        except PeerError as exc:
            raise exc.to_service_error() from None

    async def ListAudit(
        self, request: gateway_pb2.ListAuditRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListAuditResponse:
        if not 0 <= request.limit <= MAX_AUDIT_LIMIT:
            raise invalid_argument(
                "LIMIT_INVALID",
                f"limit must be between 1 and {MAX_AUDIT_LIMIT} (0: the default)",
                violations=[("limit", "out of range")],
            )
        peer_id: uuid.UUID | None = None
        if request.peer_id:
            try:
                peer_id = uuid.UUID(request.peer_id)
            except ValueError:
                reply = await self.forward(
                    self.grants.GetPeer(grants_pb2.GetPeerRequest(id=request.peer_id))
                )
                peer_id = uuid.UUID(reply.peer.id)
        since: dt.datetime | None = None
        if request.HasField("since"):
            try:
                since = request.since.ToDatetime(tzinfo=dt.UTC)
            except (ValueError, OverflowError):  # outside years 1-9999, or bad nanos
                raise invalid_argument(
                    "SINCE_INVALID",
                    "since must be a valid timestamp (years 1-9999, nanos 0-999999999)",
                    violations=[("since", "must be in years 1-9999, nanos 0-999999999")],
                ) from None
        grant_ids = await self._grants_of(peer_id) if peer_id is not None else []
        rows = await self.gateway.audit.list(
            peer_id=peer_id,
            grant_ids=grant_ids,
            since=since,
            limit=request.limit or DEFAULT_AUDIT_LIMIT,
        )
        return gateway_pb2.ListAuditResponse(entries=[_entry(row) for row in rows])

    async def _grants_of(self, peer_id: uuid.UUID) -> list[uuid.UUID]:
        """The peer's grant ids, from grants-service, so that rows naming one of them but no
        peer (refused before the gateway knew the grant's peer) are listed as the peer's.
        Without them the list could leave rows out: refused rather than incomplete."""
        try:
            reply = await self.grants.ListGrants(
                grants_pb2.ListGrantsRequest(peer_id=str(peer_id)), timeout=LIST_GRANTS_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as err:
            if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise RemoteError.from_rpc_error(err).to_service_error() from None
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE,
                DEPENDENCY_UNAVAILABLE,
                "cannot list this peer's rows: grants-service, which knows its grants, does "
                "not answer",
                remediation="retry once grants-service answers (`mosaic gateway doctor`); "
                "`audit list` without --peer lists every row",
                retry_after_s=1.0,
            ) from None
        return [uuid.UUID(grant.id) for grant in reply.grants]


def _entry(row: dict[str, Any]) -> gateway_pb2.AuditEntry:
    entry = gateway_pb2.AuditEntry(
        id=str(row["id"]),
        request_id=row["request_id"],
        peer_id=str(row["peer_id"] or ""),
        grant_id=str(row["grant_id"] or ""),
        subject_user_id=str(row["subject_user_id"] or ""),
        verb=row["verb"],
        resource=row["resource"] or "",
        status=row["status"],
        outcome=row["outcome"],
        reason=row["reason"] or "",
        query_hash=row["query_hash"] or "",
        bytes_out=row["bytes_out"],
        latency_ms=row["latency_ms"],
        source_address=row["source_address"] or "",
    )
    entry.created_at.FromDatetime(row["created_at"])
    return entry
