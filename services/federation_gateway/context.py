"""What the gateway's servicers share: runtime, audit writer, rate limiters, and the
in-memory state of the federation path (revoked serials, grant cache, outbound client)."""

from __future__ import annotations

from dataclasses import dataclass, field

from federation_gateway.audit import AuditWriter
from federation_gateway.authz import GrantCache, watch_changes
from federation_gateway.client import FederationClient
from federation_gateway.ratelimit import RateLimiter, make_limiter
from federation_gateway.revocations import RevokedSerials
from federation_gateway.unfinished import UnfinishedWork
from mosaic.config import CA, GRANTS
from mosaic.federation.v1 import ca_pb2_grpc, grants_pb2_grpc
from mosaic.runtime import ServiceRuntime


@dataclass
class GatewayContext:
    runtime: ServiceRuntime
    audit: AuditWriter
    grant_limiter: RateLimiter
    # Enrollment redeem attempts per source address ([rate_limit] redeem_* in instance.toml).
    redeem_limiter: RateLimiter
    renew_limiter: RateLimiter
    revoked: RevokedSerials = field(init=False)
    grant_cache: GrantCache = field(init=False)
    federation_client: FederationClient = field(init=False)
    # Enrollments and renewals finishing after their caller went away (see unfinished.py).
    unfinished: UnfinishedWork = field(init=False)

    def __post_init__(self) -> None:
        grants = grants_pb2_grpc.GrantsStub(self.runtime.channels.get(GRANTS))
        self.unfinished = UnfinishedWork()
        self.revoked = RevokedSerials()
        self.grant_cache = GrantCache(grants)
        self.federation_client = FederationClient(grants)

    @classmethod
    def build(cls, runtime: ServiceRuntime) -> GatewayContext:
        assert runtime.db is not None
        config = runtime.config
        return cls(
            runtime=runtime,
            audit=AuditWriter(runtime.db),
            grant_limiter=make_limiter(
                config.valkey_url,
                config.rate_limit.per_second,
                config.rate_limit.burst,
                prefix=f"mosaic:{config.name}:grant",
            ),
            redeem_limiter=make_limiter(
                config.valkey_url,
                config.rate_limit.redeem_per_second,
                config.rate_limit.redeem_burst,
                prefix=f"mosaic:{config.name}:redeem",
            ),
            renew_limiter=make_limiter(
                config.valkey_url,
                config.rate_limit.renew_per_second,
                config.rate_limit.renew_burst,
                prefix=f"mosaic:{config.name}:renew",
            ),
        )

    async def follow_revocations(self) -> None:
        """Background job: keep the revoked-serial set current (ca-service WatchRevocations)."""
        ca = ca_pb2_grpc.CertificateAuthorityStub(self.runtime.channels.get(CA))
        await self.revoked.run(ca)

    async def follow_grant_changes(self) -> None:
        """Background job: drop cached grants and flush peer channels named by WatchChanges."""
        grants = grants_pb2_grpc.GrantsStub(self.runtime.channels.get(GRANTS))
        await watch_changes(grants, self.grant_cache, self.federation_client)

    async def close(self) -> None:
        await self.federation_client.close()
        await self.audit.close()
        await self.grant_limiter.close()
        await self.redeem_limiter.close()
        await self.renew_limiter.close()
