"""GCRA rate limits: the in-process limiter exactly, and the Valkey/Redis one against a
real redis-server shared by two limiter instances (two replicas)."""

from __future__ import annotations

import asyncio
import math
import uuid

import pytest

from federation_gateway import ratelimit
from federation_gateway.ratelimit import LocalGcra, RedisGcra
from mosaic.config import RateLimitConfig
from mosaic.errors import ServiceError
from tests.support.redis_server import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(ratelimit.time, "monotonic", fake)
    return fake


async def test_local_burst_then_refusal_with_retry_after(clock: Clock) -> None:
    limiter = LocalGcra(per_second=2, burst=5)
    decisions = [await limiter.acquire("g") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert decisions[-1].retry_after_s == pytest.approx(0.5)
    clock.now += 0.5  # one interval later, exactly one more
    assert (await limiter.acquire("g")).allowed
    assert not (await limiter.acquire("g")).allowed


async def test_local_keys_are_independent(clock: Clock) -> None:
    limiter = LocalGcra(per_second=1, burst=1)
    assert (await limiter.acquire("a")).allowed
    assert not (await limiter.acquire("a")).allowed
    assert (await limiter.acquire("b")).allowed


async def test_a_refund_gives_back_one_request_and_never_more_than_a_burst(clock: Clock) -> None:
    limiter = LocalGcra(per_second=0.1, burst=5)
    assert all([(await limiter.acquire("a")).allowed for _ in range(5)])
    await limiter.refund("a")
    assert (await limiter.acquire("a")).allowed  # the one given back
    assert not (await limiter.acquire("a")).allowed
    for _ in range(20):  # refunds beyond what was taken are worth nothing
        await limiter.refund("a")
    assert [(await limiter.acquire("a")).allowed for _ in range(6)] == [True] * 5 + [False]
    await limiter.refund("never-seen")
    assert "never-seen" not in limiter._tat


@pytest.mark.parametrize(
    ("per_second", "burst"),
    [(0, 1), (1, 0), (-1, 5), (math.nan, 5), (math.inf, 5), (2e6, 5), (1, 2_000_000)],
)
def test_invalid_limits_are_refused(per_second: float, burst: int) -> None:
    """A NaN rate would compare false everywhere and allow every request; above a million
    a second Valkey's interval in microseconds rounds to 0, which allows them all too."""
    with pytest.raises(ValueError):
        LocalGcra(per_second, burst)
    with pytest.raises(ValueError):
        RateLimitConfig(per_second=per_second, burst=burst)
    with pytest.raises(ValueError):
        RateLimitConfig(redeem_per_second=per_second, redeem_burst=burst)


async def test_the_local_map_stays_bounded_when_every_key_is_limited(clock: Clock) -> None:
    limiter = LocalGcra(per_second=0.001, burst=1, max_keys=100)
    for n in range(1000):  # each key is limited for 1000 s: nothing expires
        assert (await limiter.acquire(f"k{n}")).allowed
    assert len(limiter._tat) <= 100
    assert not (await limiter.acquire("k999")).allowed  # the newest keys keep their state


@pytest.mark.redis
async def test_redis_limit_is_shared_by_two_replicas(redis_server: RedisServer) -> None:
    prefix = f"test:{uuid.uuid4().hex}"
    one = RedisGcra(redis_server.url, per_second=0.1, burst=5, prefix=prefix)
    two = RedisGcra(redis_server.url, per_second=0.1, burst=5, prefix=prefix)
    try:
        decisions = await asyncio.gather(*(limiter.acquire("grant") for limiter in [one, two] * 6))
    finally:
        await one.close()
        await two.close()
    assert sum(d.allowed for d in decisions) == 5
    refused = [d for d in decisions if not d.allowed]
    assert len(refused) == 7 and all(d.retry_after_s > 0 for d in refused)


@pytest.mark.redis
async def test_a_server_clock_stepping_back_does_not_lock_every_grant_out(
    redis_server: RedisServer,
) -> None:
    """A TAT stored an hour ahead (the server clock has since stepped back an hour) costs
    at most a full burst's wait, not the hour."""
    import redis.asyncio as redis

    prefix = f"test:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_server.url)
    limiter = RedisGcra(redis_server.url, per_second=10, burst=5, prefix=prefix)
    try:
        seconds, micros = await client.time()
        hour_ahead = (seconds + 3600) * 1_000_000 + micros
        await client.set(f"{prefix}:grant", hour_ahead, px=3_700_000)
        decision = await limiter.acquire("grant")
        assert not decision.allowed
        assert decision.retry_after_s is not None and decision.retry_after_s <= 0.5
        # Waiting out the advertised delay is enough: the capped TAT was stored.
        await asyncio.sleep(decision.retry_after_s + 0.05)
        assert (await limiter.acquire("grant")).allowed
    finally:
        await limiter.close()
        await client.aclose()


@pytest.mark.redis
async def test_a_redis_refund_gives_back_one_request_to_every_replica(
    redis_server: RedisServer,
) -> None:
    prefix = f"test:{uuid.uuid4().hex}"
    one = RedisGcra(redis_server.url, per_second=0.1, burst=5, prefix=prefix)
    two = RedisGcra(redis_server.url, per_second=0.1, burst=5, prefix=prefix)
    try:
        assert all([(await one.acquire("addr")).allowed for _ in range(5)])
        await one.refund("addr")
        assert (await two.acquire("addr")).allowed  # the one given back, on the other replica
        assert not (await two.acquire("addr")).allowed
        for _ in range(20):
            await two.refund("addr")
        assert [(await one.acquire("addr")).allowed for _ in range(6)] == [True] * 5 + [False]
        await one.refund("never-seen")
    finally:
        await one.close()
        await two.close()


@pytest.mark.parametrize(("waited", "said"), [(0.0, "retry in 52 s"), (51.2, "retry in 1 s")])
async def test_a_refusal_says_in_seconds_when_to_retry(
    clock: Clock, waited: float, said: str
) -> None:
    """The remediation said "retry after the delay in RetryInfo", which only a gRPC
    programmer can follow: it now gives the delay, rounded up to whole seconds (the
    message stays the same; RetryInfo keeps the exact delay)."""
    limiter = LocalGcra(per_second=1 / 60, burst=1)
    await ratelimit.within_limit(limiter, "g", "too many")
    clock.now += 8.5 + waited
    with pytest.raises(ServiceError) as refused:
        await ratelimit.within_limit(limiter, "g", "too many")
    assert refused.value.reason == "RATE_LIMITED"
    assert str(refused.value.message) == "too many"
    assert refused.value.remediation == said
    assert refused.value.retry_after_s == pytest.approx(51.5 - waited)
