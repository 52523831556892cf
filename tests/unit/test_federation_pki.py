"""The gateway's federation TLS server certificate: renewal under the same root, the
key/certificate pair check at start, and the doctor's expiry rows."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca_service.backends.local import issue_server_certificate, unencrypted_private_key_pem
from ca_service.keys import (
    load_backend,
    load_federation_intermediate,
    renew_federation_server_certificate,
    root_fingerprint,
)
from federation_gateway.app import federation_ca_check, server_certificate_check, server_key_pair
from mosaic.cli.instance import create_instance
from mosaic.config import ConfigError, InstanceConfig
from mosaic.pki import SERVER_CERT, SERVER_KEY, write_private, write_public
from mosaic.runtime import load_sealer
from mosaic.sealing import generate_secret
from tests.support.instances import free_port_base


@pytest.fixture
def config(tmp_path: Path) -> InstanceConfig:
    return create_instance(
        tmp_path / "home", name="b", host="gateway-b.example.org", port_base=free_port_base()
    )


def _server(config: InstanceConfig) -> tuple[x509.Certificate, bytes]:
    fed = config.federation_pki_dir
    return x509.load_pem_x509_certificate((fed / SERVER_CERT).read_bytes()), (
        fed / SERVER_KEY
    ).read_bytes()


def _names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(str(n.value) for n in san)


def test_renewal_replaces_certificate_and_key_under_the_same_root(
    config: InstanceConfig,
) -> None:
    old_cert, old_key = _server(config)
    pin = root_fingerprint(config)

    returned = renew_federation_server_certificate(config, load_sealer(config))

    new_cert, new_key = _server(config)
    assert returned.serial_number == new_cert.serial_number != old_cert.serial_number
    assert new_key != old_key and b"PRIVATE KEY" in new_key
    assert (config.federation_pki_dir / SERVER_KEY).stat().st_mode & 0o077 == 0
    assert (
        _names(new_cert) == _names(old_cert) == ["127.0.0.1", "gateway-b.example.org", "localhost"]
    )
    intermediate, _ = load_federation_intermediate(config, load_sealer(config))
    new_cert.verify_directly_issued_by(intermediate)  # raises if not
    assert root_fingerprint(config) == pin  # what peers pinned still holds
    assert server_key_pair(config)  # the gateway accepts the new pair
    assert new_cert.not_valid_after_utc > old_cert.not_valid_after_utc - dt.timedelta(minutes=1)


def test_renewal_with_another_seal_secret_fails_and_changes_nothing(
    config: InstanceConfig,
) -> None:
    before = _server(config)
    write_private(config.seal_secret_file, generate_secret().encode() + b"\n")

    with pytest.raises(ConfigError) as err:
        renew_federation_server_certificate(config, load_sealer(config))

    assert "no longer has configured" in err.value.message
    assert "mosaic seal rotate" in err.value.remediation
    assert _server(config) == before


def test_ca_key_sealed_under_a_removed_previous_secret_says_to_put_it_back(
    config: InstanceConfig,
) -> None:
    """`seal rotate --generate`, then seal.previous.key removed before `seal rotate`: the CA
    key is intact, sealed under the removed secret. The error names that secret's file and
    the steps that mend it, not a restore from backup or a new instance."""
    old_key_id = load_sealer(config).key_id
    previous = config.previous_seal_secret_file
    previous.write_bytes(config.seal_secret_file.read_bytes())
    write_private(config.seal_secret_file, generate_secret().encode() + b"\n")
    previous.unlink()

    with pytest.raises(ConfigError) as err:
        load_backend(config, load_sealer(config))

    message, remediation = err.value.message, err.value.remediation
    assert "intermediate.key.sealed" in message and old_key_id in message
    assert "no longer has configured" in message
    assert str(previous) in remediation
    assert "restart the services, then run `mosaic seal rotate`" in remediation
    assert "SealError" not in message + remediation
    assert "mosaic init" not in remediation and "backup" not in remediation


def test_gateway_refuses_a_key_that_is_not_its_certificates(config: InstanceConfig) -> None:
    stray = ec.generate_private_key(ec.SECP256R1())
    write_private(config.federation_pki_dir / SERVER_KEY, unencrypted_private_key_pem(stray))

    with pytest.raises(ConfigError) as err:
        server_key_pair(config)

    assert "does not belong" in err.value.message
    assert "--renew-federation-server" in err.value.remediation
    renew_federation_server_certificate(config, load_sealer(config))
    assert server_key_pair(config)  # renewing mends it


@pytest.mark.parametrize("damage", [b"", b"-----BEGIN CERTIFICATE-----\nnot base64\n"])
def test_gateway_refuses_an_unreadable_certificate(config: InstanceConfig, damage: bytes) -> None:
    write_public(config.federation_pki_dir / SERVER_CERT, damage)
    with pytest.raises(ConfigError) as err:
        server_key_pair(config)
    assert "cannot be read" in err.value.message
    assert "--renew-federation-server" in err.value.remediation


async def test_doctor_rows_fail_fourteen_days_before_expiry(config: InstanceConfig) -> None:
    fed = config.federation_pki_dir
    fresh = await server_certificate_check(config, (fed / SERVER_CERT).read_bytes())
    ca = await federation_ca_check(config)
    assert (fresh.name, fresh.ok, ca.name, ca.ok) == (
        "federation_certificate",
        True,
        "federation_ca",
        True,
    )
    assert "364 days" in fresh.detail and not fresh.remediation

    intermediate, key = load_federation_intermediate(config, load_sealer(config))
    cert, cert_key = issue_server_certificate(
        intermediate,
        key,
        common_name="b federation gateway",
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
        lifetime=dt.timedelta(days=3),
    )
    write_private(fed / SERVER_KEY, unencrypted_private_key_pem(cert_key))
    write_public(fed / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))
    serving = (fed / SERVER_CERT).read_bytes()
    expiring = await server_certificate_check(config, serving)
    assert not expiring.ok and "2 days" in expiring.detail
    assert "mosaic init --renew-federation-server" in expiring.remediation

    (fed / SERVER_CERT).unlink()
    missing = await server_certificate_check(config, serving)
    assert not missing.ok and "unreadable" in missing.detail and missing.remediation


def test_renewal_names_the_current_host(config: InstanceConfig) -> None:
    """MOSAIC_HOST (or an edited `host`) moved the gateway: renewing issues for the new name."""
    moved = dataclasses.replace(config, host="gateway-b2.example.org")
    cert = renew_federation_server_certificate(moved, load_sealer(moved))
    assert _names(cert) == ["127.0.0.1", "gateway-b2.example.org", "localhost"]


@pytest.mark.parametrize("which", ["current", "previous"])
def test_a_seal_secret_file_that_is_not_text_is_refused_without_quoting_it(
    config: InstanceConfig, which: str
) -> None:
    raw = b"AB\xff\x9c" + bytes(range(0x80, 0xC0))
    path = config.seal_secret_file if which == "current" else config.previous_seal_secret_file
    write_private(path, raw)

    with pytest.raises(ConfigError) as err:
        load_sealer(config)

    assert "is not text" in err.value.message
    shown = f"{err.value.message} {err.value.remediation} {err.value!r}"
    assert "0xff" not in shown and "\\xff" not in shown
    assert err.value.__cause__ is None and err.value.__suppress_context__
