"""The local federation CA's key material in the instance home (keys sealed at rest).

``pki/federation/`` holds the root and intermediate certificates, their private
keys sealed with the instance seal secret (each bound to its file name), and the
gateway's TLS server certificate for the federation and enrollment listeners.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca_service.backends.base import CABackend, CABackendMisconfigured
from ca_service.backends.local import (
    LocalCABackend,
    create_local_ca,
    issue_server_certificate,
    load_unencrypted_private_key_pem,
    unencrypted_private_key_pem,
)
from mosaic.config import ConfigError, InstanceConfig
from mosaic.pki import (
    INTERMEDIATE_CERT,
    ROOT_CERT,
    SERVER_CERT,
    SERVER_KEY,
    write_private,
    write_public,
)
from mosaic.sealing import SEAL_TAMPERED, SEAL_UNKNOWN_KEY, Sealer, SealError, seal_context
from mosaic.x509ext import sha256_fingerprint

SEALED_KEYS = ("root.key.sealed", "intermediate.key.sealed")
SERVER_CERT_LIFETIME = dt.timedelta(days=365)


def _context(file_name: str) -> str:
    return seal_context("files", "pki-federation", file_name)


def create_federation_pki(config: InstanceConfig, sealer: Sealer) -> str:
    """Make the root, intermediate and server certificate; return the root's SHA-256 pin."""
    fed = config.federation_pki_dir
    material = create_local_ca(config.name)
    pem = serialization.Encoding.PEM
    write_public(fed / ROOT_CERT, material.root_certificate.public_bytes(pem))
    write_public(fed / INTERMEDIATE_CERT, material.intermediate_certificate.public_bytes(pem))
    for name, key in zip(SEALED_KEYS, (material.root_key, material.intermediate_key), strict=True):
        write_private(fed / name, sealer.seal(unencrypted_private_key_pem(key), _context(name)))
    _write_server_certificate(config, material.intermediate_certificate, material.intermediate_key)
    return root_fingerprint(config)


def renew_federation_server_certificate(config: InstanceConfig, sealer: Sealer) -> x509.Certificate:
    """Re-issue the gateway's TLS server certificate, with a new key, under the same
    intermediate: peers pin the root, so nothing changes for them. The gateway serves the
    new one from its next start. Returns the new certificate."""
    intermediate, key = _intermediate_or_fail(config, sealer)
    return _write_server_certificate(config, intermediate, key)


