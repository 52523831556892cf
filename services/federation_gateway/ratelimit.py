"""Rate limits (GCRA): in-process by default, shared across replicas through Valkey/Redis.

GCRA keeps one number per key, the theoretical arrival time (TAT) of the next
request; a request is allowed when it does not arrive earlier than
``TAT - burst * interval``. Refusals say how long to wait.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0


class RateLimiter(Protocol):
    async def acquire(self, key: str) -> Decision:
        """Take one request's worth of the limit for ``key``."""
        ...

    async def close(self) -> None: ...


class LocalGcra:
    """GCRA in this process's memory: exact for one gateway replica."""

    def __init__(self, per_second: float, burst: int, *, max_keys: int = 100_000) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
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

    def _evict(self, now: float) -> None:
        # Keys whose TAT has passed carry no state worth keeping.
        for key in [k for k, tat in self._tat.items() if tat <= now]:
            del self._tat[key]

    async def close(self) -> None:
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
if tat > now + burst * interval then tat = now + burst * interval end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor((new_tat - now) / 1000) + 1000)
return {1, 0}
"""


class RedisGcra:
    """GCRA in Valkey/Redis via one Lua script (EVALSHA), shared by every gateway replica."""

    def __init__(self, url: str, per_second: float, burst: int, *, prefix: str) -> None:
        import redis.asyncio as redis

        if per_second <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._script = self._client.register_script(_GCRA_LUA)
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

    async def close(self) -> None:
        await self._client.aclose()


def make_limiter(valkey_url: str, per_second: float, burst: int, *, prefix: str) -> RateLimiter:
    """Redis-backed when a Valkey URL is configured, in-process otherwise."""
    if valkey_url:
        return RedisGcra(valkey_url, per_second, burst, prefix=prefix)
    return LocalGcra(per_second, burst)
