"""What every FederationAdmin mixin can use: the runtime, internal stubs, error forwarding."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc

from federation_gateway.context import GatewayContext
from mosaic.config import CA, ENROLLMENT, GRANTS, RESOURCES
from mosaic.errors import RemoteError
from mosaic.federation.v1 import (
    ca_pb2_grpc,
    enrollment_pb2_grpc,
    grants_pb2_grpc,
    resources_pb2_grpc,
)

T = TypeVar("T")


class AdminBase:
    """Holds the gateway runtime and stubs to the internal services it fans out to."""

    def __init__(self, gateway: GatewayContext) -> None:
        self.gateway = gateway
        runtime = gateway.runtime
        self.runtime = runtime
        self.config = runtime.config
        channels = runtime.channels
        self.grants = grants_pb2_grpc.GrantsStub(channels.get(GRANTS))
        self.ca = ca_pb2_grpc.CertificateAuthorityStub(channels.get(CA))
        self.enrollment = enrollment_pb2_grpc.EnrollmentStub(channels.get(ENROLLMENT))
        self.resources = resources_pb2_grpc.ResourceSourceStub(channels.get(RESOURCES))

    async def forward(self, call: Awaitable[T]) -> T:
        """Await an internal call; its error reaches the operator unchanged (code, reason, hint)."""
        try:
            return await call
        except grpc.aio.AioRpcError as err:
            raise RemoteError.from_rpc_error(err).to_service_error() from None