def _write_server_certificate(
    config: InstanceConfig,
    intermediate: x509.Certificate,
    intermediate_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    fed = config.federation_pki_dir
    hosts = sorted({config.host, "localhost"})
    dns = [h for h in hosts if not _is_ip(h)]
    ips = sorted({"127.0.0.1", *(h for h in hosts if _is_ip(h))})
    cert, key = issue_server_certificate(
        intermediate,
        intermediate_key,
        common_name=f"{config.name} federation gateway",
        dns_names=dns,
        ip_addresses=ips,
        lifetime=SERVER_CERT_LIFETIME,
    )
    pem = serialization.Encoding.PEM
    # Each file is replaced atomically; the key goes first. A crash between the two leaves
    # a pair the gateway refuses at start, and renewing again mends it.
    write_private(fed / SERVER_KEY, unencrypted_private_key_pem(key))
    write_public(fed / SERVER_CERT, cert.public_bytes(pem) + intermediate.public_bytes(pem))
    return cert


def root_fingerprint(config: InstanceConfig) -> str:
    root = x509.load_pem_x509_certificate((config.federation_pki_dir / ROOT_CERT).read_bytes())
    return sha256_fingerprint(root)


def _intermediate_or_fail(
    config: InstanceConfig, sealer: Sealer
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        return load_federation_intermediate(config, sealer)
    except (OSError, SealError, ValueError) as exc:
        raise _unloadable(config, exc) from None


def load_federation_intermediate(
    config: InstanceConfig, sealer: Sealer
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The local federation intermediate and its unsealed key. Both backends have one: it
    signs the gateway's server certificate, and with ``local`` the peers' too."""
    fed = config.federation_pki_dir
    name = SEALED_KEYS[1]
    key = load_unencrypted_private_key_pem(sealer.open((fed / name).read_bytes(), _context(name)))
    return x509.load_pem_x509_certificate((fed / INTERMEDIATE_CERT).read_bytes()), key


def _unloadable(config: InstanceConfig, exc: Exception) -> ConfigError:
    fed = config.federation_pki_dir
    unknown = sealed_under_unconfigured_secret(config, exc, fed / SEALED_KEYS[1])
    if unknown is not None:
        return unknown
    return ConfigError(
        f"the local federation CA in {fed} cannot be loaded: {_why(exc)}",
        remediation=(
            "restore pki/federation/ and the seal secret of this home from the same "
            "backup, or re-create the instance with `mosaic init`"
        ),
    )


def sealed_under_unconfigured_secret(
    config: InstanceConfig, exc: Exception, path: Path
) -> ConfigError | None:
    """The error for a sealed file whose blob names a seal secret that is not configured
    (typically ``seal.previous.key`` removed before `mosaic seal rotate` re-sealed it);
    None for any other failure. The file is intact: putting that secret back mends it."""
    if not isinstance(exc, SealError) or exc.reason != SEAL_UNKNOWN_KEY:
        return None
    previous = config.previous_seal_secret_file
    return ConfigError(
        f"{path} is sealed under a seal secret this instance no longer has configured "
        f"(key id {exc.key_id}); neither {config.seal_secret_file} nor {previous} "
        "holds it",
        remediation=(
            f"put the secret with that key id back as {previous} (where `mosaic seal rotate "
            "--generate` moved it), restart the services, then run `mosaic seal rotate`; "
            f"remove {previous} only after that succeeds"
        ),
    )


def _why(exc: Exception) -> str:
    """Why a key file failed to load, in words (never the file's content)."""
    if isinstance(exc, SealError):
        if exc.reason == SEAL_TAMPERED:
            return "a sealed key does not open (modified, or not sealed for this place)"
        return "a sealed key is not a sealed value this version can read"
    if isinstance(exc, OSError):
        name = Path(exc.filename).name if exc.filename else "a file"
        return f"{name}: {exc.strerror or 'cannot be read'}"
    if isinstance(exc, CABackendMisconfigured):
        return exc.message
    return "a key or certificate in it is not valid"


def load_local_backend(config: InstanceConfig, sealer: Sealer) -> LocalCABackend:
    intermediate, key = load_federation_intermediate(config, sealer)
    root = x509.load_pem_x509_certificate((config.federation_pki_dir / ROOT_CERT).read_bytes())
    return LocalCABackend(root, intermediate, key)


# step-ca must answer before the CA service's own callers give up (their default is 10 s).
STEP_CA_TIMEOUT_S = 5.0


def load_backend(config: InstanceConfig, sealer: Sealer) -> CABackend:
    """The CA backend ``config.ca_backend`` names; ConfigError (with a remediation) if unusable."""
    if config.ca_backend == "local":
        try:
            return load_local_backend(config, sealer)
        except (OSError, SealError, ValueError, CABackendMisconfigured) as exc:
            raise _unloadable(config, exc) from None
    if config.ca_backend == "step-ca":
        return load_step_ca_backend(config, sealer)
    raise ConfigError(
        f"unknown CA backend {config.ca_backend!r}",
        remediation='set [ca] backend to "local" or "step-ca" in instance.toml',
    )


def load_step_ca_backend(config: InstanceConfig, sealer: Sealer) -> CABackend:
    """A StepCABackend from ``[ca.step_ca]`` and the provisioner JWK sealed in ``secrets/``.

    Messages never include the key: a failure says which file and what to do.
    """
    from ca_service.backends.stepca import StepCABackend
    from mosaic.cli.instance import STEPCA_KEY_FILE, stepca_key_context

    step = config.step_ca
    if step is None:
        raise ConfigError(
            "the step-ca backend is selected but [ca.step_ca] is missing from instance.toml",
            remediation="re-run `mosaic init --ca step-ca` with the --step-ca-* options",
        )
    key_file = config.secrets_dir / STEPCA_KEY_FILE
    try:
        jwk = json.loads(sealer.open(key_file.read_bytes(), stepca_key_context()))
        root_pem = Path(step.root_file).read_bytes()
    except (OSError, SealError, ValueError) as exc:
        unknown = sealed_under_unconfigured_secret(config, exc, key_file)
        if unknown is not None:
            raise unknown from None
        raise ConfigError(
            f"the step-ca provisioner key ({key_file}) or root ({step.root_file}) cannot be "
            f"read: {_why(exc)}",
            remediation=(
                "restore both files and the seal secret from the same backup, or re-run "
                "`mosaic init --ca step-ca` with the provisioner's private JWK"
            ),
        ) from None
    try:
        return StepCABackend(
            url=step.url,
            root_pem=root_pem,
            dns_name=step.dns_name,
            provisioner_name=step.provisioner,
            provisioner_jwk=jwk,
            kid=step.kid or None,
            timeout=STEP_CA_TIMEOUT_S,
        )
    except CABackendMisconfigured as exc:
        raise ConfigError(exc.message, remediation=exc.remediation) from None


def reseal_files(config: InstanceConfig, sealer: Sealer) -> int:
    """Re-seal the sealed key files under the current secret; return how many changed."""
    changed = 0
    for name in SEALED_KEYS:
        path: Path = config.federation_pki_dir / name
        if not path.is_file():
            continue
        blob = path.read_bytes()
        if sealer.needs_reseal(blob):
            write_private(path, sealer.reseal(blob, _context(name)))
            changed += 1
    return changed


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
