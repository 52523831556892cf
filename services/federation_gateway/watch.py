"""Follow a server-streaming watch RPC forever: reconnect with backoff, report each message.

Callers open their streams with ``wait_for_ready=True``: while the channel is down (or in
gRPC's own reconnect backoff) the call waits for it instead of failing at once, so the
stream opens as soon as the server is back rather than after another sleep here. The
sleep below only spaces out streams that the server itself ends or refuses.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc

log = logging.getLogger("mosaic.gateway.watch")

M = TypeVar("M")

INITIAL_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0


async def follow(
    name: str,
    open_stream: Callable[[], AsyncIterator[M]],
    on_message: Callable[[M], None],
    on_disconnect: Callable[[], None],
) -> None:
    """Consume ``open_stream()`` until cancelled; after any break call ``on_disconnect`` and
    reconnect with jittered exponential backoff (reset once a message arrives), never
    sleeping longer than MAX_BACKOFF_S."""
    backoff = INITIAL_BACKOFF_S
    while True:
        try:
            async for message in open_stream():
                on_message(message)
                backoff = INITIAL_BACKOFF_S
            problem = "stream ended"
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as err:
            problem = err.code().name
        except Exception as exc:  # a bug in a handler must not end the watch for good
            log.error("watch handler failed", extra={"watch": name}, exc_info=exc)
            problem = type(exc).__name__
        on_disconnect()
        log.warning("watch interrupted; reconnecting", extra={"watch": name, "problem": problem})
        jittered = backoff * (0.5 + random.random())  # noqa: S311 - jitter only
        await asyncio.sleep(min(jittered, MAX_BACKOFF_S))
        backoff = min(backoff * 2, MAX_BACKOFF_S)
