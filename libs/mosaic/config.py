"""The instance home: where one gateway's configuration, secrets, keys and data live.

One loader for every service and the CLI. ``instance.toml`` holds the settings;
environment variables override them (compose passes settings that way).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mosaic.enrollment_url import bracket_host, is_host

DEFAULT_PORT_BASE = 7400
CONFIG_FILE = "instance.toml"


@dataclass(frozen=True)
class ServiceSpec:
    """A service of the instance: its name, Python module, schema and listener offset."""

    name: str
    module: str
    schema: str
    port_offset: int
    depends_on: tuple[str, ...] = ()


CA = "ca-service"
GRANTS = "grants-service"
ENROLLMENT = "enrollment-service"
RESOURCES = "resource-service"
GATEWAY = "federation-gateway"
OPERATOR = "operator"  # the CLI's identity towards internal services

SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec(CA, "ca_service", "ca", 51),
        ServiceSpec(GRANTS, "grants_service", "grants", 52, (CA,)),
        ServiceSpec(ENROLLMENT, "enrollment_service", "enrollment", 53, (GRANTS, CA)),
        ServiceSpec(RESOURCES, "resource_service", "resources", 54),
        ServiceSpec(
            GATEWAY, "federation_gateway", "gateway", 40, (CA, GRANTS, ENROLLMENT, RESOURCES)
        ),
    )
}
# Start order for `mosaic up`: dependencies first.
START_ORDER: tuple[str, ...] = (CA, GRANTS, RESOURCES, ENROLLMENT, GATEWAY)


class ConfigError(Exception):
    """The instance home is missing or its configuration is invalid."""

    def __init__(self, message: str, *, remediation: str) -> None:
        super().__init__(message)
        self.message = message
        self.remediation = remediation


def host_port(host: str, port: int) -> str:
    """``host:port`` as gRPC and peers read it, an IPv6 address in brackets."""
    return f"{bracket_host(host)}:{port}"


@dataclass(frozen=True)
class Ports:
    """Every listener of an instance; all inside port_base..port_base+99."""

    admin: int
    federation: int
    enrollment: int
    internal: Mapping[str, int]
    metrics: Mapping[str, int]

    @classmethod
    def from_base(cls, base: int) -> Ports:
        if not 1024 <= base <= 65535 - 99:
            raise ConfigError(
                f"port base {base} is out of range",
                remediation="choose --port-base between 1024 and 65436",
            )
        internal = {name: base + s.port_offset for name, s in SERVICES.items() if name != GATEWAY}
        metrics = {name: base + 64 + i for i, name in enumerate(START_ORDER)}
        return cls(
            admin=base + 40,
            federation=base + 43,
            enrollment=base + 44,
            internal=internal,
            metrics=metrics,
        )

    def of_service(self, service: str) -> dict[str, int]:
        """The ports ``service`` listens on, by listener name."""
        if service == GATEWAY:
            own = {"admin": self.admin, "federation": self.federation}
            own["enrollment"] = self.enrollment
        else:
            own = {"internal": self.internal[service]}
        return {**own, "metrics": self.metrics[service]}


@dataclass(frozen=True)
class RateLimitConfig:
    """Per-grant request rate: sustained requests per second and burst size; and the
    enrollment redeem attempts allowed per source address."""

    per_second: float = 20.0
    burst: int = 40
    redeem_per_second: float = 0.1
    redeem_burst: int = 5
    # Certificate renewals per grant: each one issues a certificate and revokes one, and
    # every gateway holds every revocation until that certificate expires.
    renew_per_second: float = 1 / 60
    renew_burst: int = 5

    def __post_init__(self) -> None:
        check_rate(self.per_second, self.burst, "rate_limit.")
        check_rate(self.redeem_per_second, self.redeem_burst, "rate_limit.redeem_")
        check_rate(self.renew_per_second, self.renew_burst, "rate_limit.renew_")


# Above a million a second GCRA's interval in microseconds (Valkey) would round to 0.
MAX_PER_SECOND = 1_000_000.0
MAX_BURST = 1_000_000


def check_rate(per_second: float, burst: int, name: str = "") -> None:
    """ValueError unless ``per_second`` is finite in (0, 1e6] and ``burst`` in 1..1e6: a
    NaN rate would compare false everywhere and allow every request."""
    if not (math.isfinite(per_second) and 0 < per_second <= MAX_PER_SECOND):
        raise ValueError(f"{name}per_second must be above 0 and at most {MAX_PER_SECOND:.0f}")
    if not 1 <= burst <= MAX_BURST:
        raise ValueError(f"{name}burst must be 1 to {MAX_BURST}")


@dataclass(frozen=True)
class StepCAConfig:
    """Where step-ca is and which provisioner signs for us (its key is sealed in the home)."""

    url: str
    root_file: str
    dns_name: str
    provisioner: str = "mosaic-fed"
    kid: str = ""


@dataclass(frozen=True)
class InstanceConfig:
    """Everything a service or the CLI needs to know about one instance home."""

    home: Path
    name: str
    host: str
    port_base: int
    ca_backend: str = "local"
    db_url: str = ""
    valkey_url: str = ""
    bind_host: str = "127.0.0.1"
    internal_hosts: Mapping[str, str] = field(default_factory=dict)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    cert_default_lifetime_s: int = 24 * 3600
    cert_max_lifetime_s: int = 24 * 3600
    step_ca: StepCAConfig | None = None
    # Per-process listener ports that differ from the port base (environment only, never
    # in instance.toml): lets several gateway replicas of one home run on one host.
    port_overrides: Mapping[str, int] = field(default_factory=dict)
    # The ports peers are told, with `host`, when they are not the gateway's own listener
    # ports: a load balancer in front of gateway replicas accepts peers on them. None
    # advertises the listener's port (that of this process, overrides included).
    public_federation_port: int | None = None
    public_enrollment_port: int | None = None

    def __post_init__(self) -> None:
        named = [("host", self.host), ("bind_host", self.bind_host)]
        named += [(f"internal_hosts.{k}", v) for k, v in self.internal_hosts.items()]
        for what, value in named:
            if not is_host(value):
                raise ConfigError(
                    f"{what} {value!r} is not a DNS name or an IP address",
                    remediation="give a name like gw.example.org, or an address like "
                    "192.0.2.7 or 2001:db8::7 (no brackets, no port)",
                )
        for what, port in (
            ("public_federation_port", self.public_federation_port),
            ("public_enrollment_port", self.public_enrollment_port),
        ):
            # bool is an int to Python; `true` in instance.toml is no port.
            if port is not None and (type(port) is not int or not 1 <= port <= 65535):
                raise ConfigError(
                    f"{what} {port!r} is not a port",
                    remediation="give the port peers reach this gateway on (its load "
                    "balancer's), a number from 1 to 65535; or remove it to advertise the "
                    "gateway's own listener port",
                )

    # ---- derived locations -------------------------------------------------
    @property
    def ports(self) -> Ports:
        ports = Ports.from_base(self.port_base)
        if not self.port_overrides:
            return ports
        return Ports(
            admin=self.port_overrides.get("admin", ports.admin),
            federation=self.port_overrides.get("federation", ports.federation),
            enrollment=self.port_overrides.get("enrollment", ports.enrollment),
            internal=ports.internal,
            # The environment is per process: the override is this process's own port.
            metrics={
                name: self.port_overrides.get("metrics", port)
                for name, port in ports.metrics.items()
            },
        )

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def internal_pki_dir(self) -> Path:
        return self.home / "pki" / "internal"

    @property
    def federation_pki_dir(self) -> Path:
        return self.home / "pki" / "federation"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def seal_secret_file(self) -> Path:
        return Path(os.environ.get("MOSAIC_SEAL_SECRET_FILE") or self.secrets_dir / "seal.key")

    @property
    def previous_seal_secret_file(self) -> Path:
        return Path(
            os.environ.get("MOSAIC_SEAL_PREVIOUS_SECRET_FILE")
            or self.secrets_dir / "seal.previous.key"
        )

    @property
    def admin_token_file(self) -> Path:
        return Path(os.environ.get("MOSAIC_ADMIN_TOKEN_FILE") or self.secrets_dir / "admin.token")

    @property
    def trust_domain(self) -> str:
        return self.name

    def spiffe_id(self, service: str) -> str:
        return f"spiffe://{self.trust_domain}/{service}"

    def internal_address(self, service: str) -> str:
        """host:port other services dial to reach ``service``'s internal listener."""
        host = self.internal_hosts.get(service, "127.0.0.1")
        port = self.ports.admin if service == GATEWAY else self.ports.internal[service]
        return host_port(host, port)

    def listen_address(self, port: int) -> str:
        return host_port(self.bind_host, port)

    @property
    def admin_address(self) -> str:
        return host_port(self.internal_hosts.get(GATEWAY, "127.0.0.1"), self.ports.admin)

    @property
    def advertised_federation_port(self) -> int:
        """The federation port peers are told: the public one if set, else the listener's."""
        return self.public_federation_port or self.ports.federation

    @property
    def advertised_enrollment_port(self) -> int:
        """The enrollment port in enrollment URLs: the public one if set, else the listener's."""
        return self.public_enrollment_port or self.ports.enrollment

    @property
    def federation_endpoint(self) -> str:
        """``host:port`` a peer stores at enrollment and dials for every query."""
        return host_port(self.host, self.advertised_federation_port)

    @property
    def enrollment_endpoint(self) -> str:
        """``host:port`` of the enrollment URLs this gateway hands out."""
        return host_port(self.host, self.advertised_enrollment_port)

    def database_url(self, service: str) -> str:
        """SQLAlchemy URL for ``service``: its own SQLite file, or the shared Postgres."""
        if self.db_url:
            return to_async_postgres_url(self.db_url)
        return f"sqlite+aiosqlite:///{self.data_dir / (SERVICES[service].module + '.db')}"

    # ---- persistence -------------------------------------------------------
    def to_toml_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "host": self.host,
            "port_base": self.port_base,
            "bind_host": self.bind_host,
            "ca": {
                "backend": self.ca_backend,
                "default_lifetime_seconds": self.cert_default_lifetime_s,
                "max_lifetime_seconds": self.cert_max_lifetime_s,
            },
            "database": {"url": self.db_url},
            "valkey": {"url": self.valkey_url},
            "rate_limit": {
                "per_second": self.rate_limit.per_second,
                "burst": self.rate_limit.burst,
                "redeem_per_second": self.rate_limit.redeem_per_second,
                "redeem_burst": self.rate_limit.redeem_burst,
                "renew_per_second": self.rate_limit.renew_per_second,
                "renew_burst": self.rate_limit.renew_burst,
            },
        }
        if self.step_ca is not None:
            doc["ca"]["step_ca"] = {
                "url": self.step_ca.url,
                "root_file": self.step_ca.root_file,
                "dns_name": self.step_ca.dns_name,
                "provisioner": self.step_ca.provisioner,
                "kid": self.step_ca.kid,
            }
        if self.internal_hosts:
            doc["internal_hosts"] = dict(self.internal_hosts)
        # Written only when set, so a home without them reads as it always has.
        if self.public_federation_port is not None:
            doc["public_federation_port"] = self.public_federation_port
        if self.public_enrollment_port is not None:
            doc["public_enrollment_port"] = self.public_enrollment_port
        return doc


