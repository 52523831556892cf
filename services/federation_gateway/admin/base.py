"""What every FederationAdmin mixin can use: the runtime, internal stubs, error forwarding."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, TypeVar

import grpc

from federation_gateway.context import GatewayContext
from mosaic.config import CA, ENROLLMENT, GRANTS, RESOURCES
from mosaic.errors import RemoteError, ServiceError
from mosaic.federation.v1 import (
    ca_pb2_grpc,
    enrollment_pb2_grpc,
    grants_pb2,
    grants_pb2_grpc,
    resources_pb2_grpc,
)

T = TypeVar("T")

# Deadline of storing a peer's new credentials at grants-service, and of reading them back.
STORE_TIMEOUT_S: Final = 15.0
# A call to a peer gateway whose outcome is not known is repeated after these pauses, all
# of it within REPEAT_BUDGET_S (the CLI waits 90 s for `peer add` and `peer renew`), and
# only while an attempt can still have REPEAT_MIN_ATTEMPT_S.
REPEAT_DELAYS_S: Final = (1.0, 3.0, 8.0)
REPEAT_BUDGET_S: Final = 75.0
REPEAT_MIN_ATTEMPT_S: Final = 5.0

log = logging.getLogger("federation_gateway.admin")


def not_stored(
    remote: RemoteError,
    *,
    unknown: bool,
    done: str,
    what: str,
    check: str,
    remediation: str,
    reason: str | None = None,
) -> ServiceError:
    """The operator's error when ``done`` happened at the peer gateway but storing ``what``
    at grants-service failed, or (``unknown``) may have: then ``check`` says how to tell
    before following ``remediation``. Its reason is ``reason``, else grants-service's."""
    outcome = f"whether {what} was stored is not known" if unknown else f"storing {what} failed"
    return ServiceError(
        remote.code,
        reason or remote.reason,
        f"{done}, but {outcome}: {remote.message}",
        remediation=(f"{check}; if it is not there, " if unknown else "") + remediation,
        violations=remote.violations,
    )


async def repeat_while_unknown(
    attempt: Callable[[float], Awaitable[T]],
    repeatable: Callable[[Exception, bool], bool],
    *,
    what: str,
    log_extra: dict[str, object],
) -> T:
    """Run ``attempt(seconds left)``; while it fails in a way ``repeatable(error, an earlier
    attempt failed so)`` calls unknown, run it again after REPEAT_DELAYS_S, within
    REPEAT_BUDGET_S. For calls the peer gateway answers again when repeated (redeem,
    renew): a lost answer is fetched again instead of lost for good."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REPEAT_BUDGET_S
    repeated = False
    for delay in (*REPEAT_DELAYS_S, None):
        try:
            return await attempt(deadline - loop.time())
        except Exception as exc:
            if delay is None or not repeatable(exc, repeated):
                raise
            if deadline - loop.time() < delay + REPEAT_MIN_ATTEMPT_S:
                raise
            repeated = True
            log.info(
                f"{what} outcome not known; repeating it with the same key",
                extra=log_extra | {"error": type(exc).__name__, "delay_s": delay},
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


class AdminBase:
    """Holds the gateway runtime and stubs to the internal services it fans out to."""

    def __init__(self, gateway: GatewayContext) -> None:
        self.gateway = gateway
        runtime = gateway.runtime
        self.runtime = runtime
        self.config = runtime.config
        channels = runtime.channels
        self.grants = grants_pb2_grpc.GrantsStub(channels.get(GRANTS))
        self.ca = ca_pb2_grpc.CertificateAuthorityStub(channels.get(CA))
        self.enrollment = enrollment_pb2_grpc.EnrollmentStub(channels.get(ENROLLMENT))
        self.resources = resources_pb2_grpc.ResourceSourceStub(channels.get(RESOURCES))

    async def finish_anyway(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` to its end even if our caller goes away (Ctrl-C, the CLI's deadline,
        a dropped connection). Once a peer gateway has acted on a request of ours (spent an
        enrollment token, rotated our certificate), its answer must be stored, not dropped
        with the call; ``work`` logs its own outcome. At shutdown it gets a grace to finish
        (UnfinishedWork.finish)."""
        task = self.gateway.unfinished.start(work)
        task.add_done_callback(retrieved)
        return await asyncio.shield(task)

    async def stored_peer(self, peer: str, serial: str) -> grants_pb2.Peer | None:
        """After storing a peer's certificate ``serial`` failed in a way that may have
        committed: the peer as stored if it holds that certificate; None if it does not
        or grants-service does not say."""
        try:
            reply: grants_pb2.GetPeerResponse = await self.grants.GetPeer(
                grants_pb2.GetPeerRequest(id=peer), timeout=STORE_TIMEOUT_S
            )
        except grpc.aio.AioRpcError:
            return None
        return reply.peer if reply.peer.cert_serial == serial else None

    async def forward(self, call: Awaitable[T]) -> T:
        """Await an internal call; its error reaches the operator unchanged (code, reason, hint)."""
        try:
            return await call
        except grpc.aio.AioRpcError as err:
            raise RemoteError.from_rpc_error(err).to_service_error() from None


def retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # logged by the work itself; its caller may be gone
