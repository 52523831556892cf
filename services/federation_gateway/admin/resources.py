"""FederationAdmin.ImportResources: the operator's rows, forwarded to resource-service."""

from __future__ import annotations

import grpc

from federation_gateway.admin.base import AdminBase
from mosaic.federation.v1 import resources_pb2

# Room for a large batch on a slow disk; the default internal deadline is 10 s.
IMPORT_DEADLINE_S = 60.0


class ResourcesAdminMixin(AdminBase):
    async def ImportResources(
        self, request: resources_pb2.ImportResourcesRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.ImportResourcesResponse:
        """Validated and upserted by resource-service; its refusal (every bad row) passes
        through unchanged."""
        return await self.forward(
            self.resources.ImportResources(request, timeout=IMPORT_DEADLINE_S)
        )
