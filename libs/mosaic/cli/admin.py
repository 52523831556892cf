"""The CLI's connections: the gateway's admin listener (admin token) and, for the doctor,
every internal service (operator certificate)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import typer

from mosaic.cli.output import INTERRUPTED_ADVICE, fail
from mosaic.config import (
    GATEWAY,
    OPERATOR,
    ConfigError,
    InstanceConfig,
    load_config,
    read_home_file,
)
from mosaic.errors import RemoteError
from mosaic.federation.v1 import gateway_pb2_grpc
from mosaic.rpc.channels import internal_client_credentials, secure_channel

T = TypeVar("T")


class AlreadyDone(Exception):
    """The gateway refused a change because what it asked for holds already (call_admin's
    ``done_if``): the command has nothing to do and succeeds."""


def admin_channel(config: InstanceConfig) -> grpc.aio.Channel:
    """ConfigError when the instance's internal CA certificate cannot be read."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_bytes(config.internal_pki_dir / "ca.crt")
    )
    return secure_channel(config.admin_address, credentials, server_name=GATEWAY)


def admin_metadata(config: InstanceConfig) -> tuple[tuple[str, str], ...]:
    """ConfigError when the admin token file cannot be read (never its content)."""
    token = _read_bytes(config.admin_token_file).decode("utf-8", "replace").strip()
    return (("authorization", f"Bearer {token}"),)


def _read_bytes(path: Path) -> bytes:
    return read_home_file(
        path,
        "run mosaic as the user that owns the instance home, "
        "or check that file (`mosaic init` makes it)",
    )


def operator_channel(config: InstanceConfig, service: str) -> grpc.aio.Channel:
    return secure_channel(
        config.internal_address(service),
        internal_client_credentials(config, OPERATOR),
        server_name=service,
    )


def service_channel(
    config: InstanceConfig, service: str
) -> tuple[grpc.aio.Channel, tuple[tuple[str, str], ...], str]:
    """(channel, call metadata, address) for the operator to reach ``service``.

    The gateway through its admin listener with the admin token; every other service
    through its internal listener with the operator certificate.
    """
    if service == GATEWAY:
        return admin_channel(config), admin_metadata(config), service_address(config, service)
    return operator_channel(config, service), (), service_address(config, service)


def service_address(config: InstanceConfig, service: str) -> str:
    """Where the operator dials ``service`` (the gateway: its admin listener)."""
    return config.admin_address if service == GATEWAY else config.internal_address(service)


def load_or_fail(ctx: typer.Context, home: str | None) -> InstanceConfig:
    try:
        return load_config(home)
    except ConfigError as exc:
        fail(ctx, "CONFIG", exc.message, exc.remediation)


def call_admin(
    ctx: typer.Context,
    config: InstanceConfig,
    action: Callable[
        [gateway_pb2_grpc.FederationAdminStub, tuple[tuple[str, str], ...]], Awaitable[T]
    ],
    *,
    error_metadata: tuple[str, ...] = (),
    if_interrupted: str = "",
    done_if: str = "",
) -> T:
    """Run one admin call; a failed RPC becomes the CLI's error output and exit code 1.

    ``error_metadata`` names ErrorInfo metadata keys copied into the error document (e.g.
    the peer's own ``server_reason`` for calls that reach another gateway).
    ``if_interrupted``: for a call that changes something, what the gateway may still do
    or have done when Ctrl-C stops the CLI waiting, and how to check (output.interrupted);
    empty for a call that changes nothing. ``done_if``: the refusal reason that means the
    change holds already (e.g. PEER_ALREADY_SUSPENDED); it raises AlreadyDone instead.
    """
    ctx.meta[INTERRUPTED_ADVICE] = if_interrupted

    async def run() -> T:
        async with admin_channel(config) as channel:
            stub = gateway_pb2_grpc.FederationAdminStub(channel)
            return await action(stub, admin_metadata(config))

    try:
        result = asyncio.run(run())
    except ConfigError as exc:
        fail(ctx, "CONFIG", exc.message, exc.remediation)
    except grpc.aio.AioRpcError as err:
        remote = RemoteError.from_rpc_error(err)
        if done_if and remote.reason == done_if:
            del ctx.meta[INTERRUPTED_ADVICE]
            raise AlreadyDone(remote.message) from None
        extra: dict[str, Any] = {k: v for k, v in remote.metadata.items() if k in error_metadata}
        if remote.retry_after_s is not None:
            extra["retry_after_s"] = remote.retry_after_s
        if remote.violations:
            extra["violations"] = [f"{f}: {d}" for f, d in remote.violations]
        if _not_reached(remote):
            fail(
                ctx,
                remote.reason,
                f"the gateway of instance {config.name!r} is not running or not reachable "
                f"at its admin address {config.admin_address}"
                + (" (connection refused)" if "Connection refused" in remote.message else ""),
                "start the instance with `mosaic up` (or `mosaic serve federation-gateway`); "
                "`mosaic gateway doctor` shows which services answer",
            )
        remediation = remote.remediation
        if remote.code == grpc.StatusCode.UNAVAILABLE and not remediation:
            remediation = "is the gateway running? start it with `mosaic up`"
        fail(ctx, remote.reason, remote.message, remediation, extra=extra)
    del ctx.meta[INTERRUPTED_ADVICE]  # the call is over: a later Ctrl-C interrupts no call
    return result


def _not_reached(remote: RemoteError) -> bool:
    """Whether the call never reached the gateway: gRPC's own UNAVAILABLE for a connection
    that failed (no ErrorInfo, so the reason is the bare status name). A running gateway's
    UNAVAILABLE answers carry a reason of their own and are reported as they are."""
    return (
        remote.code == grpc.StatusCode.UNAVAILABLE
        and remote.reason == grpc.StatusCode.UNAVAILABLE.name
        and remote.message.startswith("failed to connect to all addresses")
    )
