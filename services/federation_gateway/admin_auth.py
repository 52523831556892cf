"""The admin listener's authentication: a bearer token kept in the instance home."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import grpc

from mosaic.errors import UNAUTHENTICATED, ServiceError
from mosaic.rpc.interceptors import Authorizer

ADMIN_TOKEN_HEADER = "authorization"  # noqa: S105 - a header name, not a secret


def admin_token_authorizer(token_file: Path) -> Authorizer:
    """Accept a call only with ``authorization: Bearer <admin token>``; compare in constant time."""
    expected = hashlib.sha256(token_file.read_text().strip().encode()).digest()

    async def authorize(method: str, context: grpc.aio.ServicerContext) -> None:
        if method.startswith("/grpc.health.v1.Health/"):
            return
        presented = ""
        for key, value in context.invocation_metadata() or ():
            if key == ADMIN_TOKEN_HEADER and isinstance(value, str) and value.startswith("Bearer "):
                presented = value[len("Bearer ") :]
        digest = hashlib.sha256(presented.encode()).digest()
        if not presented or not hmac.compare_digest(digest, expected):
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                UNAUTHENTICATED,
                "missing or wrong admin token",
                remediation="run the CLI on the gateway host with --home pointing at its instance",
            )

    return authorize
