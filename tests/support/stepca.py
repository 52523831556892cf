"""A throw-away real step-ca for tests (no Docker: the binary from infra/step-ca/build-local.sh).

    with StepCAServer() as ca:                 # or ca = StepCAServer().start_or_skip()
        backend = ca.make_backend()            # a StepCABackend pinned to ca.root_pem
        signed = await backend.sign(csr, grant_id=..., subject_user_id=..., ...)

What it sets up, all in a private 0700 temp dir:
  * a root and an intermediate CA made with ``cryptography`` (the root key never
    touches the disk; the intermediate key is written PKCS#8-encrypted with the
    password in ``password.txt``, which step-ca reads through ``--password-file``);
  * ``ca.json``: address ``127.0.0.1:<free port>``, dnsNames ``127.0.0.1``,
    ``localhost`` and ``stepca.test``, one JWK provisioner ``mosaic-fed`` (public key,
    ``kid`` = its RFC 7638 thumbprint, ``encryptedKey`` = the private JWK as step
    stores it: a PBES2-HS256+A128KW / A256GCM compact JWE under the same password),
    X.509 claims min 1 min / default 1 h / max 24 h (``max_lifetime``), the X.509
    template ``template`` (default infra/step-ca/templates/federation.tpl) and,
    with ``with_db=True`` (default), a bbolt database so revocation is recorded;
  * step-ca's output goes to ``step-ca.log`` (0600): step-ca logs whole tokens.

The fixture hands the decrypted private JWK to the backend directly
(``private_jwk``); ``encrypted_key`` + ``password`` exercise
``decrypt_provisioner_jwk``. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import hashlib
import json
import os
import secrets
import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from cryptography.x509.oid import NameOID

from ca_service.backends.stepca import StepCABackend
from tests.support.instances import Instance
from tests.support.procs import (
    LOOPBACK,
    PortInUse,
    ServerStartError,
    ServiceUnavailable,
    private_tempdir,
    remove_tree,
    require_or_skip,
    start_on_free_port,
    tail,
    terminate,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "infra" / "step-ca" / "build-local.sh"
FEDERATION_TEMPLATE = REPO / "infra" / "step-ca" / "templates" / "federation.tpl"
PROVISIONER_NAME = "mosaic-fed"
DNS_NAMES = [LOOPBACK, "localhost", "stepca.test"]

# Same as federation.tpl but without the two Mosaic extensions: what a CA service
# must refuse (the certificate lacks the grant OIDs).
BROKEN_TEMPLATE_TEXT = """{
	"subject": {"commonName": {{ toJson .Subject.CommonName }}},
	"sans": {{ toJson .SANs }},
	"keyUsage": ["digitalSignature"],
	"extKeyUsage": ["clientAuth"],
	"basicConstraints": {"isCA": false}
}
"""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64url(value: int) -> str:
    return _b64url(value.to_bytes(32, "big"))


def ec_private_jwk(key: ec.EllipticCurvePrivateKey, kid: str | None = None) -> dict[str, str]:
    """An EC P-256 private JWK; ``kid`` defaults to the RFC 7638 thumbprint."""
    nums = key.private_numbers()
    pub = nums.public_numbers
    public = {"crv": "P-256", "kty": "EC", "x": _int_b64url(pub.x), "y": _int_b64url(pub.y)}
    thumb = _b64url(
        hashlib.sha256(json.dumps(public, separators=(",", ":"), sort_keys=True).encode()).digest()
    )
    return {
        **public,
        "use": "sig",
        "alg": "ES256",
        "kid": kid or thumb,
        "d": _int_b64url(nums.private_value),
    }


def public_jwk(private: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in private.items() if k != "d"}


def encrypt_jwk(jwk: dict[str, Any], password: bytes, iterations: int = 100_000) -> str:
    """The compact JWE step stores as a provisioner's ``encryptedKey``."""
    salt = secrets.token_bytes(16)
    header = {
        "alg": "PBES2-HS256+A128KW",
        "cty": "jwk+json",
        "enc": "A256GCM",
        "p2c": iterations,
        "p2s": _b64url(salt),
    }
    header_b64 = _b64url(json.dumps(header, separators=(",", ":")).encode())
    kek = PBKDF2HMAC(
        algorithm=hashes.SHA256(),
        length=16,
        salt=b"PBES2-HS256+A128KW\x00" + salt,
        iterations=iterations,
    ).derive(password)
    cek = secrets.token_bytes(32)
    iv = secrets.token_bytes(12)
    sealed = AESGCM(cek).encrypt(iv, json.dumps(jwk).encode(), header_b64.encode("ascii"))
    parts = [header_b64, _b64url(aes_key_wrap(kek, cek)), _b64url(iv)]
    parts += [_b64url(sealed[:-16]), _b64url(sealed[-16:])]
    return ".".join(parts)


