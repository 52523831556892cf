"""Identical concurrent reads share one resource-service call, and a read of a busy key
(its last read was shared) waits COALESCE_S before it is sent, so that more requests share
it. A lone request, or one peer's requests one after another, never wait; a revoke during
the wait still refuses every request held in it.

Driven through the whole gate (FederationServicer.List) with a real GrantCache,
RevokedSerials and LocalGcra, and a fake resource-service that counts its calls. The
waits are set long (seconds) where a test asserts that a request did not wait, and every
await is bounded, so a wrong wait fails rather than hangs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from federation_gateway import federation
from federation_gateway.federation import FederationServicer
from mosaic.errors import ServiceError
from mosaic.federation.v1 import ca_pb2, common_pb2, gateway_pb2, resources_pb2
from tests.support.federation_fakes import (
    GRANT_ID,
    SUBJECT,
    PeerContext,
    RecordingAudit,
    gated_servicer,
    grant_reply,
    known_identity,
)

SERIAL = "c0a1"
PEM = b"pem-c0a1"
ROWS = resources_pb2.ListResourcesResponse(
    items=[common_pb2.ResourceItem(id="t-1", resource="tasks", owner_user_id=SUBJECT)]
)
# Long enough that a request which waited it could not finish within BOUND_S.
LONG_WAIT_S = 30.0
BOUND_S = 5.0


@pytest.fixture(autouse=True)
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    known_identity(monkeypatch, serial=SERIAL, grant_id=GRANT_ID, subject=SUBJECT)


class Source:
    """resource-service: counts ListResources calls; while ``held`` is set, a call waits
    until it is cleared."""

    def __init__(self) -> None:
        self.calls: list[resources_pb2.ListResourcesRequest] = []
        self.held = False
        self._released = asyncio.Event()

    async def __call__(self, method: str, request: Any) -> Any:
        if method == "GetGrant":
            return grant_reply(cert_serial=SERIAL)
        self.calls.append(request)
        if self.held:
            await self._released.wait()
        return ROWS

    def hold(self) -> None:
        self.held = True
        self._released.clear()

    def release(self) -> None:
        self.held = False
        self._released.set()


def list_call(
    servicer: FederationServicer, page_size: int = 0
) -> asyncio.Future[gateway_pb2.ListResponse]:
    request = gateway_pb2.ListRequest(resource="tasks", page_size=page_size)
    return asyncio.ensure_future(servicer.List(request, PeerContext(PEM)))


async def wait_for_calls(source: Source, count: int) -> None:
    async with asyncio.timeout(BOUND_S):
        while len(source.calls) < count:
            await asyncio.sleep(0.005)


async def shared_read(servicer: FederationServicer, source: Source, sharers: int) -> None:
    """``sharers`` identical Lists at once, held at the source until all of them wait for
    its one call: the key is busy afterwards."""
    before = len(source.calls)
    source.hold()
    calls = [list_call(servicer) for _ in range(sharers)]
    await wait_for_calls(source, before + 1)
    await asyncio.sleep(0.05)  # the others reach the read and join it
    source.release()
    async with asyncio.timeout(BOUND_S):
        pages = await asyncio.gather(*calls)
    assert len(source.calls) == before + 1
    assert [[i.id for i in p.items] for p in pages] == [["t-1"]] * sharers


@pytest.fixture
def source() -> Source:
    return Source()


@pytest.fixture
def servicer(source: Source) -> FederationServicer:
    return gated_servicer(source, audit=RecordingAudit())


async def test_identical_concurrent_reads_share_one_call(
    servicer: FederationServicer, source: Source
) -> None:
    await shared_read(servicer, source, sharers=5)


async def test_a_busy_key_s_read_waits_for_more_sharers(
    servicer: FederationServicer, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(federation, "COALESCE_S", 0.5)
    await shared_read(servicer, source, sharers=2)

    first = list_call(servicer)
    await asyncio.sleep(0.1)
    assert len(source.calls) == 1  # not sent yet: the key is busy
    second = list_call(servicer)  # arrives during the wait, and shares the read
    async with asyncio.timeout(BOUND_S):
        pages = await asyncio.gather(first, second)
    assert len(source.calls) == 2
    assert [[i.id for i in p.items] for p in pages] == [["t-1"], ["t-1"]]


async def test_requests_one_after_another_never_wait(
    servicer: FederationServicer, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads shared by no one leave the key idle: a peer polling alone is answered at once."""
    monkeypatch.setattr(federation, "COALESCE_S", LONG_WAIT_S)
    for _ in range(3):
        async with asyncio.timeout(BOUND_S):
            await list_call(servicer)
    assert len(source.calls) == 3


async def test_a_key_is_busy_only_for_a_while(
    servicer: FederationServicer, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(federation, "COALESCE_S", LONG_WAIT_S)
    monkeypatch.setattr(federation, "BUSY_FOR_S", 0.05)
    await shared_read(servicer, source, sharers=2)
    await asyncio.sleep(0.2)
    async with asyncio.timeout(BOUND_S):
        await list_call(servicer)
    assert len(source.calls) == 2


async def test_other_reads_do_not_wait_for_a_busy_key(
    servicer: FederationServicer, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(federation, "COALESCE_S", LONG_WAIT_S)
    await shared_read(servicer, source, sharers=2)
    async with asyncio.timeout(BOUND_S):
        page = await list_call(servicer, page_size=7)  # another cursor size: another key
    assert [i.id for i in page.items] == ["t-1"]
    assert source.calls[-1].limit == 7


async def test_busy_keys_are_bounded(
    servicer: FederationServicer, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many distinct busy keys (page sizes here) never grow the gateway's memory past
    BUSY_KEYS_MAX; keys dropped are only read at once again."""
    monkeypatch.setattr(federation, "BUSY_KEYS_MAX", 4)
    monkeypatch.setattr(federation, "COALESCE_S", 0.0)
    for size in range(1, 11):
        source.hold()
        calls = [list_call(servicer, page_size=size) for _ in range(2)]
        await wait_for_calls(source, size)
        await asyncio.sleep(0.02)
        source.release()
        async with asyncio.timeout(BOUND_S):
            await asyncio.gather(*calls)
        assert len(servicer._busy) <= 4
    assert len(source.calls) == 10


async def test_a_revoke_during_the_wait_refuses_every_request_held_in_it(
    servicer: FederationServicer, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(federation, "COALESCE_S", 0.3)
    await shared_read(servicer, source, sharers=2)

    held = [list_call(servicer) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert len(source.calls) == 1  # all three wait for the busy key's read
    servicer._revoked.apply(
        ca_pb2.WatchRevocationsResponse(revocations=[ca_pb2.Revocation(serial=SERIAL)])
    )
    async with asyncio.timeout(BOUND_S):
        results = await asyncio.gather(*held, return_exceptions=True)
    assert [r.reason if isinstance(r, ServiceError) else r for r in results] == ["CERT_REVOKED"] * 3
