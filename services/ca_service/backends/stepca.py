"""The ``step-ca`` CA backend: a real smallstep step-ca with the JWK provisioner ``mosaic-fed``.

How a certificate is issued
---------------------------
For every CSR the backend mints a one-time token (OTT) exactly as step-ca's JWK
provisioner expects (DESIGN.md, "CA backends"): an ES256 JWS (raw r||s signature)
signed with the provisioner's private JWK, header ``kid`` = the provisioner key's
kid as stored in ca.json, ``iss`` = provisioner name, ``aud`` =
``https://<CA dns name>/1.0/sign``, ``sub`` = the CSR's common name, ``sans`` =
the CSR's SANs exactly, ``sha`` = hex SHA-256 of the root certificate's DER,
random ``jti``, ``nbf``/``iat`` = now, ``exp`` = now + 5 min, plus the custom
claims ``mosaic_grant_id`` and ``mosaic_subject_user_id``. It then POSTs
``{"csr", "ott"[, "notAfter"]}`` to ``/1.0/sign``. The provisioner's X.509
template (``infra/step-ca/templates/federation.tpl``) turns the two custom
claims into the two certificate extensions; this backend does not check them
(the CA service re-parses every certificate it gets back).

The HTTPS connection to step-ca trusts only the pinned step-ca root given to
the constructor (never the system store) and ignores proxy environment
variables.

The provisioner key
-------------------
The constructor takes the provisioner's *decrypted* private JWK as a dict; the
caller unseals it. When all the operator has is the ``encryptedKey`` that
``step ca init`` / ``step ca provisioner add`` stores in ca.json (a compact JWE,
PBES2-HS256+A128KW with A256GCM/A128GCM) plus its password,
:func:`decrypt_provisioner_jwk` turns it into that dict.

Secrets (the token, the private JWK, its password) never appear in a log line
or an exception message. step-ca itself logs whole tokens: keep its log private.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import ssl
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap
from cryptography.x509.oid import NameOID

from .base import (
    CABackendError,
    CABackendInvalidResponse,
    CABackendMisconfigured,
    CABackendRejected,
    CABackendUnavailable,
    RevokeOutcome,
    SignedChain,
)

__all__ = ["TOKEN_TTL", "StepCABackend", "decrypt_provisioner_jwk"]

log = logging.getLogger(__name__)

TOKEN_TTL = timedelta(minutes=5)
"""Lifetime of every one-time token (step-ca allows one minute of clock skew)."""

_MAX_MESSAGE = 200
_MAX_RESPONSE_BYTES = 1 << 20
# A JWS/JWT (three base64url segments) or any long base64-ish run: never echoed.
_TOKENISH = re.compile(
    r"[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}|[A-Za-z0-9+/_\-=]{40,}"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

# RFC 5280 CRLReason codes accepted by step-ca's /1.0/revoke (0..10, 7 unused).
_REASON_CODES = {
    "unspecified": 0,
    "key_compromise": 1,
    "ca_compromise": 2,
    "affiliation_changed": 3,
    "superseded": 4,
    "cessation_of_operation": 5,
    "certificate_hold": 6,
    "privilege_withdrawn": 9,
    "aa_compromise": 10,
}


def _sanitize(message: object) -> str:
    """step-ca's error ``message``, made safe to show: no token-like runs, bounded length."""
    text = message if isinstance(message, str) else ""
    text = _CONTROL.sub(" ", text)
    text = _TOKENISH.sub("[redacted]", text).strip()
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 1] + "…"
    return text


