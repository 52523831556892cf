"""Revoked certificate serials, in memory, fed by ca-service WatchRevocations.

The first message of every watch is a full snapshot of the certificates not yet expired,
in as many messages as it takes (the first says ``snapshot``; ``more`` says another part
follows); later ones add revocations. Until a whole snapshot has arrived (at start-up,
and again after the stream breaks) the set is not *loaded* and the federation servicer
refuses every request (fail closed): a serial revoked while we were not listening must
never be honoured. Health says NOT_SERVING meanwhile, and the doctor's ``revocations`` row
fails.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Gauge

from federation_gateway.watch import follow
from mosaic.federation.v1 import ca_pb2, ca_pb2_grpc, common_pb2

log = logging.getLogger("mosaic.gateway.revocations")

REVOKED_SERIALS = Gauge(
    "mosaic_revoked_serials", "Revoked certificate serials this gateway refuses."
)
REVOCATIONS_LOADED = Gauge(
    "mosaic_revocations_loaded",
    "1 while the revocation list is complete; 0 means every federation request is refused.",
)


class RevokedSerials:
    """The revoked serials (lowercase hex), each with the peer its certificate was issued
    to (so a refusal's audit row names the peer), and whether the set is complete now."""

    def __init__(self) -> None:
        self.serials: dict[str, str] = {}
        self.loaded = False
        # The parts of a snapshot received so far (it may span several messages).
        self._partial: dict[str, str] | None = None

    def apply(self, message: ca_pb2.WatchRevocationsResponse) -> None:
        serials = {r.serial: r.peer_id for r in message.revocations}
        if message.snapshot:
            self._partial = serials  # a new snapshot starts; any unfinished one is void
        elif self._partial is not None:
            self._partial |= serials  # a later part of the snapshot
        elif self.loaded:
            self.serials |= serials
            log.info("serials revoked", extra={"count": len(serials)})
        else:
            # A delta before any snapshot breaks the protocol; wait for the snapshot.
            self.serials |= serials
        if self._partial is not None and not message.more:
            self.serials, self._partial = self._partial, None
            self.loaded = True
            log.info("revocations loaded", extra={"revoked": len(self.serials)})
        REVOKED_SERIALS.set(len(self.serials))
        REVOCATIONS_LOADED.set(1 if self.loaded else 0)

    def lost(self) -> None:
        """The watch broke: refuse until a new snapshot proves the set is complete."""
        self.loaded = False
        self._partial = None
        REVOCATIONS_LOADED.set(0)

    async def problem(self) -> str | None:
        """For readiness: while not loaded, every federation request is refused."""
        return None if self.loaded else "revocations: not loaded"

    async def check(self) -> common_pb2.Check:
        """The doctor's ``revocations`` row."""
        if self.loaded:
            return common_pb2.Check(
                name="revocations", ok=True, detail=f"loaded, {len(self.serials)} revoked"
            )
        return common_pb2.Check(
            name="revocations",
            ok=False,
            detail="not loaded: every federation request is refused (REVOCATIONS_NOT_LOADED)",
            remediation="check ca-service (see its rows); the gateway loads the list by "
            "itself within about 5 s of ca-service answering",
        )

    async def run(self, ca: ca_pb2_grpc.CertificateAuthorityStub) -> None:
        """Background job: keep following WatchRevocations until cancelled."""

        def open_stream() -> Any:
            # Long-lived stream: no deadline (the default-deadline interceptor adds one
            # only when timeout is None, so pass a very long one explicitly). It waits for
            # the channel (watch.py): the set loads as soon as ca-service answers again.
            # Nothing else awaits this call, and cancelling the job cancels it at shutdown.
            return ca.WatchRevocations(
                ca_pb2.WatchRevocationsRequest(), timeout=10 * 365 * 86400, wait_for_ready=True
            )

        await follow("revocations", open_stream, self.apply, self.lost)
