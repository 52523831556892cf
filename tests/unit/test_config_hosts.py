"""Hosts in an instance's configuration: every address it hands out or listens on is one
gRPC and peers can read, IPv6 included, and a host that is not one is refused up front."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from federation_gateway.admin.enrollment import _ENDPOINT
from mosaic import config
from mosaic.cli.instance import create_instance
from mosaic.config import GATEWAY, RESOURCES, ConfigError, InstanceConfig, find_free_port_base


def _config(tmp_path: Path, **kw: object) -> InstanceConfig:
    return InstanceConfig(home=tmp_path, name="b", port_base=7400, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "federation", "enrollment"),
    [
        ("gw.example.org", "gw.example.org:7443", "gw.example.org:7444"),
        ("192.0.2.7", "192.0.2.7:7443", "192.0.2.7:7444"),
        ("2001:db8::5", "[2001:db8::5]:7443", "[2001:db8::5]:7444"),
        ("::1", "[::1]:7443", "[::1]:7444"),
    ],
)
def test_endpoints_handed_to_peers_are_host_port(
    tmp_path: Path, host: str, federation: str, enrollment: str
) -> None:
    config = _config(tmp_path, host=host)
    assert config.federation_endpoint == federation
    assert config.enrollment_endpoint == enrollment
    # What A accepts from B's redeem answer: an unbracketed IPv6 endpoint was refused,
    # after B had already spent the token.
    assert _ENDPOINT.fullmatch(config.federation_endpoint)


def test_ipv6_listen_and_dial_addresses_are_bracketed(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        host="::1",
        bind_host="::",
        internal_hosts={RESOURCES: "fd00::54", GATEWAY: "::1"},
    )
    assert config.listen_address(7443) == "[::]:7443"
    assert config.internal_address(RESOURCES) == "[fd00::54]:7454"
    assert config.admin_address == "[::1]:7440"


@pytest.mark.parametrize(
    "host",
    [
        "",
        "gw example.org",
        "[2001:db8::5]",
        "gw.example.org:7443",
        "-gw",
        "a" * 254,
        "2001:db8::g",
        "fe80::1%eth0",
    ],
)
def test_a_host_that_is_no_name_or_address_is_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="not a DNS name or an IP address"):
        _config(tmp_path, host=host)
    with pytest.raises(ConfigError, match="bind_host"):
        _config(tmp_path, host="gw", bind_host=host)
    with pytest.raises(ConfigError, match="internal_hosts"):
        _config(tmp_path, host="gw", internal_hosts={RESOURCES: host})


def test_init_with_a_bad_host_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(ConfigError):
        create_instance(home, name="b", host="gw.example.org:7443")
    assert not home.exists()


def test_port_bases_picked_one_after_another_never_repeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two gateways picked before either listens used to share a block 1 time in 127."""
    monkeypatch.setattr(config, "_HANDED_OUT", set())
    # Every block free, whatever else listens on this machine right now.
    monkeypatch.setattr(socket.socket, "connect_ex", lambda _self, _address: 1)
    bases = [find_free_port_base(low=23000, high=25000) for _ in range(20)]
    assert len(set(bases)) == 20
    with pytest.raises(ConfigError, match="no free block"):
        find_free_port_base(low=23000, high=25000)
