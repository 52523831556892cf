"""What every certificate backend (local, step-ca) promises the CA service."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from cryptography import x509


@dataclass(frozen=True)
class SignedChain:
    """A freshly signed leaf and the intermediates above it (issuer first, root excluded)."""

    certificate: x509.Certificate
    chain: list[x509.Certificate] = field(default_factory=list)


@dataclass(frozen=True)
class RevokeOutcome:
    """Whether the backend itself recorded a revocation, and why not when it did not."""

    recorded_at_backend: bool
    note: str = ""


class CABackendError(Exception):
    """A backend failure with a stable reason code and a line telling the operator what to do.

    The message never contains tokens, keys or the backend's raw response body.
    """

    reason = "CA_BACKEND_ERROR"

    def __init__(self, message: str, *, remediation: str) -> None:
        super().__init__(message)
        self.message = message
        self.remediation = remediation


class CABackendUnavailable(CABackendError):
    """The backend could not be reached (connection refused, timeout, TLS failure)."""

    reason = "CA_BACKEND_UNAVAILABLE"


class CABackendRejected(CABackendError):
    """The backend answered and refused (401/403/4xx): credentials or policy problem."""

    reason = "CA_BACKEND_REJECTED"


class CABackendInvalidResponse(CABackendError):
    """The backend answered something we cannot use (non-JSON, no certificate, bad PEM)."""

    reason = "CA_BACKEND_INVALID_RESPONSE"


class CABackendMisconfigured(CABackendError):
    """Local configuration is missing or wrong (no provisioner key, unreadable root...)."""

    reason = "CA_BACKEND_MISCONFIGURED"


class CABackend(Protocol):
    """Signs peer client certificates carrying a grant; implemented by local and step-ca."""

    name: str

    async def sign(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        grant_id: str,
        subject_user_id: str,
        peer_id: str,
        lifetime: timedelta,
    ) -> SignedChain:
        """Sign ``csr`` (already validated) so the leaf carries grant_id and subject_user_id.

        Implementations never copy extensions from the CSR; only its public key,
        subject common name and DNS subject alternative names are used.
        """
        ...

    async def revoke(self, serial: int, reason: str) -> RevokeOutcome:
        """Record a revocation at the backend when it can."""
        ...

    def trust_roots(self) -> list[x509.Certificate]:
        """Roots a gateway must trust to accept this backend's client certificates."""
        ...

    def intermediates(self) -> list[x509.Certificate]:
        """Intermediates between trust_roots() and the leaves this backend signs."""
        ...
