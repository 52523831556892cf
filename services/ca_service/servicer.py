"""CertificateAuthority: proto in, domain call, proto out, and error mapping.

How backend failures reach callers (``ErrorInfo.reason`` is the backend error's own
code, and the backend's remediation line is always attached):

=========================  ===================  ==========================================
backend error              gRPC status          why
=========================  ===================  ==========================================
CABackendUnavailable       UNAVAILABLE          transient: retrying later may succeed
CABackendRejected          FAILED_PRECONDITION  step-ca refused our provisioner or policy;
                                                the *CA service's* setup must change, not
                                                the caller's rights (so not
                                                PERMISSION_DENIED, which callers read as
                                                "you may not call this")
CABackendInvalidResponse   INTERNAL             the backend answered something unusable
CABackendMisconfigured     FAILED_PRECONDITION  local configuration must be fixed first
=========================  ===================  ==========================================

A certificate that comes back without exactly the requested grant (or that does not
chain to the backend's root) is never returned: INTERNAL, reason ISSUED_CERT_MISMATCH.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncEngine

from ca_service import domain, store
from ca_service.backends.base import (
    CABackend,
    CABackendError,
    CABackendInvalidResponse,
    CABackendMisconfigured,
    CABackendRejected,
    CABackendUnavailable,
)
from ca_service.revocations import FeedClosed, RevocationFeed, WatcherBehind
from ca_service.store import IssuedRecord
from mosaic.config import InstanceConfig
from mosaic.errors import ServiceError, invalid_argument, not_found, unavailable
from mosaic.federation.v1 import ca_pb2, ca_pb2_grpc
from mosaic.rpc.options import in_batches
from mosaic.sqltypes import utcnow
from mosaic.text import control_character_problem
from mosaic.x509ext import (
    MAX_REVOCATION_REASON,
    ChainError,
    canonical_uuid,
    parse_serial_hex,
    revocation_reason,
    serial_hex,
    sha256_fingerprint,
    verify_chain,
)

log = logging.getLogger("ca_service")

MAX_REVOCATIONS_PAGE = 5000
# Revocations stay listed this long after their certificate expires: a gateway whose clock
# runs behind ours still finds the serial while it would accept the certificate.
EXPIRY_GRACE = timedelta(hours=1)
DEFAULT_REVOCATION_REASON = "unspecified"
BACKEND_RETRY_AFTER_S = 5.0

_FIELD_FOR_REASON = {
    "INVALID_GRANT_ID": "grant_id",
    "INVALID_SUBJECT_USER_ID": "subject_user_id",
    "INVALID_PEER_ID": "peer_id",
    "INVALID_LIFETIME": "lifetime_seconds",
}
_STATUS_FOR_BACKEND_ERROR: tuple[tuple[type[CABackendError], grpc.StatusCode], ...] = (
    (CABackendUnavailable, grpc.StatusCode.UNAVAILABLE),
    (CABackendRejected, grpc.StatusCode.FAILED_PRECONDITION),
    (CABackendMisconfigured, grpc.StatusCode.FAILED_PRECONDITION),
    (CABackendInvalidResponse, grpc.StatusCode.INTERNAL),
)


class CertificateAuthorityServicer(ca_pb2_grpc.CertificateAuthorityServicer):
    """Issues grant-carrying client certificates through one backend and keeps their record."""

    def __init__(
        self,
        *,
        config: InstanceConfig,
        engine: AsyncEngine,
        backend: CABackend,
        feed: RevocationFeed,
        server_root: x509.Certificate,
    ) -> None:
        self._engine = engine
        self._backend = backend
        self._feed = feed
        self._server_root = server_root
        self._max_lifetime = timedelta(seconds=config.cert_max_lifetime_s)
        self._default_lifetime = timedelta(seconds=config.cert_default_lifetime_s)
        # Intermediates whose path to the backend's root was verified, until their expiry.
        self._checked_issuers: dict[str, datetime] = {}

    # ---- issuance ------------------------------------------------------------------
    async def IssueCertificate(
        self, request: ca_pb2.IssueCertificateRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.IssueCertificateResponse:
        try:
            issuance = domain.build_issuance(
                request.csr_pem,
                request.grant_id,
                request.subject_user_id,
                request.peer_id,
                int(request.lifetime_seconds),
                max_lifetime=self._max_lifetime,
                default_lifetime=self._default_lifetime,
            )
        except domain.CSRRejected as exc:
            raise invalid_argument(
                exc.reason, exc.message, violations=[("csr_pem", exc.message)]
            ) from None
        except domain.InvalidIssuanceRequest as exc:
            field = _FIELD_FOR_REASON.get(exc.reason, "")
            raise invalid_argument(
                exc.reason, exc.message, violations=[(field, exc.message)] if field else []
            ) from None

        try:
            signed = await self._backend.sign(
                issuance.csr,
                grant_id=issuance.grant_id,
                subject_user_id=issuance.subject_user_id,
                peer_id=issuance.peer_id,
                lifetime=issuance.lifetime,
            )
        except CABackendError as exc:
            raise self._backend_error(exc, "sign") from None

        certificate = signed.certificate
        chain = signed.chain or self._backend.intermediates()
        self._check_issued(certificate, chain, issuance)

        record = IssuedRecord(
            serial=serial_hex(certificate.serial_number),
            grant_id=issuance.grant_id,
            subject_user_id=issuance.subject_user_id,
            peer_id=issuance.peer_id,
            backend=self._backend.name,
            fingerprint_sha256=sha256_fingerprint(certificate),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            created_at=utcnow(),
        )
        # Recorded before it is handed out: a certificate we cannot revoke is never issued.
        await store.record_issued(self._engine, record)
        log.info(
            "certificate issued",
            extra={
                "serial": record.serial,
                "grant_id": record.grant_id,
                "peer_id": record.peer_id,
                "backend": record.backend,
                "not_after": record.not_after.isoformat(),
            },
        )
        return ca_pb2.IssueCertificateResponse(
            certificate_pem=_pem(certificate),
            chain_pem=[_pem(c) for c in chain],
            serial=record.serial,
            not_before=_timestamp(record.not_before),
            not_after=_timestamp(record.not_after),
            backend=record.backend,
        )

    def _check_issued(
        self,
        certificate: x509.Certificate,
        chain: list[x509.Certificate],
        issuance: domain.IssuanceRequest,
    ) -> None:
        """Refuse (ISSUED_CERT_MISMATCH) anything but exactly what was asked, from our CA."""
        problems: list[str] = []
        try:
            domain.verify_issued(certificate, issuance)
        except domain.IssuedCertificateMismatch as exc:
            problems.extend(exc.problems)
        problems.extend(self._chain_problems(certificate, chain))
        if not problems:
            return
        mismatch = domain.IssuedCertificateMismatch(problems)
        log.error(
            "issued certificate refused: it does not match the request",
            extra={
                "reason": mismatch.reason,
                "backend": self._backend.name,
                "grant_id": issuance.grant_id,
                "peer_id": issuance.peer_id,
                "serial": format(certificate.serial_number, "x"),
                "problems": "; ".join(problems),
            },
        )
        raise ServiceError(
            grpc.StatusCode.INTERNAL,
            mismatch.reason,
            mismatch.message,
            remediation=(
                f"check the {self._backend.name} CA backend's certificate template: it must "
                "write both grant extensions (1.3.6.1.4.1.99999.1 and .2) from the token"
                if self._backend.name == "step-ca"
                else "check the local CA's files in pki/federation/"
            ),
            metadata={"backend": self._backend.name},
        )

    def _chain_problems(
        self, certificate: x509.Certificate, chain: list[x509.Certificate]
    ) -> list[str]:
        """Check the leaf was signed by an intermediate that chains to the backend's root.

        The full RFC 5280 path check (about 1 ms) runs once per issuing intermediate;
        afterwards the leaf's signature is checked against that intermediate directly
        (the leaf's own usage and validity are domain.verify_issued's job).
        """
        issuer = next((c for c in chain if c.subject == certificate.issuer), None)
        if issuer is None:
            return ["its issuer is not in the chain the backend returned"]
        try:
            certificate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return ["its signature does not verify with the issuing intermediate's key"]
        pin = sha256_fingerprint(issuer)
        checked_until = self._checked_issuers.get(pin)
        if checked_until is not None and utcnow() < checked_until:
            return []
        try:
            verify_chain(certificate, chain, self._backend.trust_roots())
        except ChainError:
            return [f"it does not chain to the {self._backend.name} backend's root"]
        self._checked_issuers[pin] = issuer.not_valid_after_utc
        return []

    # ---- revocation ----------------------------------------------------------------
    async def RevokeCertificate(
        self, request: ca_pb2.RevokeCertificateRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.RevokeCertificateResponse:
        serial, grant_id = _revocation_target(request)
        reason = _revocation_reason(request.reason)
        records, newly = await store.revoke(
            self._engine, serial=serial, grant_id=grant_id, reason=reason, now=utcnow()
        )
        if serial is not None and not records:
            raise not_found(
                "CERTIFICATE_NOT_FOUND",
                f"no certificate with serial {serial} was issued by this CA service",
                metadata={"serial": serial},
            )
        fresh = [r for r in records if r.serial in newly]
        self._feed.publish(fresh)
        for record in fresh:
            log.info(
                "certificate revoked",
                extra={
                    "serial": record.serial,
                    "grant_id": record.grant_id,
                    "revocation_reason": reason,
                },
            )
        recorded, note = await self._revoke_at_backend(records)
        return ca_pb2.RevokeCertificateResponse(
            revocations=[_revocation(r) for r in records],
            revoked_at_backend=recorded,
            backend_note=note,
        )

    async def _revoke_at_backend(self, records: list[IssuedRecord]) -> tuple[bool, str]:
        """Tell the backend too (again on a repeated call, so a failed attempt is retried).

        Our table is what gateways enforce, so a backend failure is reported, not raised.
        """
        now = utcnow()
        notes: list[str] = []
        recorded = bool(records)
        if not records:
            notes.append("no certificate has been issued for this grant")
        for record in records:
            if record.not_after <= now:
                continue  # expired: no peer can use it, nothing for the backend to do
            if record.backend != self._backend.name:
                recorded = False
                notes.append(
                    f"certificate {record.serial} was issued by the {record.backend} backend, "
                    f"not the current {self._backend.name} backend; it is revoked here only"
                )
                continue
            try:
                outcome = await self._backend.revoke(
                    int(record.serial, 16), record.revoke_reason or DEFAULT_REVOCATION_REASON
                )
            except CABackendError as exc:
                log.warning(
                    "backend revocation failed; the revocation is enforced from our table",
                    extra={"serial": record.serial, "reason": exc.reason, "error": exc.message},
                )
                recorded = False
                notes.append(f"{exc.message} ({exc.remediation})")
                continue
            recorded = recorded and outcome.recorded_at_backend
            if outcome.note:
                notes.append(outcome.note)
        return recorded, "; ".join(dict.fromkeys(notes))

    async def ListRevocations(
        self, request: ca_pb2.ListRevocationsRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.ListRevocationsResponse:
        if request.page_size < 0:
            raise invalid_argument(
                "PAGE_SIZE_INVALID",
                "page_size must not be negative",
                violations=[("page_size", "0 or more")],
            )
        after = request.page_token
        if after and not _SERIAL_TOKEN.fullmatch(after):
            raise invalid_argument(
                "PAGE_TOKEN_INVALID",
                "page_token is not one this service handed out",
                violations=[("page_token", "the next_page_token of the previous page")],
            )
        size = min(request.page_size or MAX_REVOCATIONS_PAGE, MAX_REVOCATIONS_PAGE)
        page = await store.revoked_page(
            self._engine, unexpired_at=utcnow() - EXPIRY_GRACE, after_serial=after, limit=size + 1
        )
        more = len(page) > size
        page = page[:size]
        return ca_pb2.ListRevocationsResponse(
            revocations=[_revocation(r) for r in page],
            next_page_token=page[-1].serial if more else "",
        )

    async def WatchRevocations(
        self, request: ca_pb2.WatchRevocationsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ca_pb2.WatchRevocationsResponse]:
        try:
            with self._feed.subscribe() as subscription:
                # Subscribed first, so a revocation made while the snapshot is read is
                # delivered afterwards (or de-duplicated if the snapshot has it).
                # Expired certificates fail the handshake anyway: leaving them out keeps
                # the snapshot as large as the certificates still valid, not the history.
                snapshot = await store.list_revoked(
                    self._engine, unexpired_at=utcnow() - EXPIRY_GRACE
                )
                subscription.mark_sent(snapshot)
                # At least one message, even for an empty snapshot.
                parts = in_batches([_revocation(r) for r in snapshot]) or [[]]
                for i, part in enumerate(parts):
                    # Only the first part says snapshot: a gateway that predates `more`
                    # then adds the later parts to its set instead of replacing it.
                    yield ca_pb2.WatchRevocationsResponse(
                        snapshot=i == 0, revocations=part, more=i < len(parts) - 1
                    )
                async for batch in subscription.batches():
                    for part in in_batches([_revocation(r) for r in batch]):
                        yield ca_pb2.WatchRevocationsResponse(snapshot=False, revocations=part)
        except WatcherBehind:
            log.warning("revocation watcher cut off: it stopped reading")
            raise unavailable(
                "WATCHER_BEHIND",
                "this watch stream fell too far behind and was ended",
                remediation="reconnect and watch again (the first message is a full snapshot)",
            ) from None
        except FeedClosed:
            raise unavailable(
                "SHUTTING_DOWN",
                "the CA service is shutting down",
                remediation="reconnect and watch again (the first message is a full snapshot)",
            ) from None

    # ---- trust ---------------------------------------------------------------------
    async def GetTrustBundle(
        self, request: ca_pb2.GetTrustBundleRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.GetTrustBundleResponse:
        root = self._backend.trust_roots()[0]
        return ca_pb2.GetTrustBundleResponse(
            root_pem=_pem(root),
            intermediates_pem=[_pem(c) for c in self._backend.intermediates()],
            root_sha256=sha256_fingerprint(root),
            server_root_pem=_pem(self._server_root),
            server_root_sha256=sha256_fingerprint(self._server_root),
            backend=self._backend.name,
        )

    # ---- helpers -------------------------------------------------------------------
    def _backend_error(self, exc: CABackendError, action: str) -> ServiceError:
        code = next(
            (status for kind, status in _STATUS_FOR_BACKEND_ERROR if isinstance(exc, kind)),
            grpc.StatusCode.INTERNAL,
        )
        # Backend messages are built to carry no token or key (backends/base.py).
        log.warning(
            "CA backend %s failed",
            action,
            extra={"backend": self._backend.name, "reason": exc.reason, "error": exc.message},
        )
        return ServiceError(
            code,
            exc.reason,
            exc.message,
            remediation=exc.remediation,
            metadata={"backend": self._backend.name},
            retry_after_s=BACKEND_RETRY_AFTER_S if code == grpc.StatusCode.UNAVAILABLE else None,
        )


def _revocation_target(request: ca_pb2.RevokeCertificateRequest) -> tuple[str | None, str | None]:
    """(canonical serial, None) or (None, canonical grant id); exactly one must be given."""
    if bool(request.serial) == bool(request.grant_id):
        raise invalid_argument(
            "SERIAL_OR_GRANT_REQUIRED",
            "give exactly one of serial (one certificate) or grant_id (every certificate "
            "of the grant)",
            violations=[("serial", "exactly one of serial and grant_id")],
        )
    if request.serial:
        try:
            return serial_hex(parse_serial_hex(request.serial.strip().lower())), None
        except ValueError as exc:
            raise invalid_argument(
                "INVALID_SERIAL", str(exc), violations=[("serial", str(exc))]
            ) from None
    try:
        return None, canonical_uuid(request.grant_id)
    except ValueError as exc:
        raise invalid_argument(
            "INVALID_GRANT_ID", str(exc), violations=[("grant_id", str(exc))]
        ) from None


def _revocation_reason(text: str) -> str:
    # A NUL failed on Postgres and was kept on SQLite, and escape sequences were recorded
    # as sent: control characters are refused, line breaks and tabs folded to one line.
    problem = control_character_problem(text)
    if problem is not None:
        raise invalid_argument(
            "INVALID_REASON", f"the reason {problem}", violations=[("reason", problem)]
        )
    reason = revocation_reason(text)
    if len(reason) > MAX_REVOCATION_REASON:
        raise invalid_argument(
            "INVALID_REASON",
            f"the reason is {len(reason)} characters; at most {MAX_REVOCATION_REASON}",
            violations=[("reason", f"at most {MAX_REVOCATION_REASON} characters")],
        )
    return reason or DEFAULT_REVOCATION_REASON


# A serial as stored: lowercase hex, as the page token of ListRevocations.
_SERIAL_TOKEN = re.compile(r"[0-9a-f]{1,64}")


def _revocation(record: IssuedRecord) -> ca_pb2.Revocation:
    return ca_pb2.Revocation(
        serial=record.serial,
        grant_id=record.grant_id,
        peer_id=record.peer_id,
        revoked_at=_timestamp(record.revoked_at) if record.revoked_at else None,
        reason=record.revoke_reason or "",
    )


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