@functools.cache
def step_ca_binary() -> str:
    """Path printed by build-local.sh (builds once, ~30 s). Raises ServiceUnavailable."""
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceUnavailable(f"step-ca: {BUILD_SCRIPT} could not run: {exc}") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not os.access(lines[-1], os.X_OK):
        detail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise ServiceUnavailable(
            f"step-ca: no binary (build-local.sh exit {proc.returncode}):\n{detail}"
        )
    return lines[-1]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class StepCAServer:
    """A real step-ca child process on 127.0.0.1 with the ``mosaic-fed`` JWK provisioner."""

    def __init__(
        self,
        *,
        template: Path | str | None = None,
        with_db: bool = True,
        max_lifetime: str = "24h",
        default_lifetime: str = "1h",
        startup_timeout: float = 30.0,
    ) -> None:
        self.template = Path(template) if template is not None else FEDERATION_TEMPLATE
        self.with_db = with_db
        self.max_lifetime = max_lifetime
        self.default_lifetime = default_lifetime
        self.startup_timeout = startup_timeout
        self.provisioner_name = PROVISIONER_NAME
        self.dns_name = "stepca.test"  # token audience host (one of the dnsNames)
        self.dir: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._log: IO[bytes] | None = None
        self.password = secrets.token_urlsafe(24)
        # Set by _make_pki():
        self.root_cert: x509.Certificate
        self.intermediate: x509.Certificate
        self.private_jwk: dict[str, str]
        self.kid: str
        self.encrypted_key: str

    # -- public ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("step-ca is not running")
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def root_pem(self) -> bytes:
        return self.root_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def intermediate_pem(self) -> bytes:
        return self.intermediate.public_bytes(serialization.Encoding.PEM)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def make_backend(self, *, timeout: float = 10.0, **overrides: Any) -> StepCABackend:
        """A StepCABackend for this CA; keyword ``overrides`` replace constructor args."""
        kwargs: dict[str, Any] = {
            "url": self.url,
            "root_pem": self.root_pem,
            "dns_name": self.dns_name,
            "provisioner_name": self.provisioner_name,
            "provisioner_jwk": self.private_jwk,
            "kid": self.kid,
            "timeout": timeout,
            "intermediates_pem": self.intermediate_pem,
        }
        kwargs.update(overrides)
        return StepCABackend(**kwargs)

    def start(self) -> Self:
        """Build (if needed) and start step-ca; raise ServiceUnavailable when this machine
        has no step-ca, ServerStartError when it did not come up."""
        if self.running:
            return self
        binary = step_ca_binary()
        atexit.register(self.stop)
        try:
            self.dir = private_tempdir("mosaic-stepca-")
            self._make_pki()
            start_on_free_port(lambda port: self._launch(binary, port))
        except BaseException:
            self.stop()
            raise
        return self

    def start_or_skip(self) -> Self:
        try:
            return self.start()
        except ServiceUnavailable as exc:
            require_or_skip(str(exc))

    def stop_process(self) -> None:
        """Stop step-ca (SIGTERM, SIGKILL after 5 s) but keep its files and port number."""
        terminate(self.proc, timeout=5.0)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop step-ca and remove every file it had. Idempotent."""
        atexit.unregister(self.stop)
        self.stop_process()
        self.proc = None
        remove_tree(self.dir)
        self.dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------

    def _make_pki(self) -> None:
        assert self.dir is not None
        now = datetime.now(UTC)
        root_key = ec.generate_private_key(ec.SECP256R1())
        inter_key = ec.generate_private_key(ec.SECP256R1())
        root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
        self.root_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("Mosaic Test step-ca Root"))
            .issuer_name(_name("Mosaic Test step-ca Root"))
            .public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(root_ski, critical=False)
            .sign(root_key, hashes.SHA256())
        )
        self.intermediate = (
            x509.CertificateBuilder()
            .subject_name(_name("Mosaic Test step-ca Intermediate"))
            .issuer_name(self.root_cert.subject)
            .public_key(inter_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=29))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(inter_key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
                critical=False,
            )
            .sign(root_key, hashes.SHA256())
        )
        del root_key  # the root key is never written anywhere

        d = self.dir
        self._write(d / "root_ca.crt", self.root_pem)
        self._write(d / "intermediate_ca.crt", self.intermediate_pem)
        self._write(
            d / "intermediate_ca_key",
            inter_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(self.password.encode()),
            ),
        )
        self._write(d / "password.txt", self.password.encode() + b"\n")

        prov_key = ec.generate_private_key(ec.SECP256R1())
        self.private_jwk = ec_private_jwk(prov_key)
        self.kid = self.private_jwk["kid"]
        self.encrypted_key = encrypt_jwk(self.private_jwk, self.password.encode())

    def _ca_json(self, port: int) -> dict[str, Any]:
        assert self.dir is not None
        d = self.dir
        config: dict[str, Any] = {
            "root": str(d / "root_ca.crt"),
            "federatedRoots": None,
            "crt": str(d / "intermediate_ca.crt"),
            "key": str(d / "intermediate_ca_key"),
            "address": f"{LOOPBACK}:{port}",
            "insecureAddress": "",
            "dnsNames": DNS_NAMES,
            "logger": {"format": "text"},
            "authority": {
                "provisioners": [
                    {
                        "type": "JWK",
                        "name": self.provisioner_name,
                        "key": public_jwk(self.private_jwk),
                        "encryptedKey": self.encrypted_key,
                        "claims": {
                            "minTLSCertDuration": "1m",
                            "maxTLSCertDuration": self.max_lifetime,
                            "defaultTLSCertDuration": self.default_lifetime,
                        },
                        "options": {"x509": {"templateFile": str(self.template.resolve())}},
                    }
                ]
            },
            "tls": {
                "cipherSuites": [
                    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                ],
                "minVersion": 1.2,
                "maxVersion": 1.3,
                "renegotiation": False,
            },
        }
        if self.with_db:
            config["db"] = {"type": "bbolt", "dataSource": str(d / "db")}
        return config

    def _launch(self, binary: str, port: int) -> None:
        assert self.dir is not None
        d = self.dir
        self._write(d / "ca.json", json.dumps(self._ca_json(port), indent=2).encode())
        self.log_path = d / "step-ca.log"
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._log = os.fdopen(fd, "wb")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(d),
            "STEPPATH": str(d / "steppath"),
        }
        self.port = port
        # Flags go before the config path.
        self.proc = subprocess.Popen(
            [binary, "--password-file", str(d / "password.txt"), str(d / "ca.json")],
            cwd=d,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(
                self._healthy,
                self.startup_timeout,
                what=f"step-ca on {LOOPBACK}:{port}",
                interval=0.1,
                abort=self._exited,
            )
        except (ServerStartError, TimeoutError) as exc:
            # Nothing has been signed yet, so the log holds no token: safe to show.
            log_tail = tail(self.log_path, 20)
            self.stop_process()
            if "address already in use" in log_tail.lower():
                raise PortInUse(f"step-ca: port {port} already in use") from exc
            raise ServerStartError(f"{exc}\n--- step-ca.log ---\n{log_tail}") from exc

    def _exited(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"step-ca exited with code {self.proc.returncode}"
        return None

    def _healthy(self) -> bool:
        ctx = ssl.create_default_context(cadata=self.root_pem.decode())
        try:
            resp = httpx.get(f"{self.url}/health", verify=ctx, timeout=1.0, trust_env=False)
        except httpx.HTTPError:
            return False
        with contextlib.suppress(ValueError):
            return resp.status_code == 200 and resp.json().get("status") == "ok"
        return False

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


def stepca_instance(root: Path, name: str, server: StepCAServer, *, db: str = "") -> Instance:
    """`mosaic init --ca step-ca` against ``server`` (not started yet).

    The provisioner's private JWK goes to `mosaic init` in a 0600 file, which init seals
    into the home; the clear file is removed straight after.
    """
    root.mkdir(parents=True, exist_ok=True)
    key_file = root / f"{name}-provisioner.jwk.json"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(server.private_jwk))
    root_file = root / f"{name}-stepca-root.crt"
    root_file.write_bytes(server.root_pem)
    try:
        return Instance(
            root,
            name,
            db=db,
            extra_init=(
                "--ca",
                "step-ca",
                "--step-ca-url",
                server.url,
                "--step-ca-root",
                str(root_file),
                "--step-ca-dns-name",
                server.dns_name,
                "--step-ca-provisioner-key",
                str(key_file),
            ),
        )
    finally:
        key_file.unlink()
