"""Creating an instance home: configuration, secrets, internal PKI and federation PKI."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

from mosaic.cli.home_lock import lock_home
from mosaic.config import (
    CONFIG_FILE,
    OPERATOR,
    SERVICES,
    ConfigError,
    InstanceConfig,
    RateLimitConfig,
    StepCAConfig,
    to_async_postgres_url,
)
from mosaic.pki import (
    KeyPair,
    create_internal_ca,
    issue_internal_certificate,
    write_private,
    write_public,
)
from mosaic.sealing import Sealer, generate_secret, parse_secret, seal_context

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
STEPCA_KEY_FILE = "stepca-provisioner.jwk.sealed"


def stepca_key_context() -> str:
    return seal_context("files", "secrets", STEPCA_KEY_FILE)


def create_instance(
    home: Path,
    *,
    name: str,
    host: str = "127.0.0.1",
    port_base: int = 7400,
    ca_backend: str = "local",
    db_url: str = "",
    valkey_url: str = "",
    step_ca: StepCAConfig | None = None,
    step_ca_private_jwk: dict[str, object] | None = None,
    step_ca_root_pem: bytes | None = None,
    rate_limit: RateLimitConfig | None = None,
    public_federation_port: int | None = None,
    public_enrollment_port: int | None = None,
) -> InstanceConfig:
    """Write a new instance home; refuse to overwrite an existing one (ConfigError) or to
    write a home another process holds (HomeBusy: a concurrent init).

    ``instance.toml`` is private (0600) like the secrets: its database and Valkey URLs may
    carry passwords. With step-ca, ``step_ca_root_pem`` is written to
    ``step_ca.root_file`` only once the home is known to be new.
    """
    if not NAME_RE.match(name):
        raise ConfigError(
            f"invalid instance name {name!r}",
            remediation="use 1-32 lowercase letters, digits and dashes (first: letter or digit)",
        )
    if ca_backend not in ("local", "step-ca"):
        raise ConfigError(
            f"unknown CA backend {ca_backend!r}", remediation="use --ca local or --ca step-ca"
        )
    if ca_backend == "step-ca" and (step_ca is None or step_ca_private_jwk is None):
        raise ConfigError(
            "the step-ca backend needs its URL, root, DNS name and provisioner key",
            remediation=(
                "pass --step-ca-url, --step-ca-root, --step-ca-dns-name and "
                "--step-ca-provisioner-key"
            ),
        )
    if db_url:
        to_async_postgres_url(db_url)  # validates the scheme
    if valkey_url and not valkey_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            "the Valkey URL must start with redis://, rediss:// or unix://",
            remediation="pass --valkey redis://HOST:6379/0",
        )
    if (home / CONFIG_FILE).exists():
        raise _already_exists(home)
    config = InstanceConfig(
        home=home,
        name=name,
        host=host,
        port_base=port_base,
        ca_backend=ca_backend,
        db_url=db_url,
        valkey_url=valkey_url,
        step_ca=step_ca,
        rate_limit=rate_limit or RateLimitConfig(),
        public_federation_port=public_federation_port,
        public_enrollment_port=public_enrollment_port,
    )
    config.ports  # noqa: B018 - validates the port base before anything is written
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Two inits of one home at once would each write half of it (one's seal secret, the
    # other's sealed keys): the second is refused (HomeBusy) before it writes anything.
    lock = lock_home(home, "init", name)
    try:
        if (home / CONFIG_FILE).exists():  # an init that finished since the check above
            raise _already_exists(home)
        _write_home(config, step_ca_private_jwk, step_ca_root_pem)
    finally:
        lock.release()
    return config


def _already_exists(home: Path) -> ConfigError:
    return ConfigError(
        f"an instance already exists at {home}",
        remediation="choose another --home, or remove that directory to start over",
    )


def _write_home(
    config: InstanceConfig,
    step_ca_private_jwk: dict[str, object] | None,
    step_ca_root_pem: bytes | None,
) -> None:
    """Secrets, PKI and, last, ``instance.toml``: a home without it is not an instance."""
    home = config.home
    for sub in ("secrets", "data", "pki"):
        (home / sub).mkdir(exist_ok=True, mode=0o700)

    seal_text = generate_secret()
    write_private(config.seal_secret_file, seal_text.encode() + b"\n")
    sealer = Sealer(parse_secret(seal_text))
    write_private(config.admin_token_file, secrets.token_urlsafe(32).encode() + b"\n")

    issue_internal_pki(config)

    from ca_service.keys import create_federation_pki

    create_federation_pki(config, sealer)
    step_ca = config.step_ca
    if step_ca is not None and step_ca_private_jwk is not None:
        if step_ca_root_pem is not None:
            write_public(Path(step_ca.root_file), step_ca_root_pem)
        blob = sealer.seal(json.dumps(step_ca_private_jwk).encode(), stepca_key_context())
        write_private(config.secrets_dir / STEPCA_KEY_FILE, blob)

    import tomli_w

    write_private(home / CONFIG_FILE, tomli_w.dumps(config.to_toml_dict()).encode())


def issue_internal_pki(config: InstanceConfig, *, reuse_ca: bool = False) -> None:
    """(Re)issue the internal certificates: one per service plus the operator's."""
    pki = config.internal_pki_dir
    if reuse_ca:
        ca = KeyPair((pki / "ca.crt").read_bytes(), (pki / "ca.key").read_bytes())
    else:
        ca = create_internal_ca(config.trust_domain)
        write_public(pki / "ca.crt", ca.cert_pem)
        write_private(pki / "ca.key", ca.key_pem)
    for identity in [*SERVICES, OPERATOR]:
        pair = issue_internal_certificate(ca, config.trust_domain, identity)
        write_public(pki / f"{identity}.crt", pair.cert_pem)
        write_private(pki / f"{identity}.key", pair.key_pem)
