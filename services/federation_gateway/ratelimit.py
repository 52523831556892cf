"""Rate limits (GCRA): in-process by default, shared across replicas through Valkey/Redis.

GCRA keeps one number per key, the theoretical arrival time (TAT) of the next
request; a request is allowed when it does not arrive earlier than
``TAT - burst * interval``. Refusals say how long to wait.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

import grpc

from mosaic.config import check_rate
from mosaic.errors import RATE_LIMITED, ServiceError, unavailable

log = logging.getLogger("mosaic.gateway.ratelimit")

RATE_LIMITER_UNAVAILABLE = "RATE_LIMITER_UNAVAILABLE"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0


class RateLimiter(Protocol):
    async def acquire(self, key: str) -> Decision:
        """Take one request's worth of the limit for ``key``."""
        ...

    async def refund(self, key: str) -> None:
        """Give back one request's worth taken by :meth:`acquire` for ``key`` (never more
        than a full burst: a key with nothing taken stays as it is)."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise when the limit's store does not answer."""
        ...


class LocalGcra:
    """GCRA in this process's memory: exact for one gateway replica."""

    def __init__(self, per_second: float, burst: int, *, max_keys: int = 100_000) -> None:
        check_rate(per_second, burst)
        self._interval = 1.0 / per_second
        self._burst = burst
        self._tat: dict[str, float] = {}
        self._max_keys = max_keys

    async def acquire(self, key: str) -> Decision:
        now = time.monotonic()
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + self._interval
        allow_at = new_tat - self._burst * self._interval
        if now < allow_at:
            return Decision(False, allow_at - now)
        if len(self._tat) >= self._max_keys:
            self._evict(now)
        self._tat[key] = new_tat
        return Decision(True)

    async def refund(self, key: str) -> None:
        tat = self._tat.get(key)
        if tat is None:
            return
        tat -= self._interval
        if tat <= time.monotonic():
            del self._tat[key]  # a full burst again
        else:
            self._tat[key] = tat

    def _evict(self, now: float) -> None:
        # Keys whose TAT has passed carry no state worth keeping. If that frees too little
        # (many keys limited at once), the oldest keys go too, down to 90% of the cap: the
        # map stays bounded and each full scan is paid for by a tenth of the cap's inserts.
        for key in [k for k, tat in self._tat.items() if tat <= now]:
            del self._tat[key]
        excess = len(self._tat) - int(self._max_keys * 0.9)
        if excess > 0:
            for key in list(itertools.islice(self._tat, excess)):
                del self._tat[key]

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None


# KEYS[1] = limit key; ARGV = interval (µs), burst. Uses the server clock so every
# replica agrees on "now".
_GCRA_LUA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
-- A stored TAT is never more than a full burst ahead, unless the server clock stepped
-- back (NTP, a failover to a skewed replica): cap it, or every grant waits out the step.
-- The cap is stored, so the next request after the retry-after is allowed.
if tat > now + burst * interval then
  tat = now + burst * interval
  redis.call('SET', KEYS[1], tat, 'PX', math.floor((tat - now) / 1000) + 1000)
end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor((new_tat - now) / 1000) + 1000)
return {1, 0}
"""

# The same key and interval: one interval taken back, never below now (a full burst).
_REFUND_LUA = """
local interval = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
tat = tat - interval
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], tat, 'PX', math.floor((tat - now) / 1000) + 1000)
end
return 1
"""


class RedisGcra:
    """GCRA in Valkey/Redis via one Lua script (EVALSHA), shared by every gateway replica."""

    def __init__(self, url: str, per_second: float, burst: int, *, prefix: str) -> None:
        import redis.asyncio as redis

        check_rate(per_second, burst)
        self._client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._script = self._client.register_script(_GCRA_LUA)
        self._refund_script = self._client.register_script(_REFUND_LUA)
        self._interval_us = int(1_000_000 / per_second)
        self._burst = burst
        self._prefix = prefix

    async def acquire(self, key: str) -> Decision:
        allowed, wait_us = await self._script(
            keys=[f"{self._prefix}:{key}"], args=[self._interval_us, self._burst]
        )
        if int(allowed) == 1:
            return Decision(True)
        return Decision(False, int(wait_us) / 1_000_000)

    async def refund(self, key: str) -> None:
        await self._refund_script(keys=[f"{self._prefix}:{key}"], args=[self._interval_us])

    async def close(self) -> None:
        await self._client.aclose()

    async def ping(self) -> None:
        await self._client.ping()


def make_limiter(valkey_url: str, per_second: float, burst: int, *, prefix: str) -> RateLimiter:
    """Redis-backed when a Valkey URL is configured, in-process otherwise."""
    if valkey_url:
        return RedisGcra(valkey_url, per_second, burst, prefix=prefix)
    return LocalGcra(per_second, burst)


async def within_limit(
    limiter: RateLimiter,
    key: str,
    refusal: str,
    *,
    remediation: str = "retry in {seconds} s",
) -> None:
    """Take one request's worth of ``limiter`` for ``key``, or refuse with RetryInfo:
    RESOURCE_EXHAUSTED ``RATE_LIMITED`` over the limit (``remediation`` with ``{seconds}``
    filled in: the delay rounded up to whole seconds, for the people who read it; programs
    read RetryInfo, the message stays the same), and UNAVAILABLE
    ``RATE_LIMITER_UNAVAILABLE`` when the limit cannot be checked (Valkey down or slow):
    refused rather than served unlimited."""
    try:
        decision = await limiter.acquire(key)
    except Exception as exc:
        log.warning("rate limiter failed", extra={"error": type(exc).__name__})
        raise unavailable(
            RATE_LIMITER_UNAVAILABLE,
            "the gateway cannot check its rate limit right now",
            remediation="retry shortly",
            retry_after_s=1.0,
        ) from None
    if not decision.allowed:
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            RATE_LIMITED,
            refusal,
            remediation=remediation.format(seconds=max(1, math.ceil(decision.retry_after_s))),
            retry_after_s=decision.retry_after_s,
        )
