"""What the gateway's servicers share: runtime, audit writer, rate limiters."""

from __future__ import annotations

from dataclasses import dataclass, field

from federation_gateway.audit import AuditWriter
from federation_gateway.ratelimit import LocalGcra, RateLimiter, make_limiter
from mosaic.runtime import ServiceRuntime

# Enrollment redeem attempts per source address: a few tries, then one every 10 s.
REDEEM_PER_SECOND = 0.1
REDEEM_BURST = 5


@dataclass
class GatewayContext:
    runtime: ServiceRuntime
    audit: AuditWriter
    grant_limiter: RateLimiter
    redeem_limiter: RateLimiter = field(
        default_factory=lambda: LocalGcra(REDEEM_PER_SECOND, REDEEM_BURST)
    )

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
                REDEEM_PER_SECOND,
                REDEEM_BURST,
                prefix=f"mosaic:{config.name}:redeem",
            ),
        )

    async def close(self) -> None:
        await self.audit.close()
        await self.grant_limiter.close()
        await self.redeem_limiter.close()
