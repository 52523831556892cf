"""`mosaic gateway health SERVICE`: one grpc.health.v1 Check, for container health checks.

The check goes where `mosaic gateway doctor` goes: to an internal service's mTLS listener
as the operator identity, or to the gateway's admin listener with the admin token. Exit 0
only when the service answers SERVING; any other answer, or none, is exit 1.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mosaic.cli.admin import load_or_fail, service_address, service_channel
from mosaic.cli.apps import gateway_app
from mosaic.cli.output import EXIT_USAGE, emit, fail, state
from mosaic.config import SERVICES, START_ORDER, InstanceConfig

HEALTH_STATUS = health_pb2.HealthCheckResponse.ServingStatus


async def check_health(
    config: InstanceConfig, service: str, deadline_s: float
) -> tuple[str, float, str]:
    """(status name, round trip in ms, the address dialled) of one Health/Check of ``service``."""
    channel, metadata, address = service_channel(config, service)
    started = time.perf_counter()
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), metadata=metadata, timeout=deadline_s
        )
    return HEALTH_STATUS.Name(reply.status), (time.perf_counter() - started) * 1000, address


@gateway_app.command()
def health(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="One of: " + ", ".join(START_ORDER))],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 3.0,
) -> None:
    """Exit 0 only if SERVICE answers SERVING to a gRPC health check (for container probes)."""
    if service not in SERVICES:
        fail(
            ctx,
            "USAGE",
            f"unknown service {service!r}",
            "one of: " + ", ".join(START_ORDER),
            exit_code=EXIT_USAGE,
        )
    config = load_or_fail(ctx, state(ctx).home)
    try:
        status, rtt, address = asyncio.run(check_health(config, service, timeout))
    except OSError as exc:
        # The operator certificate or admin token file is missing or unreadable.
        fail(
            ctx,
            "CONFIG",
            f"cannot read the credentials to reach {service}: {exc.strerror or type(exc).__name__}",
            "run the command where the instance home is mounted (and readable), "
            "or re-run `mosaic init --renew-internal`",
        )
    except grpc.aio.AioRpcError as err:
        target = service_address(config, service)
        fail(
            ctx,
            err.code().name,
            f"{service} did not answer the health check at {target}",
            f"start it: `mosaic up` (all) or `mosaic serve {service}`",
        )
    serving = status == "SERVING"
    doc = {
        "service": service,
        "address": address,
        "status": status,
        "serving": serving,
        "latency_ms": round(rtt, 3),
    }
    emit(ctx, doc, lambda: typer.echo(f"{service} {status} ({address}, {rtt:.1f} ms)"))
    if not serving:
        raise typer.Exit(1)