_HANDED_OUT: set[int] = set()


PORT_RANGE_ENV = "MOSAIC_PORT_RANGE"


def find_free_port_base(low: int | None = None, high: int | None = None) -> int:
    """A port base whose whole block N..N+99 nothing on loopback listens on right now.

    The range is [low, high): by default MOSAIC_PORT_RANGE (``LOW-HIGH``) when set, else
    20000-32700, below Linux's ephemeral ports (32768-60999): a listener placed there can
    collide with the local port of some outgoing connection.
    Used by `mosaic demo`, the benchmarks and the tests, which start instances side by side
    (test workers each get a range of their own, so that a block one of them picked is
    not picked by another before its instance listens). A base is handed out once per
    process: two instances picked before either one listens must not get the same block.
    """
    import random
    import socket

    if low is None or high is None:
        low, high = _port_range()

    def in_use(port: int) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.05)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    for _ in range(200):
        base = random.randrange(low, high, 100)  # noqa: S311 - not a secret
        if base in _HANDED_OUT:
            continue
        if not any(in_use(base + offset) for offset in range(100)):
            _HANDED_OUT.add(base)
            return base
    raise ConfigError(
        "no free block of 100 ports on loopback",
        remediation="stop other instances, or pass --port-base explicitly",
    )


def _port_range() -> tuple[int, int]:
    text = os.environ.get(PORT_RANGE_ENV, "")
    if not text:
        return 20000, 32700
    try:
        low, high = (int(part) for part in text.split("-", 1))
    except ValueError:
        low = high = 0
    if not (low >= 1024 and low + 100 <= high <= 65536):
        raise ConfigError(
            f"{PORT_RANGE_ENV} must be LOW-HIGH with 1024 <= LOW and LOW + 100 <= HIGH <= "
            f"65536, got {text!r}",
            remediation=f"set {PORT_RANGE_ENV} like 20000-32700, or unset it",
        )
    return low, high


