"""One way to open a channel: to another service of the instance, over internal mTLS."""

from __future__ import annotations

import grpc

from mosaic.config import InstanceConfig, read_home_file
from mosaic.rpc.interceptors import client_interceptors
from mosaic.rpc.options import CLIENT_OPTIONS


def internal_client_credentials(config: InstanceConfig, identity: str) -> grpc.ChannelCredentials:
    pki = config.internal_pki_dir
    return grpc.ssl_channel_credentials(
        root_certificates=read_home_file(pki / "ca.crt"),
        private_key=read_home_file(pki / f"{identity}.key"),
        certificate_chain=read_home_file(pki / f"{identity}.crt"),
    )


def internal_server_credentials(config: InstanceConfig, service: str) -> grpc.ServerCredentials:
    """mTLS: a client certificate from the internal CA is required to complete the handshake."""
    pki = config.internal_pki_dir
    return grpc.ssl_server_credentials(
        [(read_home_file(pki / f"{service}.key"), read_home_file(pki / f"{service}.crt"))],
        root_certificates=read_home_file(pki / "ca.crt"),
        require_client_auth=True,
    )


def secure_channel(
    target: str,
    credentials: grpc.ChannelCredentials,
    *,
    server_name: str | None = None,
    extra_options: list[tuple[str, int | str]] | None = None,
) -> grpc.aio.Channel:
    """A TLS channel with our keepalive/size options and default-deadline interceptors."""
    options: list[tuple[str, int | str]] = [*CLIENT_OPTIONS, *(extra_options or [])]
    if server_name:
        # Verify the server by its service name whatever address we dial.
        options.append(("grpc.ssl_target_name_override", server_name))
        options.append(("grpc.default_authority", server_name))
    return grpc.aio.secure_channel(
        target, credentials, options=options, interceptors=client_interceptors()
    )


class InternalChannels:
    """One channel per internal target, opened on first use and shared by all stubs."""

    def __init__(self, config: InstanceConfig, identity: str) -> None:
        self._config = config
        self._credentials = internal_client_credentials(config, identity)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, service: str) -> grpc.aio.Channel:
        channel = self._channels.get(service)
        if channel is None:
            channel = secure_channel(
                self._config.internal_address(service), self._credentials, server_name=service
            )
            self._channels[service] = channel
        return channel

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()
