"""FederationAdmin: grants, peers and seal rotation, forwarded to grants-service."""

from __future__ import annotations

import grpc

from federation_gateway.admin.base import AdminBase
from mosaic.config import GRANTS
from mosaic.federation.v1 import gateway_pb2, grants_pb2


class GrantsAdminMixin(AdminBase):
    """The operator's grant and peer commands; grants-service decides, errors pass through."""

    async def CreateGrant(
        self, request: grants_pb2.CreateGrantRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.CreateGrantResponse:
        return await self.forward(self.grants.CreateGrant(request))

    async def GetGrant(
        self, request: grants_pb2.GetGrantRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.GetGrantResponse:
        return await self.forward(self.grants.GetGrant(request))

    async def ListGrants(
        self, request: grants_pb2.ListGrantsRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.ListGrantsResponse:
        return await self.forward(self.grants.ListGrants(request))

    async def RevokeGrant(
        self, request: grants_pb2.RevokeGrantRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.RevokeGrantResponse:
        return await self.forward(self.grants.RevokeGrant(request))

    async def GetPeer(
        self, request: grants_pb2.GetPeerRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.GetPeerResponse:
        return await self.forward(self.grants.GetPeer(request))

    async def ListPeers(
        self, request: grants_pb2.ListPeersRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.ListPeersResponse:
        return await self.forward(self.grants.ListPeers(request))

    async def SetPeerState(
        self, request: grants_pb2.SetPeerStateRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.SetPeerStateResponse:
        return await self.forward(self.grants.SetPeerState(request))

    async def RemovePeer(
        self, request: grants_pb2.RemovePeerRequest, context: grpc.aio.ServicerContext
    ) -> grants_pb2.RemovePeerResponse:
        return await self.forward(self.grants.RemovePeer(request))

    async def RotateSeal(
        self, request: gateway_pb2.RotateSealRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.RotateSealResponse:
        """Re-seal the sealed columns of every service that has them (only grants-service).

        The CA's sealed key files are not in any database: `mosaic seal rotate` re-seals
        them in the CLI process, on the host that holds the instance home.
        """
        reply = await self.forward(self.grants.Reseal(grants_pb2.ResealRequest()))
        return gateway_pb2.RotateSealResponse(resealed={GRANTS: reply.resealed})
