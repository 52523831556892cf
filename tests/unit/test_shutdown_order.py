"""A service's shutdown order: work its calls left running gets a bounded grace while the
channels it needs are still open, then is cancelled; only then are they closed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from federation_gateway.unfinished import UnfinishedWork
from mosaic.cli.instance import create_instance
from mosaic.config import InstanceConfig
from mosaic.rpc import server
from mosaic.rpc.channels import internal_server_credentials
from mosaic.rpc.server import Listener, ServiceHost
from tests.support.instances import free_port_base


@pytest.fixture
def config(tmp_path: Path) -> InstanceConfig:
    return create_instance(tmp_path / "home", name="t", port_base=free_port_base())


def _host(config: InstanceConfig) -> ServiceHost:
    port = config.ports.internal["ca-service"]
    listener = Listener(
        "internal", f"127.0.0.1:{port}", internal_server_credentials(config, "ca-service")
    )
    return ServiceHost("ca-service", [listener])


async def _no_problems() -> list[str]:
    return []


async def test_work_in_progress_at_stop_finishes_before_the_channels_close(
    config: InstanceConfig,
) -> None:
    host = _host(config)
    work = UnfinishedWork()
    happened: list[str] = []
    answer, finishing = asyncio.Event(), asyncio.Event()

    async def store_the_answer() -> None:
        await answer.wait()  # the peer answers only once the stop has begun
        happened.append("stored")

    async def finish(grace_s: float) -> None:
        finishing.set()
        await work.finish(grace_s)

    async def close_channels() -> None:
        happened.append("channels closed")

    running = asyncio.ensure_future(
        host.run(_no_problems, finish=finish, on_stop=close_channels, poll_s=0.05)
    )
    work.start(store_the_answer())
    host.request_stop()
    await asyncio.wait_for(finishing.wait(), 10)
    answer.set()
    await asyncio.wait_for(running, 10)

    assert happened == ["stored", "channels closed"]


async def test_work_that_overruns_the_grace_is_cancelled_and_the_service_stops(
    config: InstanceConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "FINISH_GRACE_S", 0.1)
    host = _host(config)
    work = UnfinishedWork()
    happened: list[str] = []

    async def never_answered() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            happened.append("cancelled")
            raise

    async def close_channels() -> None:
        happened.append("channels closed")

    running = asyncio.ensure_future(
        host.run(_no_problems, finish=work.finish, on_stop=close_channels, poll_s=0.05)
    )
    work.start(never_answered())
    host.request_stop()
    await asyncio.wait_for(running, 10)

    assert happened == ["cancelled", "channels closed"]
    assert len(work) == 0