def read_home_file(
    path: Path,
    remediation: str = "run mosaic as the user that owns the instance home, or restore the "
    "file from backup (`mosaic init --renew-internal` re-issues the internal certificates)",
) -> bytes:
    """A file of the instance home (a certificate, a key, the admin token); a ConfigError
    naming the file, never its content, when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or type(exc).__name__}", remediation=remediation
        ) from None


def to_async_postgres_url(url: str) -> str:
    """Accept postgres://, postgresql:// or postgresql+asyncpg:// and return the asyncpg form."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ConfigError(
        "database URL must start with postgresql://",
        remediation="pass --db postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
    )


def resolve_home(home: str | os.PathLike[str] | None) -> Path:
    """The instance home: the argument, else $MOSAIC_HOME, else ~/.mosaic."""
    chosen = home or os.environ.get("MOSAIC_HOME") or Path.home() / ".mosaic"
    return Path(chosen).expanduser().resolve()


def load_config(home: str | os.PathLike[str] | None = None) -> InstanceConfig:
    """Read ``instance.toml`` from the home and apply environment overrides."""
    path = resolve_home(home)
    file = path / CONFIG_FILE
    if not file.is_file():
        raise ConfigError(
            f"no instance at {path}",
            remediation=f"run `mosaic --home {path} init --name NAME` first",
        )
    try:
        doc = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"cannot read {file}: {exc}", remediation="fix or re-create the file"
        ) from exc
    return _apply_env(_from_dict(path, doc))


