"""The gateway's watches (watch.follow): how soon they reconnect, and that one waiting for
its channel still stops at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from federation_gateway import watch
from federation_gateway.revocations import RevokedSerials
from mosaic.federation.v1 import ca_pb2_grpc
from mosaic.rpc.options import CLIENT_OPTIONS
from tests.support.procs import free_port


async def test_the_reconnect_sleep_never_exceeds_max_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """However long the server stays away, the next attempt comes within MAX_BACKOFF_S
    (the jitter must not stretch the longest sleep past it)."""
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) >= 300:
            raise asyncio.CancelledError
        await real_sleep(0)

    monkeypatch.setattr(watch.asyncio, "sleep", recorded_sleep)
    monkeypatch.setattr(watch.random, "random", lambda: 0.999)  # the largest jitter

    def open_stream() -> AsyncIterator[Any]:
        async def broken() -> AsyncIterator[Any]:
            raise RuntimeError("server away")
            yield  # pragma: no cover - makes this an async generator

        return broken()

    with pytest.raises(asyncio.CancelledError):
        await watch.follow("test", open_stream, lambda _: None, lambda: None)
    assert max(sleeps) <= watch.MAX_BACKOFF_S
    assert sleeps[-1] == pytest.approx(watch.MAX_BACKOFF_S)


class _CountingSerials(RevokedSerials):
    def __init__(self) -> None:
        super().__init__()
        self.losses = 0

    def lost(self) -> None:
        self.losses += 1
        super().lost()


async def test_the_revocation_watch_waits_for_its_channel_and_stops_at_once() -> None:
    """With ca-service away the stream waits for the channel (wait_for_ready) rather than
    failing and sleeping, so it opens as soon as ca-service is back; the set stays not
    loaded meanwhile, and cancelling the job (shutdown) ends the waiting call at once."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}", options=CLIENT_OPTIONS)
    serials = _CountingSerials()
    job = asyncio.create_task(serials.run(ca_pb2_grpc.CertificateAuthorityStub(channel)))
    try:
        await asyncio.sleep(1.5)  # past gRPC's first reconnect backoff (1 s)
        assert not job.done()
        assert serials.losses == 0  # no attempt failed: it is waiting, not retrying
        assert not serials.loaded
        job.cancel()
        await asyncio.wait({job}, timeout=1.0)
        assert job.cancelled()
    finally:
        job.cancel()
        await channel.close()
