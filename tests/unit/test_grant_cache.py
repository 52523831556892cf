"""GrantCache: concurrent misses share one GetGrant, and no caller's fate is another's."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import grpc
import pytest

from federation_gateway.authz import GrantCache, GrantView, Refusal
from mosaic.errors import ServiceError
from mosaic.federation.v1 import grants_pb2

GRANT_ID = str(uuid.uuid4())
PEER_ID = str(uuid.uuid4())
SUBJECT = str(uuid.uuid4())


def _reply(
    peer_state: grants_pb2.PeerState.ValueType = grants_pb2.PEER_STATE_ACTIVE,
) -> grants_pb2.GetGrantResponse:
    return grants_pb2.GetGrantResponse(
        grant=grants_pb2.Grant(
            id=GRANT_ID,
            peer_id=PEER_ID,
            subject_user_id=SUBJECT,
            status=grants_pb2.GRANT_STATUS_ACTIVE,
            scope_json=json.dumps({"resources": ["tasks"]}),
        ),
        peer=grants_pb2.Peer(
            id=PEER_ID,
            direction=grants_pb2.PEER_DIRECTION_INBOUND,
            state=peer_state,
            cert_serial="01ab",
        ),
    )


class _Unavailable(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
        )


class FakeGrants:
    """GetGrant that answers only when released, with the next reply or error queued."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.answers: list[Any] = []

    async def GetGrant(self, request: grants_pb2.GetGrantRequest, timeout: float) -> Any:
        self.calls += 1
        await self.release.wait()
        answer = self.answers.pop(0) if self.answers else _reply()
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_misses_share_one_fetch() -> None:
    grants = FakeGrants()
    cache = GrantCache(grants, ttl_s=60)  # type: ignore[arg-type]
    callers = [asyncio.create_task(cache.get(GRANT_ID)) for _ in range(20)]
    await _settle()
    grants.release.set()
    results = await asyncio.gather(*callers)
    assert grants.calls == 1
    assert all(isinstance(r, GrantView) and r is results[0] for r in results)
    assert await cache.get(GRANT_ID) is results[0]  # cached
    assert grants.calls == 1


async def test_first_caller_going_away_does_not_fail_the_others() -> None:
    """The caller that started the fetch is cancelled (its peer hung up): the requests that
    joined it still get the grant, not a CancelledError they did not ask for."""
    grants = FakeGrants()
    cache = GrantCache(grants, ttl_s=60)  # type: ignore[arg-type]
    first = asyncio.create_task(cache.get(GRANT_ID))
    await _settle()
    joiners = [asyncio.create_task(cache.get(GRANT_ID)) for _ in range(3)]
    await _settle()
    first.cancel()
    await _settle()
    grants.release.set()
    results = await asyncio.gather(*joiners)
    assert all(isinstance(r, GrantView) for r in results)
    assert first.cancelled()
    assert grants.calls == 1


async def test_a_failed_fetch_fails_every_waiter_and_is_not_cached() -> None:
    grants = FakeGrants()
    grants.answers = [_Unavailable()]
    cache = GrantCache(grants, ttl_s=60)  # type: ignore[arg-type]
    callers = [asyncio.create_task(cache.get(GRANT_ID)) for _ in range(3)]
    await _settle()
    grants.release.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, ServiceError)
        assert outcome.code == grpc.StatusCode.UNAVAILABLE
    assert isinstance(await cache.get(GRANT_ID), GrantView)  # asked again, not cached
    assert grants.calls == 2


async def test_a_change_during_a_fetch_is_served_but_not_cached() -> None:
    """A suspension lands while GetGrant is in flight: the answer fetched before it may be
    served to the requests already waiting, but the next request asks again."""
    grants = FakeGrants()
    grants.answers = [_reply(), _reply(grants_pb2.PEER_STATE_SUSPENDED)]
    cache = GrantCache(grants, ttl_s=60)  # type: ignore[arg-type]
    waiting = asyncio.create_task(cache.get(GRANT_ID))
    await _settle()
    cache.invalidate(peer_ids=[PEER_ID])
    grants.release.set()
    assert isinstance(await waiting, GrantView)
    after = await cache.get(GRANT_ID)
    assert isinstance(after, Refusal) and after.reason == "PEER_SUSPENDED"
    assert grants.calls == 2


async def test_entries_expire_after_the_ttl() -> None:
    grants = FakeGrants()
    grants.release.set()
    cache = GrantCache(grants, ttl_s=0.0)  # type: ignore[arg-type]
    await cache.get(GRANT_ID)
    await cache.get(GRANT_ID)
    assert grants.calls == 2


async def test_a_fetch_older_than_the_ttl_is_not_joined(monkeypatch: Any) -> None:
    """A slow GetGrant read the grant before a change this gateway did not hear of (the
    change stream down, another replica): a request arriving a TTL after that fetch
    began must not be served its answer, any more than a cached entry that old."""
    from federation_gateway import authz

    now = [100.0]
    monkeypatch.setattr(authz.time, "monotonic", lambda: now[0])
    grants = FakeGrants()
    revoked = _reply()
    revoked.grant.status = grants_pb2.GRANT_STATUS_REVOKED
    grants.answers = [_reply(), revoked]
    cache = GrantCache(grants, ttl_s=0.5)  # type: ignore[arg-type]

    early = asyncio.ensure_future(cache.get(GRANT_ID))
    await _settle()
    now[0] += 0.3  # within the TTL of the fetch in flight: joined
    joined = asyncio.ensure_future(cache.get(GRANT_ID))
    await _settle()
    assert grants.calls == 1
    now[0] += 0.3  # 0.6 s after it began: a fetch of its own
    late = asyncio.ensure_future(cache.get(GRANT_ID))
    await _settle()
    assert grants.calls == 2
    grants.release.set()

    assert isinstance(await early, GrantView) and isinstance(await joined, GrantView)
    answer = await late
    assert isinstance(answer, Refusal) and answer.reason == "GRANT_REVOKED"


@pytest.mark.parametrize("named", ["grant_ids", "peer_ids"])
async def test_a_change_event_drops_the_entry_within_the_ttl(named: str) -> None:
    """grants-service's WatchChanges naming the grant, or its peer, is heard at once: the
    next request asks again and gets the new (refused) answer, long before the TTL."""
    change = grants_pb2.WatchChangesResponse(
        **{named: [GRANT_ID if named == "grant_ids" else PEER_ID]}
    )
    grants = FakeGrants()
    grants.release.set()
    grants.answers = [_reply(), _reply(grants_pb2.PEER_STATE_SUSPENDED)]
    cache = GrantCache(grants, ttl_s=60)  # type: ignore[arg-type]
    assert isinstance(await cache.get(GRANT_ID), GrantView)
    cache.on_change(change)
    after = await cache.get(GRANT_ID)
    assert grants.calls == 2
    assert isinstance(after, Refusal) and after.reason == "PEER_SUSPENDED"