def _b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def decrypt_provisioner_jwk(encrypted_key: str, password: bytes | str) -> dict[str, Any]:
    """Decrypt a JWK provisioner's ``encryptedKey`` from step-ca's ca.json.

    ``encrypted_key`` is the compact JWE step stores (PBES2-HS256+A128KW key
    wrapping, A256GCM or A128GCM content encryption). Raises
    :class:`CABackendMisconfigured` on a wrong password or a malformed value; the
    message never contains the key or the password.
    """
    remediation = (
        "check the provisioner password and that encryptedKey was copied intact from ca.json"
    )
    pw = password.encode() if isinstance(password, str) else password
    try:
        header_b64, wrapped_b64, iv_b64, ct_b64, tag_b64 = encrypted_key.strip().split(".")
        header = json.loads(_b64url_decode(header_b64))
        alg = header["alg"]
        enc = header["enc"]
        p2s = _b64url_decode(header["p2s"])
        p2c = int(header["p2c"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CABackendMisconfigured(
            "the provisioner encryptedKey is not a compact JWE", remediation=remediation
        ) from exc
    kek_len = {"PBES2-HS256+A128KW": 16, "PBES2-HS384+A192KW": 24, "PBES2-HS512+A256KW": 32}
    hash_for = {16: hashes.SHA256(), 24: hashes.SHA384(), 32: hashes.SHA512()}
    if alg not in kek_len or enc not in ("A128GCM", "A192GCM", "A256GCM"):
        raise CABackendMisconfigured(
            f"unsupported provisioner key encryption ({alg}, {enc})", remediation=remediation
        )
    if not 1000 <= p2c <= 10_000_000:
        raise CABackendMisconfigured(
            "the provisioner encryptedKey has an implausible PBES2 iteration count",
            remediation=remediation,
        )
    size = kek_len[alg]
    kdf = PBKDF2HMAC(
        algorithm=hash_for[size],
        length=size,
        salt=alg.encode() + b"\x00" + p2s,
        iterations=p2c,
    )
    try:
        kek = kdf.derive(pw)
        cek = aes_key_unwrap(kek, _b64url_decode(wrapped_b64))
        plain = AESGCM(cek).decrypt(
            _b64url_decode(iv_b64),
            _b64url_decode(ct_b64) + _b64url_decode(tag_b64),
            header_b64.encode("ascii"),
        )
        jwk = json.loads(plain)
    except (InvalidUnwrap, InvalidTag, ValueError) as exc:
        raise CABackendMisconfigured(
            "could not decrypt the provisioner key (wrong password?)", remediation=remediation
        ) from exc
    if not isinstance(jwk, dict):
        raise CABackendMisconfigured(
            "the decrypted provisioner key is not a JWK", remediation=remediation
        )
    return jwk


def _lifetime_param(lifetime: timedelta) -> str:
    seconds = int(lifetime.total_seconds())
    if seconds <= 0:
        raise CABackendMisconfigured(
            "requested certificate lifetime must be positive",
            remediation="request a lifetime of at least one second",
        )
    return f"{seconds}s"  # a Go duration string, accepted by step-ca's TimeDuration


def _csr_sans(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    sans: list[str] = []
    sans += ext.get_values_for_type(x509.DNSName)
    sans += [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    sans += ext.get_values_for_type(x509.RFC822Name)
    sans += ext.get_values_for_type(x509.UniformResourceIdentifier)
    return sans


def _load_pem_chain(pems: list[str]) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    for pem in pems:
        out.extend(x509.load_pem_x509_certificates(pem.encode()))
    return out


class StepCABackend:
    """CABackend that issues through a running step-ca's ``/1.0/sign`` (JWK provisioner).

    ``sign`` raises ValueError for a CSR without a subject common name (the CA
    service validates CSRs first), CABackendUnavailable when step-ca cannot be
    reached (refused, timeout, TLS/pin failure, 502-504), CABackendRejected when it
    answers with an error (401 token refused, 403 policy such as a lifetime above
    the provisioner maximum, other 4xx, 500/501), CABackendInvalidResponse when a
    201 carries no usable certificate for the CSR's key. Each HTTP request opens
    its own short-lived client, so one backend can be used from any event loop.
    """

    name = "step-ca"

    def __init__(
        self,
        *,
        url: str,
        root_pem: bytes | str,
        dns_name: str,
        provisioner_name: str,
        provisioner_jwk: Mapping[str, Any],
        kid: str | None = None,
        timeout: float = 10.0,
        intermediates_pem: bytes | str | None = None,
    ) -> None:
        """Configure the backend.

        ``url``: step-ca's base URL (``https://127.0.0.1:9000``). ``root_pem``: the
        step-ca root, the only certificate the HTTPS connection trusts.
        ``dns_name``: one of the CA's ``dnsNames`` (token audience). ``provisioner_jwk``:
        the provisioner's decrypted private EC P-256 JWK. ``kid`` defaults to the
        JWK's ``kid``. ``timeout``: seconds for each HTTP request.
        ``intermediates_pem``: what :meth:`intermediates` returns until the first
        successful sign (afterwards: the chain step-ca returned).
        """
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise CABackendMisconfigured(
                f"step-ca URL must be https://host:port, got {url!r}",
                remediation="set the step-ca URL to its https:// address",
            )
        self.url = url.rstrip("/")
        self.dns_name = dns_name
        self.provisioner_name = provisioner_name
        self.timeout = timeout
        remediation_root = "configure the step-ca root certificate (PEM) that step-ca serves"
        root_bytes = root_pem.encode() if isinstance(root_pem, str) else root_pem
        try:
            roots = x509.load_pem_x509_certificates(root_bytes)
        except ValueError as exc:
            raise CABackendMisconfigured(
                "the step-ca root certificate is not valid PEM", remediation=remediation_root
            ) from exc
        if len(roots) != 1:
            raise CABackendMisconfigured(
                "expected exactly one step-ca root certificate", remediation=remediation_root
            )
        self._root = roots[0]
        self._root_sha = hashlib.sha256(
            self._root.public_bytes(serialization.Encoding.DER)
        ).hexdigest()
        self._intermediates: list[x509.Certificate] = []
        if intermediates_pem:
            raw = (
                intermediates_pem.encode()
                if isinstance(intermediates_pem, str)
                else intermediates_pem
            )
            try:
                self._intermediates = x509.load_pem_x509_certificates(raw)
            except ValueError as exc:
                raise CABackendMisconfigured(
                    "the step-ca intermediate certificate is not valid PEM",
                    remediation="configure step-ca's intermediate certificate (PEM)",
                ) from exc

        remediation_key = (
            f"configure the private JWK of provisioner {provisioner_name!r} "
            "(an EC P-256 key; decrypt ca.json's encryptedKey with its password)"
        )
        if (
            not isinstance(provisioner_jwk, Mapping)
            or provisioner_jwk.get("kty") != "EC"
            or provisioner_jwk.get("crv") != "P-256"
            or not provisioner_jwk.get("d")
        ):
            raise CABackendMisconfigured(
                "the provisioner key is not a private EC P-256 JWK", remediation=remediation_key
            )
        try:
            key = jwt.algorithms.ECAlgorithm.from_jwk(dict(provisioner_jwk))
        except (jwt.exceptions.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            raise CABackendMisconfigured(
                "the provisioner key could not be loaded", remediation=remediation_key
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CABackendMisconfigured(
                "the provisioner key is not a private key", remediation=remediation_key
            )
        self._signing_key: ec.EllipticCurvePrivateKey = key
        self.kid = kid or provisioner_jwk.get("kid")
        if not self.kid:
            raise CABackendMisconfigured(
                "no kid for the provisioner key",
                remediation="pass the kid stored with the provisioner key in ca.json",
            )
        # Pin: trust only the step-ca root, nothing from the system store.
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=root_bytes.decode())
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._ssl = ctx

    def __repr__(self) -> str:  # never shows the key
        return (
            f"StepCABackend(url={self.url!r}, provisioner={self.provisioner_name!r}, "
            f"kid={self.kid!r})"
        )

    # -- CABackend -------------------------------------------------------------------

    def trust_roots(self) -> list[x509.Certificate]:
        return [self._root]

    def intermediates(self) -> list[x509.Certificate]:
        return list(self._intermediates)

    async def sign(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        grant_id: str,
        subject_user_id: str,
        peer_id: str,
        lifetime: timedelta,
    ) -> SignedChain:
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not cns or not isinstance(cns[0].value, str) or not cns[0].value:
            raise ValueError("the CSR has no subject common name")
        common_name = cns[0].value
        token, jti = self._token(
            audience="sign",
            subject=common_name,
            extra={
                "sans": _csr_sans(csr),
                "mosaic_grant_id": grant_id,
                "mosaic_subject_user_id": subject_user_id,
            },
        )
        body: dict[str, Any] = {
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "ott": token,
            "notAfter": _lifetime_param(lifetime),
        }
        log.debug(
            "step-ca sign: peer=%s grant=%s cn=%s jti=%s…",
            peer_id,
            grant_id,
            common_name,
            jti[:8],
        )
        status, data = await self._post("/1.0/sign", body, action="sign")
        if status not in (200, 201):
            raise self._http_error(status, data, action="sign")
        return self._parse_sign(data, csr)

    async def revoke(self, serial: int, reason: str) -> RevokeOutcome:
        token, jti = self._token(audience="revoke", subject=str(serial), extra={})
        code = _REASON_CODES.get(reason.strip().lower().replace(" ", "_").replace("-", "_"), 0)
        body = {
            "serial": str(serial),
            "ott": token,
            "reasonCode": code,
            "reason": reason[:200],
            "passive": True,  # step-ca 0.19 only implements passive revocation
        }
        log.debug("step-ca revoke: serial=%s jti=%s…", serial, jti[:8])
        status, data = await self._post("/1.0/revoke", body, action="revoke")
        if status == 200:
            return RevokeOutcome(True)
        message = _sanitize(data.get("message")) if isinstance(data, dict) else ""
        lowered = message.lower()
        if status == 501 or "not implemented" in lowered or "persistence" in lowered:
            return RevokeOutcome(
                False,
                "step-ca has no database configured, so it cannot record revocations; "
                "the revocation is enforced by the CA service's own revocation list",
            )
        if status == 400 and "already revoked" in lowered:
            return RevokeOutcome(True, "step-ca had already recorded this revocation")
        raise self._http_error(status, data, action="revoke")

    # -- internals -------------------------------------------------------------------

    def _token(self, *, audience: str, subject: str, extra: dict[str, Any]) -> tuple[str, str]:
        """A signed one-time token and its jti (only a jti prefix is ever logged)."""
        now = int(time.time())
        jti = secrets.token_hex(32)
        payload: dict[str, Any] = {
            "iss": self.provisioner_name,
            "aud": f"https://{self.dns_name}/1.0/{audience}",
            "sub": subject,
            "sha": self._root_sha,
            "jti": jti,
            "iat": now,
            "nbf": now,
            "exp": now + int(TOKEN_TTL.total_seconds()),
            **extra,
        }
        token = jwt.encode(
            payload,
            self._signing_key,
            algorithm="ES256",
            headers={"kid": self.kid, "typ": "JWT"},
        )
        return token, jti

    async def _post(self, path: str, body: dict[str, Any], *, action: str) -> tuple[int, Any]:
        target = self.url + path
        remediation = (
            f"check that step-ca is running at {self.url}, reachable from this host, "
            "and that the pinned step-ca root matches the root it serves"
        )
        try:
            async with httpx.AsyncClient(
                verify=self._ssl, timeout=self.timeout, trust_env=False, follow_redirects=False
            ) as client:
                resp = await client.post(target, json=body)
                raw = resp.content[:_MAX_RESPONSE_BYTES]
        except httpx.TimeoutException as exc:
            raise CABackendUnavailable(
                f"step-ca {action}: no answer from {self.url} within {self.timeout:g} s",
                remediation=remediation,
            ) from exc
        except httpx.HTTPError as exc:  # refused, reset, TLS failure, protocol error
            detail = _sanitize(str(exc)) or type(exc).__name__
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                detail = "TLS certificate verification failed (not issued by the pinned root)"
            raise CABackendUnavailable(
                f"step-ca {action}: cannot reach {self.url}: {detail}", remediation=remediation
            ) from exc
        log.debug("step-ca %s: HTTP %s", action, resp.status_code)
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return resp.status_code, data

    def _http_error(self, status: int, data: Any, *, action: str) -> CABackendError:
        message = _sanitize(data.get("message")) if isinstance(data, dict) else ""
        said = f": {message}" if message else ""
        if status == 401:
            return CABackendRejected(
                f"step-ca {action}: provisioner token refused (HTTP 401){said}",
                remediation=(
                    f"check that the provisioner key and kid match provisioner "
                    f"{self.provisioner_name!r} in step-ca's ca.json, that {self.dns_name!r} is "
                    "one of its dnsNames, and that this host's clock agrees with step-ca's"
                ),
            )
        if status == 403:
            return CABackendRejected(
                f"step-ca {action}: refused by policy (HTTP 403){said}",
                remediation=(
                    "check the request against the provisioner's policy and claims "
                    "(certificate lifetime limits, allowed names) in step-ca's ca.json"
                ),
            )
        if status in (502, 503, 504):
            return CABackendUnavailable(
                f"step-ca {action}: temporarily unavailable (HTTP {status}){said}",
                remediation=f"check that step-ca at {self.url} is healthy and retry",
            )
        if 400 <= status < 500:
            return CABackendRejected(
                f"step-ca {action}: request refused (HTTP {status}){said}",
                remediation="check the CSR and the request; step-ca's log has the details",
            )
        if status >= 500:
            return CABackendRejected(
                f"step-ca {action}: step-ca failed (HTTP {status}){said}",
                remediation=(
                    "check step-ca's log; for sign failures check the provisioner's X.509 "
                    "template (infra/step-ca/templates/federation.tpl)"
                ),
            )
        return CABackendInvalidResponse(
            f"step-ca {action}: unexpected HTTP {status}",
            remediation=f"check that {self.url} is step-ca's API address",
        )

    def _parse_sign(self, data: Any, csr: x509.CertificateSigningRequest) -> SignedChain:
        remediation = f"check that {self.url} is a step-ca server (expected /1.0/sign JSON)"
        if not isinstance(data, dict) or not isinstance(data.get("crt"), str):
            raise CABackendInvalidResponse(
                "step-ca sign: response has no certificate ('crt')", remediation=remediation
            )
        try:
            leaf = x509.load_pem_x509_certificate(data["crt"].encode())
            chain_pems = data.get("certChain") or []
            if not isinstance(chain_pems, list) or not all(isinstance(p, str) for p in chain_pems):
                raise ValueError("certChain is not a list of PEM strings")
            chain = _load_pem_chain(chain_pems)
            if not chain and isinstance(data.get("ca"), str):
                chain = _load_pem_chain([data["ca"]])
        except ValueError as exc:
            raise CABackendInvalidResponse(
                "step-ca sign: certificate in response is not valid PEM", remediation=remediation
            ) from exc
        if leaf.public_key() != csr.public_key():
            raise CABackendInvalidResponse(
                "step-ca sign: returned certificate is not for the CSR's key",
                remediation=remediation,
            )
        intermediates = [c for c in chain if c != leaf and c != self._root]
        if intermediates:
            self._intermediates = intermediates
        return SignedChain(certificate=leaf, chain=intermediates)