def _from_dict(home: Path, doc: Mapping[str, Any]) -> InstanceConfig:
    try:
        ca = doc.get("ca", {})
        step = ca.get("step_ca")
        rl = doc.get("rate_limit", {})
        return InstanceConfig(
            home=home,
            name=str(doc["name"]),
            host=str(doc.get("host", "127.0.0.1")),
            port_base=int(doc.get("port_base", DEFAULT_PORT_BASE)),
            bind_host=str(doc.get("bind_host", "127.0.0.1")),
            ca_backend=str(ca.get("backend", "local")),
            cert_default_lifetime_s=int(ca.get("default_lifetime_seconds", 24 * 3600)),
            cert_max_lifetime_s=int(ca.get("max_lifetime_seconds", 24 * 3600)),
            db_url=str(doc.get("database", {}).get("url", "")),
            valkey_url=str(doc.get("valkey", {}).get("url", "")),
            internal_hosts=dict(doc.get("internal_hosts", {})),
            rate_limit=RateLimitConfig(
                per_second=float(rl.get("per_second", RateLimitConfig.per_second)),
                burst=int(rl.get("burst", RateLimitConfig.burst)),
                redeem_per_second=float(
                    rl.get("redeem_per_second", RateLimitConfig.redeem_per_second)
                ),
                redeem_burst=int(rl.get("redeem_burst", RateLimitConfig.redeem_burst)),
                renew_per_second=float(
                    rl.get("renew_per_second", RateLimitConfig.renew_per_second)
                ),
                renew_burst=int(rl.get("renew_burst", RateLimitConfig.renew_burst)),
            ),
            step_ca=StepCAConfig(**step) if step else None,
            # Checked as they are (an integer 1..65535) by InstanceConfig, not converted.
            public_federation_port=doc.get("public_federation_port"),
            public_enrollment_port=doc.get("public_enrollment_port"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"invalid {CONFIG_FILE}: {exc}",
            remediation="compare it with docs/SETUP.md or re-run `mosaic init`",
        ) from exc


def _apply_env(config: InstanceConfig) -> InstanceConfig:
    """Environment overrides, used by compose where each service runs in its own container."""
    env = os.environ
    changes: dict[str, Any] = {}
    if env.get("MOSAIC_DB_URL"):
        changes["db_url"] = env["MOSAIC_DB_URL"]
    if env.get("MOSAIC_VALKEY_URL"):
        changes["valkey_url"] = env["MOSAIC_VALKEY_URL"]
    if env.get("MOSAIC_BIND_HOST"):
        changes["bind_host"] = env["MOSAIC_BIND_HOST"]
    if env.get("MOSAIC_HOST"):
        changes["host"] = env["MOSAIC_HOST"]
    hosts = dict(config.internal_hosts)
    for name in SERVICES:
        key = "MOSAIC_" + name.upper().replace("-", "_") + "_HOST"
        if env.get(key):
            hosts[name] = env[key]
    if hosts != dict(config.internal_hosts):
        changes["internal_hosts"] = hosts
    # MOSAIC_ADMIN_PORT / MOSAIC_FEDERATION_PORT / MOSAIC_ENROLLMENT_PORT /
    # MOSAIC_METRICS_PORT: a second gateway replica of the same home on one host (the CLI
    # honours MOSAIC_ADMIN_PORT too).
    overrides: dict[str, int] = {}
    for listener in ("admin", "federation", "enrollment", "metrics"):
        port = _env_port(f"MOSAIC_{listener.upper()}_PORT")
        if port is not None:
            overrides[listener] = port
    if overrides:
        changes["port_overrides"] = overrides
    # MOSAIC_PUBLIC_FEDERATION_PORT / MOSAIC_PUBLIC_ENROLLMENT_PORT: what peers are told,
    # like MOSAIC_HOST for the host (public_federation_port / public_enrollment_port).
    for listener in ("federation", "enrollment"):
        port = _env_port(f"MOSAIC_PUBLIC_{listener.upper()}_PORT")
        if port is not None:
            changes[f"public_{listener}_port"] = port
    return replace(config, **changes) if changes else config


def _env_port(name: str) -> int | None:
    """The port in environment variable ``name``; None when unset or empty."""
    value = os.environ.get(name)
    if not value:
        return None
    port = int(value) if value.isascii() and value.isdigit() else 0
    if not 1 <= port <= 65535:
        raise ConfigError(
            f"{name}={value!r} is not a port",
            remediation="set it to a port number between 1 and 65535, or unset it",
        )
    return port
