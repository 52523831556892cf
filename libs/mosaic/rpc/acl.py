"""Per-RPC allow-lists of internal service identities."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc

from mosaic.config import OPERATOR, InstanceConfig
from mosaic.errors import CALLER_NOT_ALLOWED, UNAUTHENTICATED, ServiceError, permission_denied
from mosaic.rpc.identity import caller_spiffe_id
from mosaic.rpc.interceptors import Authorizer

DIAGNOSTICS_SELF_CHECK = "/mosaic.federation.v1.Diagnostics/SelfCheck"
# Any authenticated internal caller may ask whether we are healthy or what we serve.
_OPEN_TO_INSTANCE = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    }
)


def methods(service_full_name: str, names: Iterable[str]) -> list[str]:
    return [f"/{service_full_name}/{n}" for n in names]


def acl_authorizer(config: InstanceConfig, acl: Mapping[str, Iterable[str]]) -> Authorizer:
    """Refuse any caller whose SPIFFE id is not on the method's allow-list (fail closed)."""
    prefix = f"spiffe://{config.trust_domain}/"
    allowed: dict[str, frozenset[str]] = {m: frozenset(ids) for m, ids in acl.items()}
    allowed[DIAGNOSTICS_SELF_CHECK] = allowed.get(DIAGNOSTICS_SELF_CHECK, frozenset()) | {OPERATOR}

    async def authorize(method: str, context: grpc.aio.ServicerContext) -> None:
        spiffe = caller_spiffe_id(context)
        if spiffe is None or not spiffe.startswith(prefix):
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                UNAUTHENTICATED,
                "caller has no identity of this instance",
                remediation="use the certificate issued to the service by `mosaic init`",
            )
        caller = spiffe[len(prefix) :]
        if method in _OPEN_TO_INSTANCE or caller in allowed.get(method, ()):
            return
        raise permission_denied(
            CALLER_NOT_ALLOWED,
            f"{caller} may not call {method}",
            metadata={"caller": caller, "method": method},
        )

    return authorize
